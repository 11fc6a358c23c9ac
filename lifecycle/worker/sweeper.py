"""Periodic upkeep driven from the data, so that Redis may lose anything at any time: re-send
operations whose message was lost, take over operations whose worker died, purge what is due,
free quarantined values. Each runs from the beat schedule; each pass is bounded."""
from __future__ import annotations

import logging
from typing import Any

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone

from notifications.services import notify_warning

from core.clock import db_before
from core.ownership import owners_from_tags

from ..choices import DesiredState, InstanceStatus, OperationKind
from ..choices import OperationState as O
from ..errors import LifecycleError, TransitionConflict
from ..clients.proxmox import ProxmoxClient, ProxmoxError, parse_tags
from ..models import ContainerInstance, Operation
from ..services.actions import server_request
from ..services.allocations import allocation_release_quarantined
from ..services.audit import Actor, audit_record
from ..statemachines.instance import instance_transition
from ..statemachines.operation import operation_transition
from ..services.operations import operation_enqueue

logger = logging.getLogger(__name__)
BATCH = 500


def operation_sweep() -> dict[str, int]:
    """Re-enqueue queued operations that are due and whose last message is old (lost with a
    wiped Redis, or never sent), and running ones whose lease expired (dead worker). A message
    too many is harmless: the claim lets only one run. Requests that never started and are
    older than OPERATION_MAX_QUEUED_AGE_SECONDS are expired instead (see operation_expire)."""
    expired_requests = operation_expire()
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
    return {"lost": len(lost), "expired": len(expired), "sent": sent,
            "expired_requests": expired_requests}


def operation_expire(*, limit: int = BATCH) -> int:
    """Expire requests that were never started and are older than the allowed age (after a
    host move replayed old jobs, or a long outage of the workers): a user's week-old "stop" must
    not run today. The operation is cancelled with a readable reason, the server is left where
    the user can act (a provision that never began -> `failed`, retryable; otherwise its status
    is unchanged and its desired state follows it), and the operator is told once."""
    # created_at is written by the API host's clock; compared with this host's (both app
    # clocks, and the age is hours, far above any skew).
    cutoff = timezone.now() - timedelta(seconds=settings.OPERATION_MAX_QUEUED_AGE_SECONDS)
    rows = list(Operation.objects.filter(state=O.QUEUED, started_at__isnull=True,
                                         created_at__lt=cutoff)
                .select_related("instance").order_by("created_at")[:limit])
    actor = Actor.system("sweeper")
    done = []
    for op in rows:
        error = {"kind": "expired", "retryable": True,
                 "message": (f"requested at {op.created_at:%Y-%m-%d %H:%M} UTC and never "
                             f"started within {settings.OPERATION_MAX_QUEUED_AGE_SECONDS} s; "
                             "request it again if it is still wanted")}
        with transaction.atomic():
            try:
                operation_transition(operation_id=op.id, expected=O.QUEUED, to=O.CANCELLED,
                                     condition=Q(started_at__isnull=True),
                                     fields={"error": error})
            except TransitionConflict:
                continue  # a worker claimed it meanwhile: it runs after all
            inst = op.instance
            if op.kind == OperationKind.PROVISION and inst.status == InstanceStatus.PENDING:
                instance_transition(instance_id=inst.id, expected=InstanceStatus.PENDING,
                                    to=InstanceStatus.FAILED, actor=actor,
                                    action="provision:expired", fields={"last_error": error})
            else:
                desired = {InstanceStatus.RUNNING: DesiredState.RUNNING,
                           InstanceStatus.STOPPED: DesiredState.STOPPED,
                           InstanceStatus.DELETED: DesiredState.DELETED}.get(inst.status)
                ContainerInstance.objects.filter(pk=inst.id).update(
                    last_error=error, **({"desired_state": desired} if desired else {}))
                audit_record(actor=actor, instance_id=inst.id, action=f"{op.kind}:expired",
                             data={"operation": str(op.id)})
        done.append(f"{op.kind} of {inst.slug} (requested {op.created_at:%Y-%m-%d %H:%M})")
    if done:
        notify_warning(f"{len(done)} stale requests expired",
                       "Never started and too old to run now: " + "; ".join(done[:20]),
                       alert_key="requests-expired")
    return len(done)


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
    """Free values whose quarantine is over, with Proxmox's word: VMIDs only if no guest holds
    them, and nothing of a server a container carrying its tag still exists for, on any node.
    Proxmox unknown: nothing is freed."""
    try:
        resources = ProxmoxClient.from_settings().cluster_resources()
    except ProxmoxError as exc:
        logger.warning("quarantine: Proxmox unknown (%s); everything stays quarantined", exc)
        return allocation_release_quarantined(present_vmids=None)
    present = {int(r["vmid"]) for r in resources if "vmid" in r}
    owners = {owner for r in resources if r.get("type") == "lxc"
              for owner in owners_from_tags(parse_tags(r.get("tags")))}
    return allocation_release_quarantined(present_vmids=present, present_owners=owners)
