"""An operation's log as the worker writes it (lifecycle/worker/context.py): a checkpoint sends
only its new lines (the database appends them), the database's log stays exactly the worker's,
it is cut back to LOG_LIMIT once it passes twice that, and a worker that lost its lease writes
nothing."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from lifecycle.models import Operation
from lifecycle.worker.context import LOG_LIMIT, OperationContext
from lifecycle.worker.errors import LeaseLost
from tests.factories import OperationFactory

pytestmark = pytest.mark.django_db


def running_context() -> tuple[Operation, OperationContext]:
    op = OperationFactory(state="running", worker="w1@host", kind="provision")
    ctx = OperationContext(operation_id=op.id, instance_id=op.instance_id, kind=op.kind,
                           worker="w1@host", attempt=1, params={}, log=list(op.log))
    return op, ctx


def stored(op: Operation) -> list[dict]:
    return Operation.objects.get(pk=op.pk).log


def test_checkpoints_append_only_their_new_lines():
    op, ctx = running_context()
    first = stored(op)[0]["msg"]
    ctx.note("a note kept until the next checkpoint")
    with CaptureQueriesContext(connection) as queries:
        ctx.checkpoint("created", "container created")
    assert stored(op) == ctx.log and len(ctx.log) == 3
    assert [e["msg"] for e in stored(op)[1:]] == ["a note kept until the next checkpoint",
                                                 "container created"]
    (update,) = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert "JSON_ARRAY_APPEND" in update and first not in update

    # Many checkpoints: each statement carries its own line only, whatever the log's length.
    sizes = []
    for i in range(2 * LOG_LIMIT - 3):
        with CaptureQueriesContext(connection) as queries:
            ctx.checkpoint(f"s{i}", f"step {i:04d}")
        (update,) = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
        assert "step 0000" not in update or i == 0
        sizes.append(len(update))
        assert stored(op) == ctx.log
    assert len(ctx.log) == 2 * LOG_LIMIT and max(sizes) - min(sizes) < 10, sizes

    # Past twice the limit: one whole write of the last LOG_LIMIT lines, then appends again.
    ctx.checkpoint("cut", "the log is cut here")
    assert stored(op) == ctx.log and len(ctx.log) == LOG_LIMIT
    assert ctx.log[-1]["msg"] == "the log is cut here"
    ctx.checkpoint("after", "appended after the cut")
    assert stored(op) == ctx.log and len(ctx.log) == LOG_LIMIT + 1
    assert Operation.objects.get(pk=op.pk).step == "after"


def test_the_end_of_an_attempt_writes_the_log_cut_to_its_limit():
    op, ctx = running_context()
    for i in range(LOG_LIMIT + 5):
        ctx.note(f"line {i}")
    ctx.checkpoint("x")
    assert len(stored(op)) == LOG_LIMIT + 7
    full = ctx.full_log()
    assert len(full) == LOG_LIMIT and full[-1]["msg"] == "step x"
    Operation.objects.filter(pk=op.pk).update(log=full)
    ctx.checkpoint("y")
    assert stored(op) == ctx.log and len(ctx.log) == LOG_LIMIT + 1


def test_a_worker_that_lost_its_lease_appends_nothing():
    op, ctx = running_context()
    Operation.objects.filter(pk=op.pk).update(worker="w2@elsewhere")
    with pytest.raises(LeaseLost):
        ctx.checkpoint("created", "written by a worker that is no longer the holder")
    assert stored(op) == op.log


def test_lines_with_quotes_and_unicode_arrive_as_written():
    op, ctx = running_context()
    ctx.checkpoint("odd", 'a "quoted" line, a backslash \\ and ünïcödé ✓ and \' too')
    assert stored(op)[-1]["msg"] == 'a "quoted" line, a backslash \\ and ünïcödé ✓ and \' too'
