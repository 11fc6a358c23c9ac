"""The operation state machine and its named transitions.

    queued ──claim──▶ running ──succeed──▶ succeeded
       ▲                 │ ├──fail─────▶ failed    (an outside system refused or stayed down)
       └──retry_later────┘ ├──errored──▶ errored   (our own code failed: a platform error)
                           └──mark_stale▶ stale     (its worker vanished; the reconciler)
    running ──claim──▶ running (a lease takeover after the old worker's lease expired)

Every transition is one conditional UPDATE on (id, expected state[, worker]) that raises
TransitionConflict unless exactly one row changed; entering a terminal state frees the
server's active slot in the same statement. Leases are judged with the database clock only.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db.models import ExpressionWrapper, F, Q
from django.db.models.functions import Coalesce, Now

from core.clock import db_after

from ..choices import TERMINAL_OPERATION_STATES
from ..choices import OperationState as O
from ..errors import InvalidTransition, TransitionConflict
from ..models import Operation

TRANSITIONS: dict[str, frozenset[str]] = {
    O.QUEUED: frozenset({O.RUNNING, O.CANCELLED, O.STALE, O.FAILED}),
    # running -> running is a lease takeover by another worker; running -> queued hands the
    # operation back for a retry (a retryable error, a lost lease).
    O.RUNNING: frozenset({O.RUNNING, O.QUEUED, O.SUCCEEDED, O.FAILED, O.ERRORED, O.STALE,
                          O.CANCELLED}),
    O.SUCCEEDED: frozenset(),
    O.FAILED: frozenset(),
    O.ERRORED: frozenset(),
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
        values["wait_deadline"] = None  # no longer inside any wait
    qs = Operation.objects.filter(pk=operation_id, state__in=expected_set)
    if condition is not None:
        qs = qs.filter(condition)
    if qs.update(state=to, **values) != 1:
        current = Operation.objects.filter(pk=operation_id).values_list("state", flat=True).first()
        raise TransitionConflict(
            f"operation {operation_id} is {current or 'gone'}, expected {sorted(expected_set)}"
        )


# --- the named transitions -----------------------------------------------------------------
def lease_expiry() -> ExpressionWrapper:
    """Now + the lease, computed by the database (the clock every lease is judged by)."""
    return db_after(settings.OPERATION_LEASE_SECONDS)


def claimable() -> Q:
    """Queued and due, or running under a lease that has expired."""
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=Now())
    return (Q(state=O.QUEUED) & due) | Q(state=O.RUNNING, lease_expires_at__lt=Now())


def held_by(worker: str) -> Q:
    return Q(worker=worker)


def operation_claim(*, operation_id: Any, worker: str) -> None:
    """queued|running(expired) -> running, owned by `worker` under a fresh lease."""
    operation_transition(
        operation_id=operation_id, expected=(O.QUEUED, O.RUNNING), to=O.RUNNING,
        condition=claimable(),
        fields={"worker": worker, "lease_expires_at": lease_expiry(),
                "attempt": F("attempt") + 1, "started_at": Coalesce(F("started_at"), Now()),
                "next_attempt_at": None, "waiting_for": ""},
    )


def operation_retry_later(*, operation_id: Any, worker: str, error: dict[str, Any],
                          log: list[dict[str, Any]], delay_seconds: float) -> None:
    """running -> queued, due again after `delay_seconds` (database clock)."""
    operation_transition(
        operation_id=operation_id, expected=O.RUNNING, to=O.QUEUED, condition=held_by(worker),
        fields={"error": error, "log": log, "worker": "", "lease_expires_at": None,
                "next_attempt_at": db_after(delay_seconds), "wait_deadline": None,
                "enqueued_at": Now()},
    )


def operation_wait(*, operation_id: Any, worker: str, log: list[dict[str, Any]],
                   delay_seconds: float, waiting_for: str = "",
                   deadline_seconds: float | None = None) -> None:
    """running -> queued to wait for something outside (`waiting_for`: "node/kind" for a place
    under a Proxmox task limit, "agent/ready" for a game being installed): due again after
    `delay_seconds` (or, for a place, when one is given back); the claim that comes back does
    not count as another attempt. `deadline_seconds` bounds a wait that goes on across looks:
    the first look writes `wait_deadline`, later ones keep it."""
    fields: dict[str, Any] = {
        "log": log, "worker": "", "lease_expires_at": None, "waiting_for": waiting_for,
        "attempt": F("attempt") - 1, "next_attempt_at": db_after(delay_seconds),
        "enqueued_at": Now()}
    if deadline_seconds is not None:
        fields["wait_deadline"] = Coalesce(F("wait_deadline"), db_after(deadline_seconds))
    operation_transition(operation_id=operation_id, expected=O.RUNNING, to=O.QUEUED,
                         condition=held_by(worker), fields=fields)


def operation_succeed(*, operation_id: Any, worker: str, log: list[dict[str, Any]]) -> None:
    operation_transition(operation_id=operation_id, expected=O.RUNNING, to=O.SUCCEEDED,
                         condition=held_by(worker),
                         fields={"error": None, "log": log, "step": "done"})


def operation_fail(*, operation_id: Any, worker: str, error: dict[str, Any],
                   log: list[dict[str, Any]]) -> None:
    """running -> failed: the work failed (an outside system), for good."""
    operation_transition(operation_id=operation_id, expected=O.RUNNING, to=O.FAILED,
                         condition=held_by(worker), fields={"error": error, "log": log})


def operation_errored(*, operation_id: Any, worker: str, error: dict[str, Any],
                      log: list[dict[str, Any]]) -> None:
    """running -> errored: our own code failed (a bug, an unexpected exception)."""
    operation_transition(operation_id=operation_id, expected=O.RUNNING, to=O.ERRORED,
                         condition=held_by(worker), fields={"error": error, "log": log})


def operation_mark_stale(*, operation_id: Any, lease_expired_before: Any, reason: str) -> None:
    """running -> stale: its worker's lease ran out long ago (the reconciler's repair)."""
    operation_transition(operation_id=operation_id, expected=O.RUNNING, to=O.STALE,
                         condition=Q(lease_expires_at__lt=lease_expired_before),
                         fields={"error": {"kind": "stale", "message": reason}})
