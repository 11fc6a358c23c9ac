"""Operations: creating the row that is the receipt for a request, and handing it to Celery.

The message is only a wake-up call. It is sent after commit, carries the operation id as its
task id, and may be lost (Redis wiped) or delivered twice; the row decides what happens.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from django.db import IntegrityError, transaction
from django.db.models.functions import Now

from ..choices import OperationState
from ..errors import OperationInProgress
from ..models import Operation

logger = logging.getLogger(__name__)

#: The task that runs an operation (lifecycle/tasks.py), sent by name and routed to its queue
#: by zlh/celery.py: services never import the worker or the tasks.
EXECUTE_OPERATION_TASK = "lifecycle.execute_operation"


def operation_create(*, instance_id: Any, kind: str, requested_by: str,
                     params: dict[str, Any] | None = None) -> Operation:
    """Insert an operation holding the instance's active slot; call inside a transaction.

    A second active operation on the same instance violates the unique `active_slot` key: the
    database, not this code, guarantees one at a time. Callers that expect that race check
    first and turn the IntegrityError into OperationInProgress.
    """
    op = Operation.objects.create(
        instance_id=instance_id,
        kind=kind,
        state=OperationState.QUEUED,
        active_slot=instance_id,
        requested_by=requested_by[:150],
        params=params or {},
        # Counts as sent: the message goes out right after commit; if it is lost, the
        # sweeper re-sends it once this is old enough.
        enqueued_at=Now(),
    )
    transaction.on_commit(lambda: operation_enqueue(operation_id=op.id))
    return op


def operation_refuse_if_active(*, instance_id: Any) -> None:
    """OperationInProgress, naming it, when the server has an active operation. Call with the
    server's row locked; `operation_create_exclusive` catches the race this check cannot."""
    active = Operation.objects.filter(active_slot=instance_id).values_list("kind", "state").first()
    if active is not None:
        raise OperationInProgress(
            f"A {active[0]} operation is {active[1]} on this server; wait for it to finish.")


def operation_create_exclusive(*, instance_id: Any, kind: str, requested_by: str,
                               params: dict[str, Any] | None = None) -> Operation:
    """`operation_create` in a savepoint, with the unique active slot lost to a faster request
    turned into OperationInProgress (the caller's transaction carries on)."""
    try:
        with transaction.atomic():
            return operation_create(instance_id=instance_id, kind=kind,
                                    requested_by=requested_by, params=params)
    except IntegrityError as exc:  # the unique active slot: someone was faster
        raise OperationInProgress("Another operation was just started on this server.") from exc


def operation_enqueue(*, operation_id: Any, countdown: float | None = None) -> bool:
    """Publish the task for an operation; never raises. A message that cannot be sent now is
    not lost: the row stays queued and the sweeper sends it again."""
    try:
        current_app.send_task(
            EXECUTE_OPERATION_TASK, args=[str(operation_id)], task_id=str(operation_id),
            countdown=countdown,
        )
        return True
    except Exception:  # broker down, timeout: fail soft, the row is the receipt
        logger.warning("could not enqueue operation %s; the sweeper will retry it",
                       operation_id, exc_info=True)
        return False
