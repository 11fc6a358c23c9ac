"""The operation state machine: queued -> running -> succeeded | failed, plus stale/cancelled.

Transitions are conditional UPDATEs on (id, expected state[, worker]); entering a terminal state
frees the instance's active slot in the same statement.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Q
from django.db.models.functions import Now

from ..choices import TERMINAL_OPERATION_STATES
from ..choices import OperationState as O
from ..errors import InvalidTransition, TransitionConflict
from ..models import Operation

TRANSITIONS: dict[str, frozenset[str]] = {
    O.QUEUED: frozenset({O.RUNNING, O.CANCELLED, O.STALE, O.FAILED}),
    # running -> running is a lease takeover by another worker; running -> queued hands the
    # operation back for a retry (a retryable error, a lost lease).
    O.RUNNING: frozenset({O.RUNNING, O.QUEUED, O.SUCCEEDED, O.FAILED, O.STALE, O.CANCELLED}),
    O.SUCCEEDED: frozenset(),
    O.FAILED: frozenset(),
    O.STALE: frozenset(),
    O.CANCELLED: frozenset(),
}


def operation_transition(
    *,
    operation_id: Any,
    expected: str | Iterable[str],
    to: str,
    condition: Q | None = None,
    fields: dict[str, Any] | None = None,
) -> None:
    """Move one operation to `to`; raises TransitionConflict unless exactly one row changed.

    `condition` narrows the UPDATE further (the claiming worker, an expired lease).
    """
    expected_set = frozenset([expected] if isinstance(expected, str) else expected)
    for frm in expected_set:
        if to not in TRANSITIONS[frm]:
            raise InvalidTransition(f"{frm} -> {to} is not an allowed operation transition")
    values: dict[str, Any] = dict(fields or {})
    values["updated_at"] = Now()
    if to in TERMINAL_OPERATION_STATES:
        values["active_slot"] = None
        values["finished_at"] = Now()
        values["lease_expires_at"] = None
    qs = Operation.objects.filter(pk=operation_id, state__in=expected_set)
    if condition is not None:
        qs = qs.filter(condition)
    if qs.update(state=to, **values) != 1:
        current = Operation.objects.filter(pk=operation_id).values_list("state", flat=True).first()
        raise TransitionConflict(
            f"operation {operation_id} is {current or 'gone'}, expected {sorted(expected_set)}"
        )
