"""Proxmox failing in the ways it really does: retried or failed readably, never duplicated."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from lifecycle.models import Allocation, ContainerInstance, Operation
from lifecycle.services.actions import server_request
from lifecycle.services.audit import Actor
from lifecycle.services.servers import server_create
from tests.support.platform import game_body
from tests.support.waiting import wait_until

from tests.support.stack import wait_operation, wait_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]


def _only_container_is_ours(stack, inst):
    containers = stack.containers()
    assert len(containers) == 1, containers
    assert f"zlh-{inst.id}" in containers[0]["tags"].split(";")
    assert containers[0]["vmid"] == inst.vmid


def test_a_500_on_create_is_retried(stack, worker, owner):
    stack.fault(method="POST", path=r"/nodes/pve\d/lxc$", status=500,
                body="unexpected error: got no worker upid - start worker failed", count=1)
    result = server_create(owner=owner.user, data=game_body("retry-500"))
    inst = wait_status(result.instance.id, "running")
    op = Operation.objects.get(pk=result.operation.id)
    assert op.attempt == 2
    assert any("retrying" in e["msg"] and "start worker failed" in e["msg"] for e in op.log)
    _only_container_is_ours(stack, inst)


def test_a_create_whose_answer_times_out_is_adopted_not_repeated(stack, worker_env, owner,
                                                                 tmp_path):
    """The create call stalls past the client's timeout but happens anyway: the retry finds
    our container (by its tag) and adopts it."""
    from tests.support.workers import start_worker

    proc = start_worker(worker_env(PROXMOX_TIMEOUT="1"), tmp_path, name="short-timeout")
    try:
        stack.fault(method="POST", path=r"/nodes/pve\d/lxc$", delay_s=2.5, count=1)
        result = server_create(owner=owner.user, data=game_body("timeout-once"))
        inst = wait_status(result.instance.id, "running", timeout=60)
    finally:
        proc.stop()
    op = Operation.objects.get(pk=result.operation.id)
    assert op.attempt == 2
    assert any("timed out" in e["msg"] for e in op.log)
    assert any("is ours" in e["msg"] for e in op.log)
    _only_container_is_ours(stack, inst)


def test_a_create_task_ending_in_task_error_fails_readably_and_can_be_retried(stack, worker,
                                                                             owner):
    stack.pve("POST", "/_sim/task-errors",
              json={"type": "vzcreate", "message": "lvcreate 'pve/vm-disk' failed: no space",
                    "count": 1})
    result = server_create(owner=owner.user, data=game_body("task-error"))
    inst = wait_status(result.instance.id, "failed")
    assert "no space" in inst.last_error["message"]
    op = Operation.objects.get(pk=result.operation.id)
    assert op.state == "failed" and "no space" in op.error["message"]
    assert op.active_slot is None
    assert stack.containers() == []  # PVE removed the half-made container
    wait_until(lambda: stack.discord_messages("warning"), timeout=30, what="the warning")
    [warning] = stack.discord_messages("warning")
    assert warning["embeds"][0]["title"] == "Provisioning task-error failed"
    assert "no space" in warning["embeds"][0]["description"]

    api = APIClient()
    resp = api.post(f"/api/v1/servers/{inst.id}/retry", **owner.headers)
    assert resp.status_code == 202, resp.content
    inst = wait_status(inst.id, "running")
    assert inst.last_error is None
    _only_container_is_ours(stack, inst)
    # The retry succeeded: the provisioning alert resolves (one green message).
    wait_until(lambda: len(stack.discord_messages("warning")) == 2, timeout=30,
               what="the resolved message")
    assert stack.discord_messages("warning")[1]["embeds"][0]["title"].startswith("Resolved: ")


def test_a_held_config_lock_is_waited_out(stack, worker, owner):
    result = server_create(owner=owner.user, data=game_body("locked"))
    inst = wait_status(result.instance.id, "running")
    stack.pve("POST", f"/_sim/lock/{inst.vmid}", json={"secs": None})
    op = server_request(instance_id=inst.id, kind="stop", actor=Actor.system("test"))
    wait_until(lambda: Operation.objects.filter(pk=op.id, attempt__gte=2).exists(), timeout=30,
               what="the stop to be retried")
    stack.pve("DELETE", f"/_sim/lock/{inst.vmid}")
    op = wait_operation(op.id, timeout=60)
    assert any("got timeout" in e["msg"] or "locked" in e["msg"] for e in op.log), op.log
    assert ContainerInstance.objects.get(pk=inst.id).status == "stopped"
    assert stack.containers()[0]["status"] == "stopped"


def test_an_offline_node_is_retried_until_it_returns(stack, worker, owner):
    result = server_create(owner=owner.user, data=game_body("offline"))
    node = ContainerInstance.objects.get(pk=result.instance.id).node.name
    stack.pve("POST", f"/_sim/nodes/{node}/offline", json={"offline": True})
    wait_until(lambda: Operation.objects.filter(pk=result.operation.id, attempt__gte=2).exists(),
               timeout=30, what="a retry while the node is offline")
    stack.pve("POST", f"/_sim/nodes/{node}/offline", json={"offline": False})
    inst = wait_status(result.instance.id, "running", timeout=60, sweep=True)
    _only_container_is_ours(stack, inst)


def test_a_foreign_container_on_our_vmid_is_left_alone_and_another_vmid_used(stack, worker,
                                                                            owner):
    # Someone created a container on VMID 5000 by hand, outside the control plane.
    resp = stack.pve_api("POST", "/nodes/pve1/lxc", data={
        "vmid": 5000, "ostemplate": stack.endpoints["proxmox"]["ostemplate"],
        "hostname": "handmade", "rootfs": "local-lvm:4", "tags": "someone-else"})
    assert resp.status_code == 200, resp.text
    result = server_create(owner=owner.user, data=game_body("conflicted"))
    assert result.instance.vmid == 5000
    inst = wait_status(result.instance.id, "running")
    assert inst.vmid == 5001
    assert Allocation.objects.get(pool__kind="vmid", value=5000).state == "conflicted"
    by_vmid = {c["vmid"]: c for c in stack.containers()}
    assert by_vmid[5000]["tags"] == "someone-else" and by_vmid[5000]["hostname"] == "handmade"
    assert f"zlh-{inst.id}" in by_vmid[5001]["tags"]


def test_an_agent_that_cannot_install_fails_the_server_with_its_reason(stack, worker, owner):
    stack.agents("POST", "/_sim/agents/install-error",
                 json={"message": "mod download failed: HTTP 503 from the mirror"})
    result = server_create(owner=owner.user, data=game_body("bad-install"))
    inst = wait_status(result.instance.id, "failed")
    assert "mod download failed" in inst.last_error["message"]
    resp = APIClient().get(f"/api/v1/servers/{inst.id}/status", **owner.headers).json()
    assert resp["status"] == "failed" and "mod download failed" in resp["last_error"]["message"]


def test_a_bug_in_our_own_code_ends_errored_not_failed(stack, worker, owner):
    """`failed` is the outside world failing (above); `errored` is our code raising something
    nobody classified. Both retry, both settle the server readably, and they stay apart."""
    from lifecycle.models import Node

    result = server_create(owner=owner.user, data=game_body("buggy"))
    # A node row that passed no validation: building the container's net0 raises ValueError.
    Node.objects.filter(pk=result.instance.node_id).update(subnet="not-a-network")
    op = wait_operation(result.operation.id, states=("errored", "failed", "succeeded"),
                        timeout=90)
    assert op.state == "errored", (op.state, op.error)
    assert op.error["kind"] == "internal" and "ValueError" in op.error["message"]
    assert op.attempt > 1  # retried before giving up, like any other failure
    assert op.active_slot is None
    inst = ContainerInstance.objects.get(pk=result.instance.id)
    assert inst.status == "failed" and inst.last_error["kind"] == "internal"
    assert stack.containers() == []
