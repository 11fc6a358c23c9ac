"""Operations: creating the row that is the receipt for a request, and handing it to Celery.

The message is only a wake-up call. It is sent after commit, carries the operation id as its
task id, and may be lost (Redis wiped) or delivered twice; the row decides what happens.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

from ..choices import ACTIVE_OPERATION_STATES, OperationState
from ..models import Operation

logger = logging.getLogger(__name__)

#: operation kind -> function(operation_id) that carries it out. Filled by the executors.
EXECUTORS: dict[str, Callable[..., None]] = {}


def operation_create(*, instance_id: Any, kind: str, requested_by: str) -> Operation:
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
    )
    transaction.on_commit(lambda: operation_enqueue(operation_id=op.id))
    return op


def operation_enqueue(*, operation_id: Any) -> bool:
    """Publish the task for an operation; never raises. A message that cannot be sent now is
    not lost: the row stays queued and the sweeper sends it again."""
    from ..tasks import execute_operation  # tasks import services; import late to avoid a cycle

    try:
        execute_operation.apply_async(
            args=[str(operation_id)], task_id=str(operation_id), queue="lifecycle"
        )
        return True
    except Exception:  # broker down, timeout: fail soft, the row is the receipt
        logger.warning("could not enqueue operation %s; the sweeper will retry it",
                       operation_id, exc_info=True)
        return False


def operation_execute(*, operation_id: Any) -> None:
    """Entry point of the task: run the operation if it is still active and we know how."""
    op = Operation.objects.filter(pk=operation_id).only("id", "kind", "state").first()
    if op is None or op.state not in ACTIVE_OPERATION_STATES:
        logger.info("operation %s is %s; nothing to do", operation_id,
                    op.state if op else "gone")
        return
    executor = EXECUTORS.get(op.kind)
    if executor is None:
        # Left queued on purpose: a worker that knows this kind will take it.
        logger.warning("no executor for %s operations yet; %s stays queued", op.kind, op.id)
        return
    executor(operation_id=op.id)
