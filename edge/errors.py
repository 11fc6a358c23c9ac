"""Errors of the edge systems, classified once: `kind` says what happened, `retryable` whether
trying again can help."""
from __future__ import annotations


class EdgeError(Exception):
    def __init__(self, message: str, *, kind: str = "error", retryable: bool = False,
                 codes: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retryable = retryable
        self.codes = codes
