"""Backup: one archive of a server's container in Proxmox's backup storage (vzdump)."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from ..choices import BackupKind, BackupState

__all__ = ("Backup",)


class Backup(models.Model):
    """The row exists from the request on (state `creating`), so the request, the quota and the
    operation that makes the archive agree; `volid` is set once the archive is found in the
    storage. The archive carries `zlh-backup:<id>` in its notes: a retry after a worker died
    finds the archive an earlier attempt made instead of making a second one."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    instance = models.ForeignKey("lifecycle.ContainerInstance", on_delete=models.CASCADE,
                                 related_name="backups")
    #: The server's owner when the backup was taken: whose quota it counts against.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="backups")
    kind = models.CharField(max_length=16, choices=BackupKind.choices)
    state = models.CharField(max_length=12, choices=BackupState.choices,
                             default=BackupState.CREATING)
    #: The operation that made (or makes) it.
    operation = models.ForeignKey("lifecycle.Operation", on_delete=models.SET_NULL, null=True,
                                  blank=True, related_name="+")
    notes = models.CharField(max_length=200, blank=True)
    #: Where the vzdump ran, into which storage, of which container.
    node = models.CharField(max_length=64, blank=True)
    storage = models.CharField(max_length=64, blank=True)
    vmid = models.PositiveIntegerField(null=True, blank=True)
    #: `<storage>:backup/vzdump-lxc-<vmid>-<time>.tar.zst` once it exists. Not unique: PVE
    #: names archives by the second, so a deleted archive's name can come back.
    volid = models.CharField(max_length=255, null=True, blank=True, db_index=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    #: The vzdump task once started: a retry waits for it instead of starting a second one.
    task_upid = models.CharField(max_length=512, blank=True)
    #: The agent's credential as the archive holds it ({version: Fernet token}, the current and
    #: the previous secret when the backup was taken, encrypted like AgentCredential): after a
    #: restore the agent holds one of these, and the control plane authenticates with it to
    #: hand over a new one. Never shown.
    agent_secrets = models.JSONField(default=dict, blank=True, editable=False)
    #: The game flushed the world and paused saving first (True); the agent did not answer
    #: (False: the snapshot is as after a power cut); the server was stopped (None).
    flushed = models.BooleanField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    #: Removed by the expiry job after this (pre-purge backups); empty = kept until deleted.
    expires_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    #: Proven restorable? "" never checked, `verifying` (claimed at `verify_started_at`), `ok`
    #: (the world loaded in a scratch container), `failed` (it did not: the operator is told).
    verify_state = models.CharField(max_length=12, blank=True, default="", db_index=True)
    verify_started_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    #: What the check did and saw: scratch VMID and IP, the agent's answer, the error.
    verification = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=("instance", "state"), name="backup_instance_state_idx"),
            models.Index(fields=("owner", "state"), name="backup_owner_state_idx"),
            models.Index(fields=("state", "updated_at"), name="backup_state_updated_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} backup {self.id} ({self.state})"

    @property
    def marker(self) -> str:
        """What the archive's notes carry so that it can be found again."""
        return f"zlh-backup:{self.id}"
