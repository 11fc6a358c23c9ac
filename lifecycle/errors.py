"""Errors the lifecycle services raise. The API maps each `code` to an HTTP status."""
from __future__ import annotations

from typing import Any


class LifecycleError(Exception):
    """A refusal with a readable message, safe to show to the user who caused it."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class InvalidRequest(LifecycleError):
    code = "invalid"
    http_status = 400


class QuotaExceeded(LifecycleError):
    code = "quota_exceeded"
    http_status = 409


class NameTaken(LifecycleError):
    code = "name_taken"
    http_status = 409


class IdempotencyMismatch(LifecycleError):
    code = "idempotency_key_reused"
    http_status = 422


class CapacityExhausted(LifecycleError):
    """Our side is full (no node with room, or a pool ran dry): not the user's fault."""

    code = "capacity_exhausted"
    http_status = 503


class OperationInProgress(LifecycleError):
    code = "operation_in_progress"
    http_status = 409


class InvalidTransition(Exception):
    """A transition the table does not allow: a programming error, never user input."""


class TransitionConflict(Exception):
    """The row was not in the expected state (someone else moved it first)."""


class InvalidState(LifecycleError):
    """The server is not in a state that allows this action."""

    code = "invalid_state"
    http_status = 409


class NotOwner(LifecycleError):
    """Only the server's owner may do this (not even staff)."""

    code = "permission_denied"
    http_status = 403


class Unavailable(LifecycleError):
    """A feature this control plane is not configured for (not the caller's fault)."""

    code = "unavailable"
    http_status = 503


class MappingInvalid(LifecycleError):
    """The mapping file cannot be used; `problems` names each bad line."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class AdoptionRefused(LifecycleError):
    """An adoption or release that cannot go on: something changed since the plan (a value
    claimed meanwhile, a name taken), or the server is busy."""
