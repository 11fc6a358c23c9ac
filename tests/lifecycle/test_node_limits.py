"""Bounded pressure on Proxmox (issue 17, item 2): a burst of creates against two worker
processes never puts more tasks of a kind on a node at once than its limit, also when Redis is
wiped in the middle; waiting operations say so in their log and hold no worker."""
from __future__ import annotations

import pytest

from lifecycle.models import ContainerInstance, NodeTaskSlot, Operation
from lifecycle.services.servers import server_create
from tests.support import broker
from tests.support.platform import game_body
from tests.support.stack import wait_status
from tests.support.waiting import wait_until
from tests.support.workers import start_worker

pytestmark = pytest.mark.django_db(transaction=True)

LIMITS = {"PROXMOX_NODE_LIMIT_CREATE": "2", "PROXMOX_NODE_LIMIT_START": "2",
          "PROXMOX_SLOT_WAIT_SECONDS": "0.2"}


def test_a_burst_never_exceeds_the_per_node_limit_across_workers_and_a_flushall(
        stack, worker_env, owner, settings, tmp_path):
    for key, value in LIMITS.items():
        setattr(settings, key, type(getattr(settings, key))(value))
    stack.pve("POST", "/_sim/time-scale", json={"scale": 0.1})  # a create takes 0.4 s
    workers = [start_worker(worker_env(**LIMITS), tmp_path, name=f"w{i}",
                            concurrency=4) for i in range(2)]
    try:
        stack.pve("DELETE", "/_sim/task-peaks")
        servers = [server_create(owner=owner.user, data=game_body(f"burst{i:02d}")).instance
                   for i in range(16)]
        wait_until(lambda: ContainerInstance.objects.filter(status="running").count() >= 3,
                   timeout=60, what="the first servers")
        broker.flush()  # every message in flight is lost; the sweeper sends them again
        for inst in servers:
            wait_status(inst.id, "running", timeout=120, sweep=True)
    finally:
        for w in workers:
            w.stop()
    peaks = stack.pve("GET", "/_sim/task-peaks")
    creates = {k: v["peak"] for k, v in peaks.items() if k.endswith("/vzcreate")}
    starts = {k: v["peak"] for k, v in peaks.items() if k.endswith("/vzstart")}
    assert creates and max(creates.values()) <= 2, peaks
    assert max(starts.values(), default=0) <= 2, peaks
    assert max(creates.values()) == 2, peaks  # the limit was reached: there was contention
    waited = [op for op in Operation.objects.filter(kind="provision")
              if any("waiting for a free create place" in e["msg"] for e in op.log)]
    assert waited, "no provision ever waited for a place"
    for op in waited:
        # Once per wait, however many times it looked: no look's claim between two lines
        # saying the same wait (which would push the log's history out).
        msgs = [e["msg"] for e in op.log]
        assert not any(a == c and b.startswith("claimed by") and "waiting" in a
                       for a, b, c in zip(msgs, msgs[1:], msgs[2:])), msgs
        assert not any(a == b and "waiting" in a for a, b in zip(msgs, msgs[1:])), msgs
    assert all(op.state == "succeeded" and op.attempt <= 2 for op in waited), [
        (op.state, op.attempt) for op in waited]
    assert not NodeTaskSlot.objects.exclude(holder="").exists()  # every place given back


def test_a_place_given_back_wakes_the_operation_that_waited_longest(
        stack, worker_env, owner, settings, tmp_path):
    """With looks a minute apart, waiting operations still start as soon as a place is free:
    the place given back wakes one of them at once (in the order they came)."""
    limits = {"PROXMOX_NODE_LIMIT_CREATE": "1", "PROXMOX_SLOT_WAIT_SECONDS": "60"}
    for key, value in limits.items():
        setattr(settings, key, type(getattr(settings, key))(value))
    stack.pve("POST", "/_sim/time-scale", json={"scale": 0.1})  # a create takes 0.4 s
    worker = start_worker(worker_env(**limits), tmp_path, name="wake", concurrency=6)
    try:
        servers = [server_create(owner=owner.user, data=game_body(f"wake{i}")).instance
                   for i in range(6)]
        for inst in servers:
            wait_status(inst.id, "running", timeout=30)  # one look a minute: only wakes do it
    finally:
        worker.stop()
    ops = {op.instance_id: op for op in Operation.objects.filter(kind="provision")}
    waited = [op for op in ops.values()
              if any("waiting for a free create place" in e["msg"] for e in op.log)]
    assert len(waited) >= 2, "six creates over two nodes with one place each: some waited"
    assert all(op.waiting_for == "" and op.attempt == 1 for op in ops.values())
    peaks = stack.pve("GET", "/_sim/task-peaks")
    assert max(v["peak"] for k, v in peaks.items() if k.endswith("/vzcreate")) == 1, peaks
