"""The server status state machine.

Every status change goes through `instance_transition`: one conditional UPDATE naming the
expected old status(es), which raises unless exactly one row changed, plus an audit row in the
same transaction. Nothing reads a row, changes `status` in Python and saves it back.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models.functions import Now

from ..choices import InstanceStatus as S
from ..errors import InvalidTransition, TransitionConflict
from ..models import ContainerInstance
from ..services.audit import Actor, audit_record

#: status -> statuses it may move to.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.PROVISIONING, S.FAILED, S.DELETING}),
    # Transient states can be deleted too: a delete is only accepted when no operation is
    # active, so a server left in one of them is stuck, not busy.
    S.PROVISIONING: frozenset({S.RUNNING, S.FAILED, S.DELETING}),
    S.RUNNING: frozenset({S.STOPPING, S.RESTARTING, S.DELETING, S.MISSING, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED, S.RUNNING, S.DELETING, S.MISSING}),
    S.STOPPED: frozenset({S.STARTING, S.DELETING, S.MISSING, S.RUNNING}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPED, S.DELETING, S.MISSING}),
    S.RESTARTING: frozenset({S.RUNNING, S.STOPPED, S.DELETING, S.MISSING}),
    # A failed provision can be retried, or deleted.
    S.FAILED: frozenset({S.PROVISIONING, S.DELETING}),
    # Reported by the reconciler; the operator decides (recreate = provision again, or delete).
    S.MISSING: frozenset({S.PROVISIONING, S.DELETING, S.RUNNING, S.STOPPED}),
    S.DELETING: frozenset({S.DELETED}),
    S.DELETED: frozenset({S.RESTORING, S.PURGING}),
    S.RESTORING: frozenset({S.STOPPED, S.RUNNING, S.DELETED}),
    S.PURGING: frozenset({S.PURGED}),
    S.PURGED: frozenset(),
}


def can_transition(frm: str, to: str) -> bool:
    return to in TRANSITIONS.get(frm, frozenset())


def instance_transition(
    *,
    instance_id: Any,
    expected: str | Iterable[str],
    to: str,
    actor: Actor,
    action: str = "",
    fields: dict[str, Any] | None = None,
    audit_data: dict[str, Any] | None = None,
) -> str:
    """Move one server from one of `expected` to `to`; returns the status it came from.

    Raises InvalidTransition if the table forbids any expected -> to, and TransitionConflict if
    the row was not in an expected status when the UPDATE ran.
    """
    expected_set = frozenset([expected] if isinstance(expected, str) else expected)
    for frm in expected_set:
        if not can_transition(frm, to):
            raise InvalidTransition(f"{frm} -> {to} is not an allowed server transition")
    values: dict[str, Any] = dict(fields or {})
    if to == S.PURGED:
        values["live_slug"] = None
    with transaction.atomic():
        frm = next(iter(expected_set)) if len(expected_set) == 1 else None
        if frm is None:
            # Several possible sources: read the current one under the row lock, so the audit
            # row names exactly what we moved from.
            frm = (
                ContainerInstance.objects.select_for_update()
                .filter(pk=instance_id, status__in=expected_set)
                .values_list("status", flat=True)
                .first()
            )
        changed = (
            ContainerInstance.objects.filter(pk=instance_id, status__in=expected_set)
            .update(status=to, status_changed_at=Now(), updated_at=Now(), **values)
            if frm is not None
            else 0
        )
        if changed != 1:
            current = (
                ContainerInstance.objects.filter(pk=instance_id)
                .values_list("status", flat=True)
                .first()
            )
            raise TransitionConflict(
                f"server {instance_id} is {current or 'gone'}, expected {sorted(expected_set)}"
            )
        audit_record(
            actor=actor,
            instance_id=instance_id,
            action=action or f"status:{to}",
            from_status=frm,
            to_status=to,
            data=audit_data,
        )
    return frm
