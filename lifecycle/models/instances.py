"""ContainerInstance: one row per server a user asked for, from request to tombstone."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from ..choices import DesiredState, InstanceStatus, Kind, Plan, Variant

__all__ = ("ContainerInstance",)


class ContainerInstance(models.Model):
    # Public id: in the API and in the ownership marker outside (core.ownership).
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="servers"
    )
    name = models.CharField(max_length=32)
    slug = models.CharField(max_length=32, db_index=True, help_text="DNS label")
    # Set to the slug while the server is not purged, NULL after: a unique key over live slugs
    # (MariaDB has no partial unique indexes), so a purged name can be taken again.
    live_slug = models.CharField(max_length=32, null=True, blank=True, unique=True, editable=False)

    kind = models.CharField(max_length=8, choices=Kind.choices)
    variant = models.CharField(max_length=16, choices=Variant.choices, blank=True)
    version = models.CharField(max_length=32, blank=True)
    plan = models.CharField(max_length=16, choices=Plan.choices)
    memory_mb = models.PositiveIntegerField()
    cores = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField()
    runtime = models.CharField(max_length=16, blank=True)
    runtime_version = models.CharField(max_length=16, blank=True)
    enable_code_server = models.BooleanField(default=False)

    node = models.ForeignKey(
        "lifecycle.Node", null=True, blank=True, on_delete=models.PROTECT, related_name="instances"
    )
    vmid = models.PositiveIntegerField(null=True, blank=True, db_index=True)
    ip = models.GenericIPAddressField(protocol="IPv4", null=True, blank=True)
    ports = models.JSONField(default=dict, blank=True)
    #: The agent must get its configuration again (a game server resized while stopped: the
    #: game's memory); sent at the next start, then cleared.
    reconfigure_at_start = models.BooleanField(default=False)

    status = models.CharField(
        max_length=16, choices=InstanceStatus.choices, default=InstanceStatus.PENDING
    )
    status_changed_at = models.DateTimeField(auto_now_add=True)
    desired_state = models.CharField(
        max_length=8, choices=DesiredState.choices, default=DesiredState.RUNNING
    )
    suspended = models.BooleanField(default=False)
    maintenance_lock = models.BooleanField(default=False)
    deleted_at = models.DateTimeField(null=True, blank=True)
    purge_after = models.DateTimeField(null=True, blank=True)

    last_error = models.JSONField(null=True, blank=True)

    idempotency_key = models.CharField(max_length=128, null=True, blank=True)
    # SHA-256 of the normalised create body: a replay with another body is refused (422).
    request_fingerprint = models.CharField(max_length=64, blank=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=("owner", "idempotency_key"), name="instance_owner_idempotency_key"
            ),
            # Only a purged server gives up its name.
            models.CheckConstraint(
                condition=(
                    models.Q(status=InstanceStatus.PURGED, live_slug__isnull=True)
                    | (~models.Q(status=InstanceStatus.PURGED) & models.Q(live_slug=models.F("slug")))
                ),
                name="instance_live_slug_iff_not_purged",
            ),
        ]
        indexes = [
            models.Index(fields=("owner", "status"), name="instance_owner_status_idx"),
            models.Index(fields=("status", "status_changed_at"), name="instance_status_idx"),
            models.Index(fields=("node", "status"), name="instance_node_status_idx"),
        ]

    def __str__(self) -> str:
        return self.slug
