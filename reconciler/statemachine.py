"""The repair event's state machine and its named transitions.

    proposed (dry run; final)          blocked (refused by policy; final)
    queued ──claim──▶ running ──succeed──▶ succeeded
      │                  ├──fail───────▶ failed    (the post-check did not confirm it, or an
      │                  │                           outside system failed)
      │                  ├──errored────▶ errored   (our own code failed: a platform error)
      │                  └──skip───────▶ skipped   (the precondition no longer held)
      └──supersede──▶ skipped           running ──abandon──▶ failed (its worker vanished)

Each is one conditional UPDATE on (id, expected state); leaving an active state frees the
(subject, action) slot in the same statement.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models.functions import Now

from .choices import RepairState
from .models import RepairEvent

R = RepairState
#: Where a running repair may end.
ENDINGS = frozenset({R.SUCCEEDED, R.FAILED, R.ERRORED, R.SKIPPED})


def repair_claim(*, repair_id: int) -> bool:
    """queued -> running; False when someone else claimed it (or it was superseded)."""
    return bool(RepairEvent.objects.filter(pk=repair_id, state=R.QUEUED).update(
        state=R.RUNNING, started_at=Now()))


def repair_end(*, repair_id: int, state: str, reason: str, before: dict[str, Any],
               after: dict[str, Any]) -> bool:
    """running -> succeeded | failed | errored | skipped, with what was observed."""
    if state not in ENDINGS:
        raise ValueError(f"a repair cannot end in {state!r}")
    return bool(RepairEvent.objects.filter(pk=repair_id, state=R.RUNNING).update(
        state=state, active_slot=None, finished_at=Now(), reason=reason, after=after,
        before=before))


def repairs_supersede(*, epoch: int) -> int:
    """Queued repairs of an older epoch would be fenced out anyway: free their slots."""
    return RepairEvent.objects.filter(state=R.QUEUED, epoch__lt=epoch).update(
        state=R.SKIPPED, active_slot=None, finished_at=Now(),
        reason=f"superseded by epoch {epoch}")


def repairs_abandon(*, epoch: int, started_before: datetime) -> int:
    """Running repairs of an older epoch whose worker vanished long ago."""
    return RepairEvent.objects.filter(state=R.RUNNING, epoch__lt=epoch,
                                      started_at__lt=started_before).update(
        state=R.FAILED, active_slot=None, finished_at=Now(), reason="abandoned by its worker")
