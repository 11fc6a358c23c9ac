"""Moving a server to another plan: the accounting under the create's locks, the container's
memory, cores and disk through Proxmox (the devstack's fakepve: hotplug while running, a
restart where the game must take the new memory), bad input refused, failures retried."""
from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections, connection
from django.db.models import Sum
from rest_framework.test import APIClient

from lifecycle.models import ContainerInstance, Node, Operation
from lifecycle.services.accounts import quota_set
from lifecycle.services.actions import server_request
from lifecycle.services.audit import Actor
from lifecycle.services.resizes import server_resize_request
from lifecycle.services.servers import server_create
from lifecycle.worker.flows.resize import rootfs_gb
from tests.support.platform import game_body, make_user
from tests.support.stack import wait_status
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]

DEV = {"name": "big-ide", "kind": "dev", "plan": "modded", "runtime": "python",
       "runtime_version": "3.12"}


def resize(api, owner, server, plan):
    return api.post(f"/api/v1/servers/{server.id}/resize", {"plan": plan}, format="json",
                    **owner.headers)


def op_done(op_id, timeout=60):
    wait_until(lambda: Operation.objects.get(pk=op_id).state in ("succeeded", "failed",
                                                                   "errored"),
               timeout=timeout, what=f"operation {op_id} to end")
    return Operation.objects.get(pk=op_id)


def ct(stack, inst):
    return next(c for c in stack.containers() if c["vmid"] == inst.vmid)


def node_consistent():
    """The node's reserved memory is the memory of the servers on it (what `doctor` checks)."""
    for node in Node.objects.all():
        held = ContainerInstance.objects.filter(node=node).aggregate(m=Sum("memory_mb"))["m"]
        assert node.allocated_memory_mb == (held or 0), node.name


def test_a_running_game_server_moves_up_and_its_game_takes_the_new_memory(stack, worker,
                                                                           owner):
    api = APIClient()
    inst = wait_status(server_create(owner=owner.user, data=game_body("grow")).instance.id,
                       "running")
    node_before = Node.objects.get(pk=inst.node_id).allocated_memory_mb
    resp = resize(api, owner, inst, "modded")
    assert resp.status_code == 202, resp.content
    assert resp.json()["kind"] == "resize"
    row = ContainerInstance.objects.get(pk=inst.pk)  # the sizes move at once
    assert (row.plan, row.memory_mb, row.cores, row.disk_gb) == ("modded", 4096, 2, 16)
    assert Node.objects.get(pk=inst.node_id).allocated_memory_mb == node_before + 2048
    op = op_done(resp.json()["id"])
    assert op.state == "succeeded", op.log
    container = ct(stack, inst)
    assert container["memory"] == 4096 and container["status"] == "running"
    assert rootfs_gb(stack.pve_api("GET", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/config")
                     .json()["data"]["rootfs"]) == 16
    agent = stack.agent(inst.vmid)
    assert agent["payload"]["memoryMb"] == 4096 and agent["state"] == "running"
    assert agent["boots"] > 1 and agent["uncleanStops"] == 0  # restarted, gracefully
    row.refresh_from_db()
    assert row.status == "running" and not row.reconfigure_at_start
    assert any("restart" in e["msg"] or "stopped" in e["msg"] for e in op.log)
    node_consistent()


def test_a_stopped_dev_container_grows_without_starting(stack, worker, owner):
    inst = wait_status(server_create(owner=owner.user, data=DEV).instance.id, "running")
    stop = server_request(instance_id=inst.id, kind="stop", actor=Actor.system("test"))
    op_done(stop.id)
    op = op_done(server_resize_request(instance_id=inst.id, plan="heavy",
                                       actor=Actor.system("test")).id)
    assert op.state == "succeeded", op.log
    container = ct(stack, inst)
    assert (container["memory"], container["status"]) == (8192, "stopped")
    config = stack.pve_api("GET", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/config").json()
    assert config["data"]["cores"] == 4 and rootfs_gb(config["data"]["rootfs"]) == 32
    assert ContainerInstance.objects.get(pk=inst.pk).status == "stopped"
    node_consistent()


def test_a_stopped_game_server_takes_the_new_memory_at_its_next_start(stack, worker, owner):
    inst = wait_status(server_create(owner=owner.user, data=game_body("later")).instance.id,
                       "running")
    op_done(server_request(instance_id=inst.id, kind="stop", actor=Actor.system("t")).id)
    op = op_done(server_resize_request(instance_id=inst.id, plan="modded",
                                       actor=Actor.system("t")).id)
    assert op.state == "succeeded", op.log
    assert ContainerInstance.objects.get(pk=inst.pk).reconfigure_at_start
    assert stack.agent(inst.vmid)["payload"]["memoryMb"] == 2048  # not yet
    op_done(server_request(instance_id=inst.id, kind="start", actor=Actor.system("t")).id)
    assert stack.agent(inst.vmid)["payload"]["memoryMb"] == 4096
    assert not ContainerInstance.objects.get(pk=inst.pk).reconfigure_at_start


def test_bad_plans_are_refused_saying_what_to_do_and_change_nothing(stack, owner):
    api = APIClient()
    game = server_create(owner=owner.user, data=game_body("fixed", plan="heavy")).instance
    dev = server_create(owner=owner.user, data=DEV).instance
    ContainerInstance.objects.filter(pk__in=[game.pk, dev.pk]).update(status="running")
    Operation.objects.update(state="succeeded", active_slot=None)
    cases = [
        (game, "vanilla", 400, "A disk only grows"),
        (dev, "vanilla", 400, "too small for a dev container"),
        (game, "heavy", 400, "already"),
        (game, "mega", 400, "Unknown plan"),
    ]
    for server, plan, status, text in cases:
        resp = resize(api, owner, server, plan)
        assert resp.status_code == status, (plan, resp.content)
        assert text in resp.json()["fields"]["plan"][0], resp.json()
    assert api.post(f"/api/v1/servers/{game.id}/resize", {"plan": "heavy", "extra": 1},
                    format="json", **owner.headers).status_code == 400
    stranger = make_user("other")
    assert resize(api, stranger, dev, "heavy").status_code == 404
    ContainerInstance.objects.filter(pk=dev.pk).update(status="provisioning")
    resp = resize(api, owner, dev, "heavy")
    assert resp.status_code == 409 and "running or stopped" in resp.json()["message"]
    assert not Operation.objects.filter(kind="resize").exists()
    assert ContainerInstance.objects.get(pk=game.pk).plan == "heavy"


def test_quota_and_node_room_are_checked_and_nothing_moves_when_refused(stack, owner):
    api = APIClient()
    inst = server_create(owner=owner.user, data=game_body("capped")).instance
    ContainerInstance.objects.filter(pk=inst.pk).update(status="running")
    Operation.objects.update(state="succeeded", active_slot=None)
    quota_set(user=owner.user, max_memory_mb=3000, actor=Actor.system("t"))
    resp = resize(api, owner, inst, "modded")
    assert resp.status_code == 409 and resp.json()["code"] == "quota_exceeded"
    quota_set(user=owner.user, max_memory_mb=100_000, actor=Actor.system("t"))
    node = Node.objects.get(pk=inst.node_id)
    Node.objects.filter(pk=node.pk).update(memory_mb=node.allocated_memory_mb + 1000)
    resp = resize(api, owner, inst, "modded")
    assert resp.status_code == 503 and resp.json()["code"] == "capacity_exhausted"
    row = ContainerInstance.objects.get(pk=inst.pk)
    assert (row.plan, row.memory_mb) == ("vanilla", 2048)
    assert Node.objects.get(pk=node.pk).allocated_memory_mb == node.allocated_memory_mb
    assert not Operation.objects.filter(kind="resize").exists()


def test_parallel_resizes_never_overshoot_the_node(stack, owner):
    """Eight servers of eight accounts (no shared quota row to queue them) on one node with
    room for exactly three upgrades, all asked at once from eight threads (eight connections):
    three go through, five are refused, and the node's reservation is the sum of its servers'
    memory."""
    servers = [server_create(owner=make_user(f"racer{i}").user,
                             data=game_body(f"race{i}")).instance for i in range(8)]
    node_id = servers[0].node_id
    ContainerInstance.objects.filter(pk__in=[s.pk for s in servers]).update(
        status="running", node_id=node_id)
    Operation.objects.update(state="succeeded", active_slot=None)
    for node in Node.objects.all():  # every server on the first node, as the rows now say
        held = ContainerInstance.objects.filter(node=node).aggregate(m=Sum("memory_mb"))["m"]
        Node.objects.filter(pk=node.pk).update(allocated_memory_mb=held or 0)
    node = Node.objects.get(pk=node_id)
    Node.objects.filter(pk=node_id).update(memory_mb=node.allocated_memory_mb + 3 * 2048)
    outcomes: list[str] = []
    barrier = threading.Barrier(len(servers))

    def one(server):
        try:
            barrier.wait(timeout=10)
            server_resize_request(instance_id=server.id, plan="modded",
                                  actor=Actor.system("race"))
            outcomes.append("accepted")
        except Exception as exc:  # noqa: BLE001 - the refusal is what is counted
            outcomes.append(getattr(exc, "code", type(exc).__name__))
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=one, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["accepted"] * 3 + ["capacity_exhausted"] * 5, outcomes
    node_consistent()
    assert Node.objects.get(pk=node_id).allocated_memory_mb == Node.objects.get(
        pk=node_id).memory_mb


def test_a_failed_resize_can_be_asked_for_again_and_then_succeeds(stack, worker, owner):
    inst = wait_status(server_create(owner=owner.user, data=DEV).instance.id, "running")
    stack.fault(method="PUT", path=rf"/nodes/pve\d/lxc/{inst.vmid}/resize", status=400,
                body="parameter verification failed", count=100)
    op = op_done(server_resize_request(instance_id=inst.id, plan="heavy",
                                       actor=Actor.system("t")).id)
    assert op.state == "failed"
    row = ContainerInstance.objects.get(pk=inst.pk)
    assert row.plan == "heavy" and row.last_error and row.status == "running"
    stack.pve("DELETE", "/_sim/faults")
    again = op_done(server_resize_request(instance_id=inst.id, plan="heavy",
                                          actor=Actor.system("t")).id)
    assert again.state == "succeeded", again.log
    config = stack.pve_api("GET", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/config").json()
    assert rootfs_gb(config["data"]["rootfs"]) == 32 and config["data"]["memory"] == 8192
    with pytest.raises(Exception, match="already"):  # succeeded: the same plan is refused now
        server_resize_request(instance_id=inst.id, plan="heavy", actor=Actor.system("t"))


def test_a_running_dev_container_changes_online_without_a_restart(stack, worker, owner):
    inst = wait_status(server_create(owner=owner.user, data=DEV).instance.id, "running")
    boots = stack.agent(inst.vmid)["boots"]
    op = op_done(server_resize_request(instance_id=inst.id, plan="heavy",
                                       actor=Actor.system("t")).id)
    assert op.state == "succeeded", op.log
    container = ct(stack, inst)
    assert (container["memory"], container["status"]) == (8192, "running")
    assert stack.agent(inst.vmid)["boots"] == boots  # hotplugged: nothing restarted
    assert not any("restart" in e["msg"] for e in op.log)
    assert not ContainerInstance.objects.get(pk=inst.pk).reconfigure_at_start


def test_a_resize_cut_off_mid_restart_goes_on_from_its_checkpoint(stack, worker, owner):
    """The start after the resize's stop fails once (a retryable Proxmox 500): the next attempt
    does not resize or stop again, it starts, reconfigures the game and publishes it."""
    inst = wait_status(server_create(owner=owner.user, data=game_body("cutoff")).instance.id,
                       "running")
    stack.fault(method="POST", path=rf"/nodes/pve\d/lxc/{inst.vmid}/status/start",
                status=500, body="got timeout", count=1)
    op = op_done(server_resize_request(instance_id=inst.id, plan="modded",
                                       actor=Actor.system("t")).id, timeout=90)
    assert op.state == "succeeded" and op.attempt == 2, op.log
    msgs = [e["msg"] for e in op.log]
    assert sum(m.startswith("set memory") for m in msgs) == 1, msgs  # applied once
    assert stack.agent(inst.vmid)["payload"]["memoryMb"] == 4096
    row = ContainerInstance.objects.get(pk=inst.pk)
    assert row.status == "running" and not row.reconfigure_at_start
    registered = {s["name"] for s in stack.velocity_servers()}
    assert "cutoff" in registered
