"""Running an operation exactly once, whatever is delivered twice or dies halfway.

A task claims its operation with one conditional UPDATE (queued and due, or running with an
expired lease) and writes its worker identity and a lease onto the row, judged by the database
clock. A second delivery finds the row claimed and exits without side effects. While working,
the flow renews the lease and checkpoints its step (`context.OperationContext`).

How it ends:
- an outside failure that may pass (timeouts, 5xx, locks) → `queued` again after a backoff,
  with a new message; after too many attempts → `failed`;
- an outside failure that will not pass (a refusal, a foreign container) → `failed`;
- our own code raising something unexpected → retried the same way, then `errored` (a platform
  error an operator must look at, kept apart from failures of the outside world);
- a wait for something outside that takes a while (`WaitLater`: a place under a node's task
  limit, a game being installed) → `queued` again to look later, not counted as an attempt;
  a bounded wait keeps its deadline on the row across looks, and a claim inside it resumes
  the flow at the wait.
In both terminal cases the flow's `on_failure` puts the server in a readable state, in the same
transaction that ends the operation.
"""
from __future__ import annotations

import logging
import os
import socket
import traceback
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import BooleanField, ExpressionWrapper, Q
from django.db.models.functions import Now
from django.utils import timezone

from core.clock import db_before
from core.errors import ExternalError
from core.logs import bind
from core.redaction import redact

from ..errors import TransitionConflict
from ..models import Operation
from ..operation_kinds import spec_for
from ..services.operations import operation_enqueue
from ..statemachines.operation import (
    operation_claim,
    operation_errored,
    operation_fail,
    operation_retry_later,
    operation_wait,
)
from .context import OperationContext
from .steps.status import announce_failure
from ..services.node_slots import node_slot_release
from .errors import LeaseLost, StepError, WaitLater

logger = logging.getLogger(__name__)
#: How a claim begins its log line (a look for a free Proxmox task place drops its own).
CLAIMED = "claimed by"


class Outcome(StrEnum):
    """What `operation_run` reports (for logs and tests)."""

    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    ERRORED = "errored"
    LEASE_LOST = "lease-lost"
    NOT_CLAIMED = "not-claimed"
    WAITING = "waiting"


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(*, operation_id: Any, worker: str | None = None) -> OperationContext | None:
    """Take the operation for this worker, or None if it is not claimable (done, running
    elsewhere under a live lease, or not due yet)."""
    worker = worker or worker_identity()
    try:
        operation_claim(operation_id=operation_id, worker=worker)
    except TransitionConflict:
        return None
    # Read back with whether it started longer ago than the retry window, and whether the wait
    # it is inside (if any) is over (database clock).
    op = Operation.objects.annotate(
        retry_window_over=ExpressionWrapper(
            Q(started_at__lt=db_before(settings.OPERATION_RETRY_WINDOW_SECONDS)),
            output_field=BooleanField()),
        wait_over=ExpressionWrapper(Q(wait_deadline__lt=Now()), output_field=BooleanField()),
    ).get(pk=operation_id)
    ctx = OperationContext(operation_id=op.id, instance_id=op.instance_id, kind=op.kind,
                           worker=worker, attempt=op.attempt, params=op.params or {},
                           log=list(op.log or []), step=op.step,
                           retry_window_over=bool(op.retry_window_over),
                           waiting=op.wait_deadline is not None, wait_over=bool(op.wait_over))
    ctx.note(f"{CLAIMED} {worker} (attempt {op.attempt}"
             f"{', after step ' + op.step if op.step else ''})")
    return ctx


def error_json(err: BaseException) -> dict[str, Any]:
    """How an error is stored on the operation and the server: readable and redacted."""
    kind = getattr(err, "kind", type(err).__name__)
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    return redact({"kind": kind, "message": message[:1000],
                   "retryable": bool(getattr(err, "retryable", False)),
                   "at": timezone.now().isoformat(timespec="seconds")})


def _retry_later(ctx: OperationContext, err: BaseException) -> None:
    delay = min(settings.OPERATION_RETRY_MAX_SECONDS,
                settings.OPERATION_RETRY_BASE_SECONDS * (2 ** max(0, ctx.attempt - 1)))
    ctx.note(f"retryable failure, retrying in {delay:.1f}s: {error_json(err)['message']}")
    try:
        operation_retry_later(operation_id=ctx.operation_id, worker=ctx.worker,
                              error=error_json(err), log=ctx.full_log(), delay_seconds=delay)
    except TransitionConflict:
        return  # someone else owns it now
    operation_enqueue(operation_id=ctx.operation_id, countdown=delay)


def _wait(ctx: OperationContext, wait: WaitLater) -> None:
    """Queue the operation again to look shortly (a place on a node, a game being installed);
    no worker waits meanwhile. The log says so once per wait, not at every look."""
    message = f"{wait}; looking again every {wait.delay:g}s"
    if (len(ctx.log) >= 2 and ctx.log[-2].get("msg") == message
            and ctx.log[-1].get("msg", "").startswith(CLAIMED)):
        ctx.log.pop()  # this look's claim: the log says already that it waits
    elif not ctx.log or ctx.log[-1].get("msg") != message:
        ctx.note(message)
    try:
        operation_wait(operation_id=ctx.operation_id, worker=ctx.worker, log=ctx.full_log(),
                       delay_seconds=wait.delay, waiting_for=wait.key,
                       deadline_seconds=wait.timeout)
    except TransitionConflict:
        return  # someone else owns it now
    operation_enqueue(operation_id=ctx.operation_id, countdown=wait.delay)


def _end(ctx: OperationContext, err: BaseException, transition: Callable[..., None],
         on_failure: Callable | None) -> None:
    """End the operation for good (failed or errored) and let the flow settle the server."""
    node_slot_release(holder=str(ctx.operation_id))
    error = error_json(err)
    ctx.note(f"{transition.__name__.removeprefix('operation_')}: {error['message']}")
    with transaction.atomic():
        try:
            transition(operation_id=ctx.operation_id, worker=ctx.worker, error=error,
                       log=ctx.full_log())
        except TransitionConflict:
            return
        if on_failure is not None:
            on_failure(ctx, error)
        announce_failure(ctx, error, errored=transition is operation_errored)


def operation_run(*, operation_id: Any) -> str:
    """Claim and run one operation. Returns an `Outcome` value."""
    ctx = claim(operation_id=operation_id)
    if ctx is None:
        logger.info("operation %s not claimable (done, owned or not due); exiting", operation_id)
        return Outcome.NOT_CLAIMED
    with bind(operation_id=ctx.operation_id, server_id=ctx.instance_id, kind=ctx.kind,
              attempt=ctx.attempt):
        return _run(ctx, operation_id)


def _run(ctx: OperationContext, operation_id: Any) -> str:
    flow = spec_for(ctx.kind).load_flow()
    last_try = ctx.last_attempt
    try:
        if ctx.attempt > settings.OPERATION_MAX_ATTEMPTS:
            raise StepError(f"gave up after {ctx.attempt - 1} attempts", kind="attempts_exhausted")
        flow.run(ctx)
        node_slot_release(holder=str(ctx.operation_id))
        return Outcome.SUCCEEDED
    except LeaseLost as exc:
        logger.warning("operation %s: %s; stopping without further changes", operation_id, exc)
        return Outcome.LEASE_LOST
    except WaitLater as wait:
        _wait(ctx, wait)
        return Outcome.WAITING
    except ExternalError as err:
        if err.retryable and not last_try:
            _retry_later(ctx, err)
            return Outcome.RETRYING
        _end(ctx, err, operation_fail, flow.on_failure)
        return Outcome.FAILED
    except Exception as err:  # our own bug or an unclassified failure: retry, then `errored`
        logger.exception("operation %s: unexpected error", operation_id)
        wrapped = StepError(f"internal error: {type(err).__name__}: {err}", retryable=True,
                            kind="internal")
        wrapped.__cause__ = err
        ctx.note("".join(traceback.format_exception_only(type(err), err)).strip())
        try:
            if not last_try:
                _retry_later(ctx, wrapped)
                return Outcome.RETRYING
            _end(ctx, wrapped, operation_errored, flow.on_failure)
        except LeaseLost:
            pass
        return Outcome.ERRORED
