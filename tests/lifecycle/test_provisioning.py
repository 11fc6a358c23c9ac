"""Provisioning end to end and under duplicate delivery, killed workers and a wiped Redis."""
from __future__ import annotations

from collections import Counter

import pytest
from rest_framework.test import APIClient

from lifecycle.models import ContainerInstance, Operation
from lifecycle.services.operations import operation_enqueue
from lifecycle.services.servers import server_create
from tests.support import broker
from tests.support.platform import game_body
from tests.support.waiting import wait_until
from tests.support.workers import start_worker

from tests.support.stack import FORWARDING_SECRET, wait_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]


def _ours(stack, inst):
    return [c for c in stack.containers() if f"zlh-{inst.id}" in c["tags"].split(";")]


def test_fabric_server_is_seeded_before_its_first_boot(stack, worker, owner):
    api = APIClient()
    resp = api.post("/api/v1/servers", game_body("fab-one", variant="fabric", version="1.21.1",
                                                 plan="modded"),
                    format="json", **owner.headers, HTTP_IDEMPOTENCY_KEY="fab-1")
    assert resp.status_code == 202
    sid = resp.json()["id"]
    inst = wait_status(sid, "running")

    [ct] = _ours(stack, inst)
    assert (ct["vmid"], ct["node"], ct["status"]) == (inst.vmid, inst.node.name, "running")
    assert f"ip={inst.ip}/" in ct["net0"] and ct["memory"] == inst.memory_mb
    agent = stack.agent(inst.vmid)
    seeded = agent["seeded"]
    assert {"fabric-api", "FabricProxy-Lite"} <= set(seeded["mods"])
    toml = seeded["files"]["config/FabricProxy-Lite.toml"]
    assert f'secret = "{FORWARDING_SECRET}"' in toml
    assert seeded["serverProperties"]["online-mode"] == "false"
    assert agent["seededAt"] <= agent["firstBootAt"], "installed after the game first booted"
    assert agent["boots"] == 1

    op = Operation.objects.get(instance_id=sid)
    assert (op.state, op.attempt, op.active_slot) == ("succeeded", 1, None)
    assert [e["msg"] for e in op.log][-1] == "succeeded"
    assert not any(FORWARDING_SECRET in e["msg"] for e in op.log)
    status = api.get(f"/api/v1/servers/{sid}/status", **owner.headers).json()
    assert status["status"] == "running" and status["operation"]["state"] == "succeeded"
    # The lifecycle channel heard about it, written with the event (the outbox).
    wait_until(lambda: stack.discord_messages("lifecycle"), timeout=30, what="the announcement")
    [message] = stack.discord_messages("lifecycle")
    assert message["embeds"][0]["title"] == "fab-one is running"
    assert message["allowed_mentions"] == {"parse": []}


def test_dev_container_gets_its_runtime(stack, worker, owner):
    inst = server_create(owner=owner.user, data={
        "name": "ide-one", "kind": "dev", "plan": "modded", "runtime": "node",
        "runtime_version": "22", "enable_code_server": True}).instance
    inst = wait_status(inst.id, "running")
    seeded = stack.agent(inst.vmid)["seeded"]
    assert (seeded["kind"], seeded["runtime"], seeded["runtimeVersion"], seeded["codeServer"]) == (
        "dev", "node", "22", True)


def test_one_provision_delivered_three_times_at_once_runs_once(stack, worker_env, owner,
                                                               tmp_path):
    stack.reset(time_scale=0.05)  # create and install take long enough to overlap
    result = server_create(owner=owner.user, data=game_body("triple"))
    op_id = str(result.operation.id)
    for _ in range(2):  # two more copies of the same message: three deliveries in all
        operation_enqueue(operation_id=op_id)
    assert broker.queued_task_ids("lifecycle").count(op_id) == 3
    proc = start_worker(worker_env(), tmp_path, name="triple", concurrency=3)
    try:
        wait_status(result.instance.id, "running", timeout=60)
        wait_until(lambda: proc.log().count("not claimable") >= 2, timeout=20,
                   what="the two extra deliveries to exit")
    finally:
        proc.stop()
    assert len(_ours(stack, result.instance)) == 1
    assert len(stack.containers()) == 1
    op = Operation.objects.get(pk=op_id)
    assert (op.state, op.attempt) == ("succeeded", 1)
    assert stack.agent(result.instance.vmid)["boots"] == 1


def test_worker_killed_mid_provisioning_another_finishes(stack, worker_env, owner, tmp_path):
    stack.reset(time_scale=0.3)  # install 6 s x 0.3 = 1.8 s: time to kill the worker
    result = server_create(owner=owner.user, data=game_body("killed"))
    op_id = result.operation.id
    first = start_worker(worker_env(), tmp_path, name="first", concurrency=1)
    try:
        wait_until(lambda: Operation.objects.filter(pk=op_id, step="payload").exists(),
                   timeout=30, what="provisioning to reach the payload step")
        first.kill()
    finally:
        first.stop()
    op = Operation.objects.get(pk=op_id)
    assert op.state == "running" and op.worker  # the dead worker still holds it
    second = start_worker(worker_env(), tmp_path, name="second", concurrency=1)
    try:
        # The beat's sweeper (played here) re-sends it once the lease has expired.
        inst = wait_status(result.instance.id, "running", timeout=60, sweep=True)
    finally:
        second.stop()
    op.refresh_from_db()
    assert op.state == "succeeded" and op.attempt == 2
    assert any("claimed by" in e["msg"] and "after step payload" in e["msg"] for e in op.log)
    assert len(_ours(stack, inst)) == 1 and len(stack.containers()) == 1
    agent = stack.agent(inst.vmid)
    assert agent["boots"] == 1 and agent["seededAt"] <= agent["firstBootAt"]


def test_flushall_while_20_servers_provision(stack, worker_env, owner, tmp_path):
    stack.reset(time_scale=0.05)
    proc = start_worker(worker_env(), tmp_path, name="flush", concurrency=4)
    try:
        ids = [server_create(owner=owner.user, data=game_body(f"flush-{i}")).instance.id
               for i in range(20)]
        wait_until(lambda: ContainerInstance.objects.filter(status="running").count() >= 2,
                   timeout=60, what="the first servers to run")
        assert ContainerInstance.objects.exclude(status="running").count() > 0
        broker.client().flushall()
        for sid in ids:
            wait_status(sid, "running", timeout=120, sweep=True)
    finally:
        proc.stop()
    containers = stack.containers()
    assert len(containers) == 20
    assert Counter(c["vmid"] for c in containers).most_common(1)[0][1] == 1
    for inst in ContainerInstance.objects.all():
        assert len(_ours(stack, inst)) == 1
    assert set(Operation.objects.values_list("state", flat=True)) == {"succeeded"}
    assert max(a["boots"] for a in stack.agents("GET", "/_sim/agents").values()) == 1
