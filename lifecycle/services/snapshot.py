"""After the database was restored from a dump (`manage.py after_restore`).

A dump holds the operations that were queued or running when it was taken. Whatever became of
them afterwards happened in the world, not in this database: run now, a week-old "stop" would
stop a server its owner has used since, a provision would make a second container. So before
any worker or beat starts on a restored database, every operation the dump left active is
cancelled with a readable reason (the owner may ask again), and a backup it was making is
marked failed. Nothing outside is touched: what differs between the database and the world is
then found by the reconciler and the doctor (containers the dump does not know: adopt them by
their tag; servers whose container is gone: missing). See docs/operations.md.
"""
from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models.functions import Now

from notifications.services import notify_warning

from ..choices import ACTIVE_OPERATION_STATES, BackupState, OperationState
from ..errors import TransitionConflict
from ..models import Backup, Operation
from ..statemachines.operation import operation_transition
from .audit import Actor, audit_record

logger = logging.getLogger(__name__)

RESTORED_ERROR = {
    "kind": "restored_snapshot", "retryable": True,
    "message": ("left active in a database dump that was restored: not run, since the world "
                "has moved on since the dump; request it again if it is still wanted"),
}


def operations_fence_restored(*, actor: Actor) -> dict[str, Any]:
    """Cancel every operation the restored dump left queued or running (idempotent)."""
    cancelled: list[str] = []
    for op in Operation.objects.filter(state__in=ACTIVE_OPERATION_STATES).select_related(
            "instance").order_by("created_at"):
        with transaction.atomic():
            try:
                operation_transition(operation_id=op.id, expected=op.state,
                                     to=OperationState.CANCELLED,
                                     fields={"error": RESTORED_ERROR, "finished_at": Now()})
            except TransitionConflict:
                continue  # something moved it meanwhile: a worker is running already
            Backup.objects.filter(operation_id=op.id, state=BackupState.CREATING).update(
                state=BackupState.FAILED, error=RESTORED_ERROR, updated_at=Now())
            audit_record(actor=actor, instance_id=op.instance_id, action=f"{op.kind}:fenced",
                         data={"operation": str(op.id), "was": op.state,
                               "reason": "database restored from a dump"})
        cancelled.append(f"{op.kind} of {op.instance.slug} ({op.state} in the dump)")
    if cancelled:
        notify_warning(f"{len(cancelled)} operations from a restored dump cancelled",
                       "The database was restored from a dump; these were active in it and are "
                       "not run: " + "; ".join(cancelled[:20]),
                       alert_key="restored-dump-fenced")
    return {"cancelled": cancelled}
