"""One base class for every failure of an outside system, or of a step that depends on one.

`kind` names what happened in a small vocabulary the raiser owns (`timeout`, `not_found`,
`locked`, …) so callers never parse messages; `retryable` says whether trying the same thing
again later can help. It is False unless the raiser says otherwise: an error nobody classified
is not retried blindly (the worker treats unexpected exceptions separately, as platform errors).
"""
from __future__ import annotations


class ExternalError(Exception):
    """A call to (or a wait on) an outside system failed. Subclasses name the system."""

    system = "external"

    def __init__(self, message: str, *, kind: str = "error", retryable: bool = False,
                 codes: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retryable = retryable
        #: Error codes the outside system gave (e.g. Cloudflare's), for classification.
        self.codes = codes

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.message!r}, kind={self.kind!r}, "
                f"retryable={self.retryable})")
