"""The agent in each container: its credential, and the last heartbeat it sent.

AgentCredential: one per server. The secret is stored encrypted (Fernet with
`AGENT_CREDENTIAL_KEYS`, see `services/agent_credentials.py`): the control plane must present a
token derived from it, so it cannot be a hash, and a database reader without the key holds
nothing usable. The agent receives the secret once, at enrolment (before the payload, like
the payload before the first boot); from then on both sides only show derived tokens
(`core/agent_tokens.py`).

AgentHeartbeat: one row per server, updated in place by every accepted heartbeat, so a single
query reads the whole fleet's last word. `received_at` is written with the database clock.
"""
from __future__ import annotations

from django.db import models

__all__ = ("AgentCredential", "AgentHeartbeat")


class AgentCredential(models.Model):
    server = models.OneToOneField("lifecycle.ContainerInstance", on_delete=models.CASCADE,
                                  primary_key=True, related_name="agent_credential")
    #: The secret, encrypted (a Fernet token); never shown, never logged.
    secret_encrypted = models.TextField(editable=False)
    #: +1 at every rotation; the agent reports the version it holds.
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)
    #: When the agent accepted the current version (null until it did).
    enrolled_at = models.DateTimeField(null=True, blank=True)
    #: The secret before the last rotation, encrypted: the agent may still hold it (a stopped
    #: server learns the new one at its next start, authenticated by this one), and heartbeats
    #: signed with it are accepted until `previous_valid_until`.
    previous_encrypted = models.TextField(blank=True, default="", editable=False)
    previous_valid_until = models.DateTimeField(null=True, blank=True)
    #: Since when the server's agent is too old for a credential of its own and is driven with
    #: the legacy shared token (AGENT_LEGACY_TOKEN); null when it is enrolled. The reconciler
    #: reports every server with this set.
    legacy_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=("legacy_since",), name="agentcred_legacy_idx")]

    def __str__(self) -> str:
        return f"agent credential v{self.version} of {self.server_id}"


class AgentHeartbeat(models.Model):
    server = models.OneToOneField("lifecycle.ContainerInstance", on_delete=models.CASCADE,
                                  primary_key=True, related_name="agent_heartbeat")
    #: Written with the database clock (`Now()`): stale = older than N intervals by `Now()`.
    received_at = models.DateTimeField()
    #: The agent's own counter; a heartbeat whose sequence is not above this one is ignored.
    sequence = models.PositiveBigIntegerField(default=0)
    #: The credential version that signed it.
    credential_version = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=32)
    provisioning_complete = models.BooleanField(default=False)
    ready = models.BooleanField(default=False)
    crash_count = models.PositiveIntegerField(default=0)
    #: {classification, exit_code, at, log_tail (≤ 4 KB, redacted)} or null.
    last_crash = models.JSONField(null=True, blank=True)
    memory_used_mb = models.PositiveIntegerField(null=True, blank=True)
    memory_limit_mb = models.PositiveIntegerField(null=True, blank=True)
    disk_used_mb = models.PositiveIntegerField(null=True, blank=True)
    disk_limit_mb = models.PositiveIntegerField(null=True, blank=True)
    players_online = models.PositiveIntegerField(null=True, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    #: Consecutive heartbeats above AGENT_MEMORY_PRESSURE_PERCENT of the memory limit.
    memory_high_streak = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=("received_at",), name="agentbeat_received_idx")]

    def __str__(self) -> str:
        return f"heartbeat of {self.server_id} #{self.sequence} ({self.state})"
