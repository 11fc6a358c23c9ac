"""Operation: one row per unit of work on a server, the receipt for every 202 we answer."""
from __future__ import annotations

import uuid

from django.db import models

from ..choices import ACTIVE_OPERATION_STATES, OperationKind, OperationState

__all__ = ("Operation",)


class Operation(models.Model):
    # Also the Celery task id. Celery does not deduplicate by it: the claim on this row does.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    instance = models.ForeignKey(
        "lifecycle.ContainerInstance", on_delete=models.CASCADE, related_name="operations"
    )
    kind = models.CharField(max_length=24, choices=OperationKind.choices)
    state = models.CharField(
        max_length=12, choices=OperationState.choices, default=OperationState.QUEUED
    )
    # The instance id while queued or running, NULL after: a unique key that lets the database,
    # not our code, refuse a second active operation on one instance.
    active_slot = models.UUIDField(null=True, blank=True, unique=True, editable=False)
    step = models.CharField(max_length=32, blank=True, help_text="last checkpoint reached")
    attempt = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True, help_text="who holds the claim")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    # Options of the request (e.g. the state a restore should end in).
    params = models.JSONField(default=dict, blank=True)
    # What the worker did, step by step (redacted, bounded): readable in the admin.
    log = models.JSONField(default=list, blank=True)
    # When the last Celery message for it was sent; the sweeper re-sends lost ones.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # A retry waits until then (short backoff), instead of a long Celery countdown.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # What it waits for while queued to look again later (worker.errors.WaitLater):
    # "<node>/<kind>" for a place for a Proxmox task (node_slots: the place given back wakes the
    # operation that has waited longest, at once), "agent/ready" for a game being installed.
    waiting_for = models.CharField(max_length=80, blank=True, default="", editable=False)
    # The end of a bounded wait that goes on across looks (the first look writes it, the
    # database's clock); set only while the flow is inside that wait, so a claim with it set
    # resumes the flow at the wait instead of running its steps again.
    wait_deadline = models.DateTimeField(null=True, blank=True, editable=False)
    requested_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            # The slot is held exactly while the operation is active.
            models.CheckConstraint(
                condition=(
                    models.Q(state__in=sorted(ACTIVE_OPERATION_STATES), active_slot__isnull=False)
                    | (
                        ~models.Q(state__in=sorted(ACTIVE_OPERATION_STATES))
                        & models.Q(active_slot__isnull=True)
                    )
                ),
                name="operation_active_slot_iff_active",
            ),
        ]
        indexes = [
            models.Index(fields=("state", "lease_expires_at"), name="operation_state_lease_idx"),
            models.Index(fields=("instance", "created_at"), name="operation_instance_idx"),
            models.Index(fields=("waiting_for", "state", "created_at"),
                         name="operation_waiting_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.state})"
