"""The reconciler's records: the lease epoch (fencing token), one row per cycle, open findings,
repairs with their observed outcome, and per-action circuit breakers."""
from __future__ import annotations

from django.db import models

from .choices import BreakerState, RepairState, RunOutcome


class ControllerLease(models.Model):
    """The fencing epoch, bumped on every acquisition of the Redis lease. A write carrying an
    older epoch is refused (see reconciler.lease.fenced)."""

    name = models.CharField(max_length=32, primary_key=True)
    epoch = models.BigIntegerField(default=0)
    holder = models.CharField(max_length=128, blank=True)
    acquired_at = models.DateTimeField(null=True, blank=True)
    # Touched by every fenced write (the conditional UPDATE that checks the epoch).
    last_write_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} epoch {self.epoch}"


class ControllerRun(models.Model):
    epoch = models.BigIntegerField(db_index=True)
    holder = models.CharField(max_length=128)
    dry_run = models.BooleanField(default=False)
    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=RunOutcome.choices,
                               default=RunOutcome.RUNNING)
    sources = models.JSONField(default=dict, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    calls = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ("-started_at", "-id")

    def __str__(self) -> str:
        return f"cycle {self.pk} (epoch {self.epoch}, {self.outcome})"


class Finding(models.Model):
    """An open (or recently resolved) problem; its key identifies it across cycles, so it is
    alerted once when it appears and once when it clears."""

    key = models.CharField(max_length=200, unique=True)
    finding_type = models.CharField(max_length=24)
    level = models.PositiveSmallIntegerField()
    action = models.CharField(max_length=32)
    instance = models.ForeignKey("lifecycle.ContainerInstance", null=True, blank=True,
                                 on_delete=models.SET_NULL, related_name="findings")
    subject = models.CharField(max_length=200)
    details = models.JSONField(default=dict, blank=True)
    open = models.BooleanField(default=True, db_index=True)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    seen_count = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ("-last_seen",)

    def __str__(self) -> str:
        return self.key


class RepairEvent(models.Model):
    finding_type = models.CharField(max_length=24)
    action = models.CharField(max_length=32)
    level = models.PositiveSmallIntegerField()
    instance = models.ForeignKey("lifecycle.ContainerInstance", null=True, blank=True,
                                 on_delete=models.SET_NULL, related_name="repair_events")
    subject = models.CharField(max_length=200)
    dry_run = models.BooleanField(default=False)
    state = models.CharField(max_length=10, choices=RepairState.choices)
    epoch = models.BigIntegerField(db_index=True)
    run = models.ForeignKey(ControllerRun, null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="repairs")
    # "<subject>:<action>" while queued or running, NULL after: the database allows one
    # active repair per (instance, action).
    active_slot = models.CharField(max_length=240, null=True, blank=True, unique=True)
    reason = models.CharField(max_length=300, blank=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=("instance", "created_at"), name="repair_instance_idx")]

    def __str__(self) -> str:
        return f"{self.action} on {self.subject} ({self.state})"


class Breaker(models.Model):
    """Per-action circuit breaker: opens after consecutive failures, lets one probe through
    (half-open) after a cool-down, closes again on a success."""

    action = models.CharField(max_length=32, primary_key=True)
    state = models.CharField(max_length=10, choices=BreakerState.choices,
                             default=BreakerState.CLOSED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    last_failure = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.action}: {self.state}"


class ServerObservation(models.Model):
    """What the reconciler last saw of one server, for the portal's status: its container's
    power state and node (Proxmox) and its edge parts (DNS, Velocity). A cycle writes only the
    rows whose values changed; when each value was *observed* is the cycle (`run`) that last
    saw its source healthy — the status reads that from the latest completed cycle, so an
    unchanged server costs no write at all."""

    instance = models.OneToOneField("lifecycle.ContainerInstance", primary_key=True,
                                    on_delete=models.CASCADE, related_name="observation")
    #: PowerState, or "absent" (Proxmox lists no such container); "" = never observed.
    power = models.CharField(max_length=16, blank=True)
    power_since = models.DateTimeField(null=True, blank=True)
    node = models.CharField(max_length=64, blank=True)
    #: {part: Verdict} for game servers that should be published; {} when none is expected.
    edge = models.JSONField(default=dict, blank=True)
    edge_since = models.DateTimeField(null=True, blank=True)
    #: The container firewall as last checked (`lifecycle.firewall.Verdict.as_dict`: state
    #: ok/drift, problems, foreign rules); checked a few servers per cycle, the longest
    #: unchecked first, so this is kept between checks. {} = never checked.
    firewall = models.JSONField(default=dict, blank=True)
    firewall_checked_at = models.DateTimeField(null=True, blank=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.instance_id}: {self.power or 'never observed'}"
