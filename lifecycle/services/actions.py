"""Requests to act on an existing server: start, stop, restart, delete, restore, purge, retry.

Each request is one transaction: lock the server row, check the action is allowed from its
status (the kind's row in `operation_kinds`), set the desired state, insert the operation (the
database refuses a second active one) and enqueue its task after commit.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction

from core.clock import db_now

from ..choices import (
    DELETED_STATUSES,
    LIVE_STATUSES,
    BackupState,
    DesiredState,
    OperationKind,
)
from ..choices import InstanceStatus as S
from core.db import retry_on_lock_conflict
from ..errors import InvalidState
from ..models import Backup, ContainerInstance, Operation
from ..operation_kinds import spec_for
from .audit import Actor, audit_record
from .operations import operation_create_exclusive, operation_refuse_if_active


@retry_on_lock_conflict
def server_request(*, instance_id: Any, kind: str, actor: Actor,
                   params: dict[str, Any] | None = None) -> Operation:
    """Accept an action on a server; returns the queued operation (the 202 receipt).

    Owns its transaction, or joins the caller's (the reconciler's fenced one) when nested."""
    params = dict(params or {})
    with transaction.atomic():
        inst = ContainerInstance.objects.select_for_update().get(pk=instance_id)
        spec = spec_for(kind)
        if inst.suspended and spec.needs_unsuspended:
            raise InvalidState("This server is suspended; contact support.")
        if inst.status not in spec.requestable_from:
            raise InvalidState(_refusal(kind, inst.status))
        if kind == OperationKind.PROVISION and inst.status == S.MISSING \
                and "source_backup" not in params and settings.RECREATE_FROM_LATEST_BACKUP:
            # Its container is gone: it comes back from its latest backup, not empty.
            latest = (Backup.objects.filter(instance_id=inst.id, state=BackupState.READY,
                                            volid__isnull=False)
                      .order_by("-created_at").values_list("id", flat=True).first())
            if latest is not None:
                params["source_backup"] = str(latest)
        if kind == OperationKind.RESTORE:
            if inst.purge_after is not None and inst.purge_after <= db_now():
                raise InvalidState("The restore window of this server has passed.")
            target = params.get("target", DesiredState.RUNNING)
            if target not in (DesiredState.RUNNING, DesiredState.STOPPED):
                raise InvalidState("A restore ends in 'running' or 'stopped'.")
            params["target"] = target
        operation_refuse_if_active(instance_id=inst.id)
        # A kind that never changes the status (rotate_credential) leaves the desired state.
        desired = spec.desired_after or params.get("target") or inst.desired_state
        ContainerInstance.objects.filter(pk=inst.pk).update(desired_state=desired)
        op = operation_create_exclusive(instance_id=inst.id, kind=kind,
                                        requested_by=actor.label, params=params)
        audit_record(actor=actor, instance_id=inst.id, action=f"request:{kind}",
                     from_status=inst.status,
                     data={"operation": str(op.id), "desired_state": desired, "params": params})
    return op


def _refusal(kind: str, status: str) -> str:
    if kind == OperationKind.START and status == S.RUNNING:
        return "The server is already running."
    if kind in (OperationKind.STOP, OperationKind.RESTART) and status == S.STOPPED:
        return "The server is stopped."
    if kind == OperationKind.PURGE and status in LIVE_STATUSES:
        return "Delete the server before purging it."
    if kind == OperationKind.RESTORE and status not in DELETED_STATUSES:
        return "Only a deleted server can be restored."
    if status == S.PURGED:
        return "The server has been purged."
    return f"Cannot {kind} a server that is {status}."


@transaction.atomic
def server_set_flags(*, instance_id: Any, actor: Actor, maintenance_lock: bool | None = None,
                     suspended: bool | None = None) -> ContainerInstance:
    """Set the operator flags: a maintenance lock keeps the reconciler's hands off; a suspended
    server may not be started."""
    inst = ContainerInstance.objects.select_for_update().get(pk=instance_id)
    changes = {}
    if maintenance_lock is not None and inst.maintenance_lock != maintenance_lock:
        changes["maintenance_lock"] = maintenance_lock
    if suspended is not None and inst.suspended != suspended:
        changes["suspended"] = suspended
    if changes:
        ContainerInstance.objects.filter(pk=inst.pk).update(**changes)
        audit_record(actor=actor, instance_id=inst.id, action="flags:set", data=changes)
        inst.refresh_from_db()
    return inst
