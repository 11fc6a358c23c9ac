"""Running an operation exactly once, whatever is delivered twice or dies halfway.

A task claims its operation with one conditional UPDATE (queued and due, or running with an
expired lease) and writes its worker identity and a lease onto the row, judged by the database
clock. A second delivery finds the row claimed and exits without side effects. While working,
the flow renews the lease and checkpoints its step with UPDATEs that name the claiming worker:
a worker whose lease was taken over gets zero rows, raises LeaseLost and stops at once.

Failures: a retryable error (timeouts, 5xx, locks) hands the operation back to `queued` with a
short backoff and a new message; a terminal error (or too many attempts) fails the operation and
lets the flow put the server in a readable failed state.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from edge.errors import EdgeError
from notifications.redaction import redact, redact_text

from ..choices import OperationState as O
from ..clients.errors import ExternalError
from ..errors import TransitionConflict
from ..models import ContainerInstance, Operation
from ..statemachines.operation import operation_transition
from .audit import Actor
from .operations import operation_enqueue

logger = logging.getLogger(__name__)
T = TypeVar("T")
LOG_LIMIT = 60


class LeaseLost(Exception):
    """Another worker owns the operation now; stop without further side effects."""


class StepError(Exception):
    """A flow step failed with a readable reason."""

    def __init__(self, message: str, *, retryable: bool = False, kind: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.kind = kind


def _lease_expiry() -> ExpressionWrapper:
    return ExpressionWrapper(
        Now() + timedelta(seconds=settings.OPERATION_LEASE_SECONDS),
        output_field=DateTimeField(),
    )


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _claimable() -> Q:
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=Now())
    return (Q(state=O.QUEUED) & due) | Q(state=O.RUNNING, lease_expires_at__lt=Now())


@dataclass
class OperationContext:
    """What a flow gets: the claimed operation, its server, and lease-guarded bookkeeping."""

    operation_id: uuid.UUID
    instance_id: uuid.UUID
    kind: str
    worker: str
    attempt: int
    params: dict[str, Any]
    log: list[dict[str, Any]] = field(default_factory=list)
    step: str = ""
    _renewed_at: float = field(default_factory=time.monotonic)

    @property
    def actor(self) -> Actor:
        return Actor.system(f"worker {self.worker.split(':')[0]}")

    # --- lease-guarded writes -------------------------------------------------------------------
    def _guarded(self) -> Any:
        return Operation.objects.filter(pk=self.operation_id, state=O.RUNNING, worker=self.worker)

    def renew(self, *, force: bool = False) -> None:
        """Extend the lease (at most every third of it unless forced); LeaseLost if it is gone."""
        if not force and time.monotonic() - self._renewed_at < settings.OPERATION_LEASE_SECONDS / 3:
            return
        if not self._guarded().update(lease_expires_at=_lease_expiry(), updated_at=Now()):
            raise LeaseLost(f"operation {self.operation_id}: lease lost")
        self._renewed_at = time.monotonic()

    def note(self, message: str) -> None:
        self.log.append({"at": timezone.now().isoformat(timespec="seconds"),
                         "attempt": self.attempt, "msg": redact_text(message)[:500]})
        del self.log[:-LOG_LIMIT]
        logger.info("operation %s (%s): %s", self.operation_id, self.kind, message)

    def checkpoint(self, step: str, message: str = "") -> None:
        """Record progress; also renews the lease. LeaseLost if another worker took over."""
        self.step = step
        self.note(message or f"step {step}")
        if not self._guarded().update(step=step, log=self.log, lease_expires_at=_lease_expiry(),
                                      updated_at=Now()):
            raise LeaseLost(f"operation {self.operation_id}: lease lost at step {step}")
        self._renewed_at = time.monotonic()

    def succeed(self) -> None:
        """Finish the operation; call inside the transaction of the final server transition."""
        self.note("succeeded")
        try:
            operation_transition(operation_id=self.operation_id, expected=O.RUNNING,
                                 to=O.SUCCEEDED, condition=Q(worker=self.worker),
                                 fields={"error": None, "log": self.log, "step": "done"})
        except TransitionConflict as exc:
            raise LeaseLost(str(exc)) from exc

    # --- reads and waits ------------------------------------------------------------------------
    def instance(self) -> ContainerInstance:
        return ContainerInstance.objects.select_related("node").get(pk=self.instance_id)

    def wait_for(self, check: Callable[[], T | None], *, timeout: float, what: str,
                 retryable: bool = True) -> T:
        """Poll `check` until it returns something, renewing the lease; bounded by `timeout`.

        Starts fast (50 ms) and backs off to 2 s. `check` may raise to abort the wait.
        """
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            result = check()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise StepError(f"timed out after {timeout:.0f}s waiting for {what}",
                                retryable=retryable, kind="timeout")
            self.renew()
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(2.0, delay * 1.6)


def operation_claim(*, operation_id: Any, worker: str | None = None) -> OperationContext | None:
    """Take the operation for this worker, or None if it is not claimable (done, running
    elsewhere under a live lease, or not due yet)."""
    worker = worker or worker_identity()
    try:
        operation_transition(
            operation_id=operation_id,
            expected=(O.QUEUED, O.RUNNING),
            to=O.RUNNING,
            condition=_claimable(),
            fields={
                "worker": worker,
                "lease_expires_at": _lease_expiry(),
                "attempt": F("attempt") + 1,
                "started_at": Coalesce(F("started_at"), Now()),
                "next_attempt_at": None,
            },
        )
    except TransitionConflict:
        return None
    op = Operation.objects.get(pk=operation_id)
    ctx = OperationContext(operation_id=op.id, instance_id=op.instance_id, kind=op.kind,
                           worker=worker, attempt=op.attempt, params=op.params or {},
                           log=list(op.log or []), step=op.step)
    ctx.note(f"claimed by {worker} (attempt {op.attempt}"
             f"{', after step ' + op.step if op.step else ''})")
    return ctx


def _error_json(err: BaseException) -> dict[str, Any]:
    kind = getattr(err, "kind", type(err).__name__)
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    return redact({"kind": kind, "message": message[:1000],
                   "retryable": bool(getattr(err, "retryable", False)),
                   "at": timezone.now().isoformat(timespec="seconds")})


def _retry_later(ctx: OperationContext, err: BaseException) -> None:
    delay = min(settings.OPERATION_RETRY_MAX_SECONDS,
                settings.OPERATION_RETRY_BASE_SECONDS * (2 ** max(0, ctx.attempt - 1)))
    ctx.note(f"retryable failure, retrying in {delay:.1f}s: {_error_json(err)['message']}")
    try:
        operation_transition(
            operation_id=ctx.operation_id, expected=O.RUNNING, to=O.QUEUED,
            condition=Q(worker=ctx.worker),
            fields={"error": _error_json(err), "log": ctx.log, "worker": "",
                    "lease_expires_at": None,
                    "next_attempt_at": timezone.now() + timedelta(seconds=delay),
                    "enqueued_at": timezone.now()},
        )
    except TransitionConflict:
        return  # someone else owns it now
    operation_enqueue(operation_id=ctx.operation_id, countdown=delay)


def _fail(ctx: OperationContext, err: BaseException, on_failure: Callable | None) -> None:
    ctx.note(f"failed: {_error_json(err)['message']}")
    with transaction.atomic():
        try:
            operation_transition(operation_id=ctx.operation_id, expected=O.RUNNING, to=O.FAILED,
                                 condition=Q(worker=ctx.worker),
                                 fields={"error": _error_json(err), "log": ctx.log})
        except TransitionConflict:
            return
        if on_failure is not None:
            on_failure(ctx, _error_json(err))


def operation_run(*, operation_id: Any) -> str:
    """Claim and run one operation. Returns what happened (for logs and tests)."""
    from .flows import FLOWS  # flows import this module

    ctx = operation_claim(operation_id=operation_id)
    if ctx is None:
        logger.info("operation %s not claimable (done, owned or not due); exiting", operation_id)
        return "not-claimed"
    flow = FLOWS[ctx.kind]
    try:
        if ctx.attempt > settings.OPERATION_MAX_ATTEMPTS:
            raise StepError(f"gave up after {ctx.attempt - 1} attempts", retryable=False,
                            kind="attempts_exhausted")
        flow.run(ctx)
        return "succeeded"
    except LeaseLost as exc:
        logger.warning("operation %s: %s; stopping without further changes", operation_id, exc)
        return "lease-lost"
    except (StepError, ExternalError, EdgeError) as err:
        if err.retryable and ctx.attempt < settings.OPERATION_MAX_ATTEMPTS:
            _retry_later(ctx, err)
            return "retrying"
        _fail(ctx, err, flow.on_failure)
        return "failed"
    except Exception as err:  # a bug or an unclassified failure: retry, then fail readably
        logger.exception("operation %s: unexpected error", operation_id)
        wrapped = StepError(f"internal error: {type(err).__name__}: {err}", retryable=True,
                            kind="internal")
        wrapped.__cause__ = err
        ctx.note("".join(traceback.format_exception_only(type(err), err)).strip())
        try:
            if ctx.attempt < settings.OPERATION_MAX_ATTEMPTS:
                _retry_later(ctx, wrapped)
                return "retrying"
            _fail(ctx, wrapped, flow.on_failure)
        except LeaseLost:
            pass
        return "failed"
