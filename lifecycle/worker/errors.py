"""The two ways a flow stops early: a step that failed, and a lease that was taken away."""
from __future__ import annotations

from core.errors import ExternalError


class StepError(ExternalError):
    """A flow step failed with a readable reason (often because an outside system did)."""

    system = "step"


class LeaseLost(Exception):
    """Another worker owns the operation now; stop without further side effects."""


class WaitForSlot(Exception):
    """Every place for this kind of Proxmox task on the node is taken: the operation is queued
    again (not a failure, not an attempt) and looks again shortly."""

    def __init__(self, *, node: str, kind: str, limit: int) -> None:
        super().__init__(f"waiting for a free {kind} place on {node} (all {limit} in use)")
        self.node, self.kind, self.limit = node, kind, limit
