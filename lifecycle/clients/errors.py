"""Errors of outside calls, classified once so every caller retries (or not) the same way."""
from __future__ import annotations


class ExternalError(Exception):
    """A call to an outside system failed. `retryable` says whether trying again can help."""

    retryable = True
    kind = "error"

    def __init__(self, message: str, *, kind: str | None = None,
                 retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind
        if retryable is not None:
            self.retryable = retryable
