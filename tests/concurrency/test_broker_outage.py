"""Redis unreachable while requests arrive: the request is accepted and nothing is lost."""
from __future__ import annotations

import time

import pytest

from lifecycle.choices import OperationState
from lifecycle.models import ContainerInstance, Operation
from lifecycle.services.operations import operation_enqueue
from tests.support import broker
from tests.support.platform import game_body, make_user, seed_platform
from tests.support.procs import child_env, run_parallel

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]


def test_create_with_redis_down_is_accepted_and_the_operation_stays_queued():
    seed_platform()
    alice = make_user("alice")
    dead = child_env(REDIS_URL="redis://127.0.0.1:9/15", TEST_REDIS_URL="redis://127.0.0.1:9/15")
    started = time.monotonic()
    [[result]] = run_parallel(
        "tests.support.workloads.create_servers",
        [{"token": alice.token, "requests": [{"body": game_body("no-redis"), "key": "nr"}]}],
        env=dead, timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result["status"] == 202
    op = Operation.objects.get(pk=result["operation"])
    assert op.state == OperationState.QUEUED and op.active_slot is not None
    assert ContainerInstance.objects.filter(pk=result["id"]).exists()
    assert broker.queued_task_ids("lifecycle") == []
    assert elapsed < 60, f"a create with Redis down took {elapsed:.1f}s"

    # Once Redis is back, sending the wake-up again (what the sweeper does) delivers it.
    assert operation_enqueue(operation_id=op.id)
    assert broker.queued_task_ids("lifecycle") == [str(op.id)]
