"""Periodic upkeep driven from the data, so that Redis may lose anything at any time: re-send
operations whose message was lost, take over operations whose worker died, purge what is due,
free quarantined values. Each runs from the beat schedule; each pass is bounded."""
from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Now

from core.clock import db_before

from ..choices import InstanceStatus, OperationKind
from ..choices import OperationState as O
from ..errors import LifecycleError
from ..clients.proxmox import ProxmoxClient, ProxmoxError
from ..models import ContainerInstance, Operation
from ..services.actions import server_request
from ..services.allocations import allocation_release_quarantined
from ..services.audit import Actor
from ..services.operations import operation_enqueue

logger = logging.getLogger(__name__)
BATCH = 500


def operation_sweep() -> dict[str, int]:
    """Re-enqueue queued operations that are due and whose last message is old (lost with a
    wiped Redis, or never sent), and running ones whose lease expired (dead worker). A message
    too many is harmless: the claim lets only one run."""
    stale_send = db_before(settings.OPERATION_REENQUEUE_AFTER_SECONDS)
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=Now())
    lost = list(
        Operation.objects.filter(due, state=O.QUEUED)
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=stale_send))
        .order_by("created_at").values_list("id", flat=True)[:BATCH]
    )
    expired = list(
        Operation.objects.filter(state=O.RUNNING, lease_expires_at__lt=Now())
        .order_by("lease_expires_at").values_list("id", flat=True)[:BATCH]
    )
    ids = lost + expired
    if ids:
        Operation.objects.filter(pk__in=ids).update(enqueued_at=Now())
    sent = sum(operation_enqueue(operation_id=op_id) for op_id in ids)
    if ids:
        logger.info("sweep: re-sent %d queued and %d expired operations (%d sent)",
                    len(lost), len(expired), sent)
    return {"lost": len(lost), "expired": len(expired), "sent": sent}


def server_purge_due(*, limit: int = 100) -> int:
    """Request a purge for every soft-deleted server whose window is over, and again for every
    purge that failed halfway (`purging` with no operation at work): a purge is never left
    hanging; each failure has reached the operator."""
    actor = Actor.system("purge schedule")
    idle = ~Exists(Operation.objects.filter(active_slot=OuterRef("pk")))
    due = list(
        ContainerInstance.objects.filter(
            Q(status=InstanceStatus.DELETED, purge_after__lte=Now())
            | Q(status=InstanceStatus.PURGING), idle, maintenance_lock=False)
        .order_by("purge_after").values_list("id", flat=True)[:limit]
    )
    requested = 0
    for instance_id in due:
        try:
            server_request(instance_id=instance_id, kind=OperationKind.PURGE, actor=actor)
            requested += 1
        except LifecycleError as exc:  # an operation is active, or the status moved on
            logger.info("purge of %s not requested now: %s", instance_id, exc)
    return requested


def quarantine_release() -> dict[str, Any]:
    """Free values whose quarantine is over; VMIDs only if Proxmox confirms they are absent."""
    try:
        resources = ProxmoxClient.from_settings().cluster_resources()
        present: set[int] | None = {int(r["vmid"]) for r in resources if "vmid" in r}
    except ProxmoxError as exc:
        logger.warning("quarantine: Proxmox unknown (%s); VMIDs stay quarantined", exc)
        present = None
    return allocation_release_quarantined(present_vmids=present)
