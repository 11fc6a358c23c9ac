"""The wait for readiness holds no worker (issue 17, item 1): after READY_HOLD_SECONDS the
operation is queued again and each claim that comes back looks once, resuming the flow at the
wait. Nothing before the wait runs twice, the deadline holds across the looks, and a worker
killed or a Redis wiped in the middle of the wait loses nothing."""
from __future__ import annotations

import time

import pytest

from lifecycle.models import ContainerInstance, Operation
from lifecycle.services.actions import server_request
from lifecycle.services.servers import server_create
from lifecycle.services.audit import Actor
from lifecycle.choices import WAITING_FOR_READY as READY_KEY
from tests.support import broker
from tests.support.platform import game_body
from tests.support.stack import wait_operation, wait_status
from tests.support.waiting import wait_until
from tests.support.workers import start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]

WAIT = "waiting for the server to become ready; looking again every 0.2s"
RESCHEDULE = {"READY_HOLD_SECONDS": "0", "READY_LOOK_SECONDS": "0.2"}


def _calls(stack, service: str) -> list[tuple[str, str]]:
    answer = stack.sim(service, "GET", "/_sim/calls?last=100000")
    return [(method, path) for method, path, _status in answer["calls"]]


def _count(calls, method: str, suffix: str) -> int:
    return sum(1 for m, p in calls if m == method and p.endswith(suffix))


def _msgs(op: Operation) -> list[str]:
    return [e["msg"] for e in op.log]


def test_servers_installing_hold_no_worker_and_nothing_before_the_wait_runs_twice(
        stack, worker_env, owner, settings, tmp_path):
    """One worker thread, four servers installing: more of them wait for their game at once
    than there are threads, and each container, credential and payload is made once."""
    stack.pve("POST", "/_sim/time-scale", json={"scale": 0.25})  # create 1 s, install 2.25 s
    worker = start_worker(worker_env(**RESCHEDULE), tmp_path, name="one", pool="threads",
                          concurrency=1)
    most = 0
    try:
        servers = [server_create(owner=owner.user, data=game_body(f"inst{i}")).instance
                   for i in range(4)]
        deadline = time.monotonic() + 90
        while ContainerInstance.objects.filter(status="running").count() < len(servers):
            assert time.monotonic() < deadline, "the servers did not all run"
            assert not ContainerInstance.objects.filter(status="failed").exists()
            most = max(most, Operation.objects.filter(waiting_for=READY_KEY,
                                                      state="queued").count())
            time.sleep(0.02)
    finally:
        worker.stop()
    assert most >= 2, f"at most {most} waited for their game at once on one thread"
    pve, agents = _calls(stack, "proxmox"), _calls(stack, "agents")
    assert _count(pve, "POST", "/lxc") == 4  # one create each
    for inst in ContainerInstance.objects.filter(pk__in=[s.id for s in servers]):
        assert _count(agents, "POST", f"/agents/{inst.vmid}/provision") == 1
        assert _count(agents, "POST", f"/agents/{inst.vmid}/credential") == 1
        assert stack.agent(inst.vmid)["boots"] == 1
    for op in Operation.objects.filter(kind="provision"):
        msgs = _msgs(op)
        assert op.state == "succeeded" and op.attempt == 1, (op.state, op.attempt, msgs)
        assert op.wait_deadline is None and op.waiting_for == ""
        # Said once however many looks it took; the look that found it ready is one claim.
        assert msgs.count(WAIT) == 1, msgs
        after = msgs[msgs.index(WAIT) + 1:]
        assert after[0].startswith("claimed by") and after[1] == "server is ready", msgs
        assert sum(m.startswith("claimed by") for m in after) == 1, msgs


def test_the_deadline_holds_across_looks_and_a_retry_starts_from_the_top(
        stack, worker_env, owner, settings, tmp_path):
    """A game that is not ready within READY_WAIT_SECONDS: the looks do not push the deadline
    on; the attempt fails as a timeout and the next one runs the flow again from the start."""
    env = {**RESCHEDULE, "READY_WAIT_SECONDS": "1", "OPERATION_MAX_ATTEMPTS": "2"}
    stack.pve("POST", "/_sim/time-scale", json={"scale": 1.0})  # install + boot take 9 s
    worker = start_worker(worker_env(**env), tmp_path, name="slow", pool="threads",
                          concurrency=2)
    try:
        inst = server_create(owner=owner.user, data=game_body("slowgame")).instance
        op = Operation.objects.get(instance_id=inst.id)
        op = wait_operation(op.id, states=("failed",), timeout=60)
    finally:
        worker.stop()
    msgs = _msgs(op)
    assert op.error["kind"] == "timeout" and op.attempt == 2, (op.error, msgs)
    assert op.wait_deadline is None
    # Each attempt waited (once in its log) and the second ran the container step again.
    assert msgs.count(WAIT) == 2, msgs
    second = [e["msg"] for e in op.log if e["attempt"] == 2]
    assert any("is ours" in m for m in second), second
    statuses = _count(_calls(stack, "agents"), "GET", f"/agents/{inst.vmid}/status")
    # About 1 s / 0.2 s looks per attempt, plus the session's own: not a wait without end.
    assert 4 <= statuses <= 40, statuses
    assert ContainerInstance.objects.get(pk=inst.id).status == "failed"


def test_a_worker_killed_and_redis_wiped_inside_the_wait_lose_nothing(
        stack, worker_env, owner, settings, tmp_path):
    """The wait goes on in another worker, from where it was: the container, the credential
    and the payload are not made again, and the operation is still its first attempt."""
    stack.pve("POST", "/_sim/time-scale", json={"scale": 0.5})  # install + boot 4.5 s
    first = start_worker(worker_env(**RESCHEDULE), tmp_path, name="first", pool="threads",
                         concurrency=2)
    second = None
    try:
        inst = server_create(owner=owner.user, data=game_body("survivor")).instance
        op = Operation.objects.get(instance_id=inst.id)
        wait_until(lambda: Operation.objects.filter(pk=op.id, waiting_for=READY_KEY).exists(),
                   timeout=30, what="the wait for readiness")
        first.kill()
        broker.flush()  # the look's message is gone too
        second = start_worker(worker_env(**RESCHEDULE), tmp_path, name="second",
                              pool="threads", concurrency=2)
        wait_status(inst.id, "running", timeout=60, sweep=True)
    finally:
        first.kill()
        if second is not None:
            second.stop()
    op.refresh_from_db()
    inst.refresh_from_db()
    msgs = _msgs(op)
    assert op.state == "succeeded" and op.attempt == 1, (op.state, op.attempt, msgs)
    assert op.wait_deadline is None
    assert any(m.startswith("claimed by") and "after step payload" in m for m in msgs), msgs
    pve, agents = _calls(stack, "proxmox"), _calls(stack, "agents")
    assert _count(pve, "POST", "/lxc") == 1
    assert _count(pve, "POST", f"/lxc/{inst.vmid}/status/start") == 1
    assert _count(agents, "POST", f"/agents/{inst.vmid}/provision") == 1
    assert _count(agents, "POST", f"/agents/{inst.vmid}/credential") == 1
    assert stack.agent(inst.vmid)["boots"] == 1


def test_a_restart_waits_for_the_game_without_a_worker_and_starts_it_once(
        stack, worker_env, owner, settings, tmp_path):
    worker = start_worker(worker_env(**RESCHEDULE), tmp_path, name="power", pool="threads",
                          concurrency=1)
    try:
        inst = wait_status(server_create(owner=owner.user, data=game_body("restarted"))
                           .instance.id, "running")
        stack.pve("POST", "/_sim/time-scale", json={"scale": 0.5})  # the game boots in 1.5 s
        op = server_request(instance_id=inst.id, kind="restart", actor=Actor.for_user(owner.user))
        op = wait_operation(op.id, timeout=60)
        wait_status(inst.id, "running")
    finally:
        worker.stop()
    msgs = _msgs(op)
    assert op.attempt == 1 and msgs.count(WAIT) == 1, msgs
    assert _count(_calls(stack, "agents"), "POST", f"/agents/{inst.vmid}/game/start") == 1
    agent = stack.agent(inst.vmid)
    assert agent["boots"] == 2 and agent["saves"] == 1 and agent["uncleanStops"] == 0
