"""The two ways a flow stops early: a step that failed, and a lease that was taken away."""
from __future__ import annotations

from core.errors import ExternalError


class StepError(ExternalError):
    """A flow step failed with a readable reason (often because an outside system did)."""

    system = "step"


class LeaseLost(Exception):
    """Another worker owns the operation now; stop without further side effects."""
