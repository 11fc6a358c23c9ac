"""Creates racing in many OS processes against real MariaDB and the real Redis broker.

Each test tries hard to produce a duplicate: separate processes (and threads inside them, each
with its own database connection) released at the same instant by a barrier.
"""
from __future__ import annotations

from collections import Counter

import pytest

from lifecycle.choices import AllocationState, OperationState, PoolKind
from lifecycle.models import Allocation, ContainerInstance, Node, Operation
from tests.support import broker
from tests.support.platform import game_body, make_user, seed_platform
from tests.support.procs import run_parallel

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]

CREATE = "tests.support.workloads.create_servers"


def _flatten(results):
    return [r for chunk in results for r in chunk]


def _assert_allocations_unique_and_consistent():
    instances = list(ContainerInstance.objects.values("id", "vmid", "ip", "node_id", "ports"))
    vmids = Counter(i["vmid"] for i in instances)
    ips = Counter(i["ip"] for i in instances)
    ports = Counter((i["node_id"], p) for i in instances for p in i["ports"].values())
    assert max(vmids.values(), default=1) == 1, [v for v, n in vmids.items() if n > 1]
    assert max(ips.values(), default=1) == 1, [v for v, n in ips.items() if n > 1]
    assert max(ports.values(), default=1) == 1, [v for v, n in ports.items() if n > 1]
    # The pool rows agree with the instances: one claimed row per (instance, role).
    claimed = Allocation.objects.filter(state=AllocationState.CLAIMED)
    assert claimed.count() == 3 * len(instances)
    by_instance = Counter(claimed.values_list("instance_id", flat=True))
    assert set(by_instance.values()) <= {3}
    for row in claimed.select_related("pool", "instance").iterator():
        inst = row.instance
        if row.pool.kind == PoolKind.VMID:
            assert row.value == inst.vmid
        elif row.pool.kind == PoolKind.IP:
            assert row.display == inst.ip and row.pool.node_id == inst.node_id
        else:
            assert inst.ports[row.role] == row.value and row.pool.node_id == inst.node_id
    # Node memory bookkeeping equals what the servers on it use.
    for node in Node.objects.all():
        used = sum(i.memory_mb for i in ContainerInstance.objects.filter(node=node))
        assert node.allocated_memory_mb == used


def test_16_processes_x_50_creates_hand_out_every_value_once():
    seed_platform()
    users = [make_user(f"user{i}") for i in range(4)]
    args = [
        {"token": users[p % 4].token, "threads": 1, "requests": [
            {"body": game_body(f"p{p}-s{i}"), "key": f"p{p}-k{i}"} for i in range(50)]}
        for p in range(16)
    ]
    results = _flatten(run_parallel(CREATE, args, timeout=400))

    assert Counter(r["status"] for r in results) == {202: 800}
    assert len({r["id"] for r in results}) == 800
    assert ContainerInstance.objects.count() == 800
    assert Operation.objects.filter(state=OperationState.QUEUED).count() == 800
    _assert_allocations_unique_and_consistent()
    # One message per operation, carrying the operation id as the task id.
    task_ids = broker.queued_task_ids("lifecycle")
    assert sorted(task_ids) == sorted(str(r["operation"]) for r in results)


def test_32_concurrent_identical_requests_make_one_server():
    seed_platform()
    alice = make_user("alice")
    same = {"body": game_body("only-one"), "key": "one-key"}
    args = [{"token": alice.token, "threads": 4, "requests": [same] * 4} for _ in range(8)]
    results = _flatten(run_parallel(CREATE, args))

    assert [r["status"] for r in results] == [202] * 32
    assert len({r["id"] for r in results}) == 1
    assert len({r["operation"] for r in results}) == 1
    assert sum(not r["replayed"] for r in results) == 1
    assert ContainerInstance.objects.count() == 1
    assert Operation.objects.count() == 1
    assert broker.queued_task_ids("lifecycle") == [str(results[0]["operation"])]
    _assert_allocations_unique_and_consistent()

    # The same key with another body, afterwards: 422 and nothing new.
    other = [{"token": alice.token, "requests": [
        {"body": game_body("only-one", plan="heavy"), "key": "one-key"}]}]
    assert run_parallel(CREATE, other)[0][0]["code"] == "idempotency_key_reused"
    assert run_parallel(CREATE, other)[0][0]["status"] == 422
    assert ContainerInstance.objects.count() == 1


def test_one_key_two_bodies_racing_one_wins_the_other_is_422():
    seed_platform()
    alice = make_user("alice")
    a = {"body": game_body("race-a"), "key": "k"}
    b = {"body": game_body("race-b"), "key": "k"}
    args = [{"token": alice.token, "threads": 4, "requests": [a, b, a, b]} for _ in range(4)]
    results = _flatten(run_parallel(CREATE, args))

    assert ContainerInstance.objects.count() == 1
    winner = ContainerInstance.objects.get().name
    for r, req in zip(results, [a, b, a, b] * 4):
        if req["body"]["name"] == winner:
            assert r["status"] == 202
        else:
            assert (r["status"], r["code"]) == (422, "idempotency_key_reused")
    assert len(broker.queued_task_ids("lifecycle")) == 1


def test_quota_of_5_with_20_concurrent_creates_accepts_exactly_5():
    seed_platform()
    alice = make_user("alice", max_servers=5)
    args = [
        {"token": alice.token, "threads": 5, "requests": [
            {"body": game_body(f"q{p}-{i}"), "key": f"q{p}-{i}"} for i in range(5)]}
        for p in range(4)
    ]
    results = _flatten(run_parallel(CREATE, args))

    statuses = Counter((r["status"], r["code"]) for r in results)
    assert statuses == {(202, None): 5, (409, "quota_exceeded"): 15}
    assert ContainerInstance.objects.count() == 5
    assert Operation.objects.count() == 5
    assert Allocation.objects.filter(state=AllocationState.CLAIMED).count() == 15
    assert sum(Node.objects.values_list("allocated_memory_mb", flat=True)) == 5 * 2048
    assert len(broker.queued_task_ids("lifecycle")) == 5
    _assert_allocations_unique_and_consistent()


def test_one_name_claimed_by_8_accounts_at_once_goes_to_exactly_one():
    seed_platform()
    users = [make_user(f"racer{i}") for i in range(8)]
    args = [{"token": u.token, "threads": 2, "requests": [
        {"body": game_body("contested"), "key": f"{u.user.username}-{i}"} for i in range(2)]}
        for u in users]
    results = _flatten(run_parallel(CREATE, args))

    assert Counter((r["status"], r["code"]) for r in results) == {
        (202, None): 1, (409, "name_taken"): 15}
    assert ContainerInstance.objects.count() == 1
    assert Allocation.objects.filter(state=AllocationState.CLAIMED).count() == 3
    _assert_allocations_unique_and_consistent()
