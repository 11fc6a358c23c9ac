"""The ways a flow stops early: a step that failed, a lease that was taken away, and a wait that
goes on without a worker."""
from __future__ import annotations

from django.conf import settings

from core.errors import ExternalError

from ..services.node_slots import waiting_key


class StepError(ExternalError):
    """A flow step failed with a readable reason (often because an outside system did)."""

    system = "step"


class LeaseLost(Exception):
    """Another worker owns the operation now; stop without further side effects."""


class WaitLater(Exception):
    """The flow waits for something outside that takes a while: the operation is queued again
    (not a failure, not an attempt) and looks again after `delay` seconds; no worker is held
    meanwhile. `key` is what it waits for (the operation's `waiting_for`). `timeout` bounds the
    whole wait: the first look writes the deadline on the operation (`wait_deadline`, database
    clock) and later looks keep it; None for a wait bounded elsewhere."""

    def __init__(self, message: str, *, key: str, delay: float,
                 timeout: float | None = None) -> None:
        super().__init__(message)
        self.key, self.delay, self.timeout = key, delay, timeout


class WaitForSlot(WaitLater):
    """Every place for this kind of Proxmox task on the node is taken: the operation looks again
    after PROXMOX_SLOT_WAIT_SECONDS, or sooner when a place is given back."""

    def __init__(self, *, node: str, kind: str, limit: int) -> None:
        super().__init__(f"waiting for a free {kind} place on {node} (all {limit} in use)",
                         key=waiting_key(node, kind), delay=settings.PROXMOX_SLOT_WAIT_SECONDS)
        self.node, self.kind, self.limit = node, kind, limit
