"""The fleet moves under us (issue 13, item 4), on the real stack: fakepve with two nodes,
real Celery workers, MariaDB, Redis and the edge stand-ins over HTTP.

- A container migrated to another node (an operator's `pct migrate`, Proxmox HA) is not gone:
  stop, start, a provision retry and purge follow it to its node, record the move once (audit
  event, one warning) and act there; the reconciler records the move instead of calling the
  server missing.
- Nothing of a server (VMID, IP, port) is released while a container carrying its tag exists
  anywhere in the cluster, nor while Proxmox cannot be asked.
- Every Velocity registration we own is observed: one of a stopped or deleted server is found
  and removed; one that is not ours (the operator's lobby) never is, even with level 2 on; an
  edge repair holds the server's row while it acts, so a stop requested meanwhile is not undone.
"""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from lifecycle.choices import OperationKind
from lifecycle.models import Allocation, AuditEvent, ContainerInstance, Node, Operation
from lifecycle.services.actions import server_request
from lifecycle.services.audit import Actor
from lifecycle.services.edge import edge_target_for
from lifecycle.worker.sweeper import quarantine_release, server_purge_due
from notifications.models import Notification
from reconciler.models import Finding, RepairEvent
from reconciler.services import run_cycle
from tests.reconciler.helpers import cycles, running, settle
from tests.support.stack import wait_operation, wait_status
from tests.support.waiting import wait_until
from tests.support.workers import start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]

SHORT_WINDOW = {"OPERATION_RETRY_WINDOW_SECONDS": "4", "OPERATION_MAX_ATTEMPTS": "1000",
                "OPERATION_RETRY_BASE_SECONDS": "0.2", "OPERATION_RETRY_MAX_SECONDS": "0.5"}


@pytest.fixture
def short_worker(worker_env, tmp_path):
    proc = start_worker(worker_env(**SHORT_WINDOW), tmp_path, name="short")
    yield proc
    proc.stop()


def _request(inst, kind, **params):
    return server_request(instance_id=inst.id, kind=kind, actor=Actor.system("test"),
                          params=params or None)


def _other_node(inst) -> str:
    return next(n for n in Node.objects.values_list("name", flat=True) if n != inst.node.name)


def _container(stack, vmid):
    return next((c for c in stack.containers() if c["vmid"] == vmid), None)


def migrate(stack, inst, target: str) -> None:
    """PVE's own migration, as an operator's `pct migrate` (restart mode when running)."""
    ct = _container(stack, inst.vmid)
    data = {"target": target}
    if ct["status"] == "running":
        data["restart"] = 1
    resp = stack.pve_api("POST", f"/nodes/{ct['node']}/lxc/{inst.vmid}/migrate", data=data)
    assert resp.status_code == 200, resp.text
    wait_until(lambda: (c := _container(stack, inst.vmid)) and c["node"] == target
               and not c["lock"] and c["status"] == ct["status"],
               timeout=30, what=f"CT {inst.vmid} to arrive on {target}")


def _move_warnings(inst) -> list[Notification]:
    return list(Notification.objects.filter(channel="warning", kind="firing",
                                            alert_key__startswith=f"container-moved:{inst.id}"))


def _moves(inst) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(instance_id=inst.id, action="node:moved"))


# --- the lifecycle worker follows the container ------------------------------------------------
def test_a_stop_follows_a_migrated_container_and_stops_it_where_it_is(stack, worker, owner):
    inst = running(owner, "wanderer")
    home, other = inst.node.name, _other_node(inst)
    mem = dict(Node.objects.values_list("name", "allocated_memory_mb"))
    migrate(stack, inst, other)

    wait_operation(_request(inst, OperationKind.STOP).id, timeout=60)

    # Before: "CT does not exist; nothing to stop", the server `stopped`, the container running.
    ct = _container(stack, inst.vmid)
    assert (ct["node"], ct["status"]) == (other, "stopped")
    inst = ContainerInstance.objects.select_related("node").get(pk=inst.id)
    assert inst.status == "stopped" and inst.node.name == other
    [move] = _moves(inst)
    assert move.data["from"] == home and move.data["to"] == other
    # The memory is counted where the container is now.
    now = dict(Node.objects.values_list("name", "allocated_memory_mb"))
    assert now[home] == mem[home] - inst.memory_mb and now[other] == mem[other] + inst.memory_mb
    # The next operation finds it where the row says: no second move, no second warning.
    wait_operation(_request(inst, OperationKind.START).id, timeout=60)
    assert _container(stack, inst.vmid)["status"] == "running"
    assert len(_moves(inst)) == 1
    [warning] = _move_warnings(inst)
    assert other in warning.title


def test_a_container_ha_recovered_from_a_lost_node_is_followed(stack, worker, owner):
    """The old node does not answer at all (595): that proves nothing, but the cluster lists
    the container on the node HA recovered it to, and the stop goes there."""
    inst = running(owner, "survivor")
    home, other = inst.node.name, _other_node(inst)
    stack.pve("POST", f"/_sim/nodes/{home}/offline", json={"offline": True})
    try:
        moved = stack.pve("POST", f"/_sim/containers/{inst.vmid}/migrate", json={"node": other})
        assert moved == {"vmid": inst.vmid, "from": home, "node": other, "status": "running"}

        wait_operation(_request(inst, OperationKind.STOP).id, timeout=60)

        ct = _container(stack, inst.vmid)
        assert (ct["node"], ct["status"]) == (other, "stopped")
        assert wait_status(inst.id, "stopped").node.name == other
        assert len(_moves(inst)) == 1 and len(_move_warnings(inst)) == 1
    finally:
        stack.pve("POST", f"/_sim/nodes/{home}/offline", json={"offline": False})


def test_a_start_and_a_provision_retry_follow_a_migrated_container(stack, worker, owner):
    inst = running(owner, "drifter")
    other = _other_node(inst)
    wait_operation(_request(inst, OperationKind.STOP).id, timeout=60)
    migrate(stack, inst, other)

    # Before: "CT does not exist on pve1" and the start failed.
    wait_operation(_request(inst, OperationKind.START).id, timeout=60)
    assert _container(stack, inst.vmid)["status"] == "running"
    assert wait_status(inst.id, "running").node.name == other

    # A provision that failed after its container was made, then the container moved back:
    # before, the retry stopped with "an operator must decide" (wrong_node).
    wait_operation(_request(inst, OperationKind.STOP).id, timeout=60)
    home = next(n for n in Node.objects.values_list("name", flat=True) if n != other)
    migrate(stack, inst, home)
    ContainerInstance.objects.filter(pk=inst.id).update(status="failed")
    wait_operation(_request(inst, OperationKind.PROVISION).id, timeout=90)
    inst = wait_status(inst.id, "running")
    assert inst.node.name == home
    assert [c["vmid"] for c in stack.containers()] == [inst.vmid]  # adopted, nothing new
    assert len(_moves(inst)) == 2 and len(_move_warnings(inst)) == 2


def test_a_purge_destroys_a_migrated_container_where_it_is(stack, worker, owner):
    inst = running(owner, "nomad")
    other = _other_node(inst)
    total = sum(Node.objects.values_list("allocated_memory_mb", flat=True))
    wait_operation(_request(inst, OperationKind.DELETE).id, timeout=60)
    migrate(stack, inst, other)

    wait_operation(_request(inst, OperationKind.PURGE).id, timeout=60)

    # Before: "nothing to destroy", the server purged and its container left running… there.
    assert wait_status(inst.id, "purged")
    assert stack.containers() == []
    assert set(Allocation.objects.filter(instance=inst).values_list("state", flat=True)) == {
        "quarantined"}
    assert sum(Node.objects.values_list("allocated_memory_mb", flat=True)) == (
        total - inst.memory_mb)
    assert Node.objects.get(name=other).allocated_memory_mb == 0


# --- nothing released while a container of the server exists ----------------------------------
def test_a_purge_releases_nothing_while_a_container_carrying_the_tag_exists(
        stack, short_worker, owner):
    inst = running(owner, "twin")
    wait_operation(_request(inst, OperationKind.DELETE).id, timeout=60)
    claimed = set(Allocation.objects.filter(instance=inst, state="claimed")
                  .values_list("id", flat=True))
    # A copy carrying the server's tag on the other node under another VMID (a restored
    # backup, a clone): its IP is the server's.
    stack.pve("POST", "/_sim/containers", json=[{
        "vmid": 6500, "node": _other_node(inst), "status": "running",
        "tags": f"zlh;zlh-{inst.id}", "hostname": inst.slug}])

    op = wait_operation(_request(inst, OperationKind.PURGE).id, states=("failed",), timeout=60)

    assert "CT 6500" in op.error["message"] and "still carries the tag" in op.error["message"]
    assert ContainerInstance.objects.get(pk=inst.id).status == "purging"
    assert set(Allocation.objects.filter(instance=inst, state="claimed")
               .values_list("id", flat=True)) == claimed
    assert Notification.objects.filter(channel="warning", kind="firing",
                                       alert_key=f"operation-failed:{inst.id}:purge").exists()
    # Once the copy is gone, the purge taken up again finishes.
    stack.pve_api("POST", f"/nodes/{_other_node(inst)}/lxc/6500/status/stop")
    wait_until(lambda: _container(stack, 6500)["status"] == "stopped", timeout=30)
    assert stack.pve_api("DELETE", f"/nodes/{_other_node(inst)}/lxc/6500").status_code == 200
    wait_until(lambda: _container(stack, 6500) is None, timeout=30)
    assert server_purge_due() == 1
    wait_status(inst.id, "purged", timeout=60)
    assert set(Allocation.objects.filter(id__in=claimed).values_list("state", flat=True)) == {
        "quarantined"}


def test_a_purge_releases_nothing_while_proxmox_cannot_list_the_cluster(
        stack, short_worker, owner):
    inst = running(owner, "blind")
    wait_operation(_request(inst, OperationKind.DELETE).id, timeout=60)
    stack.fault(method="GET", path=r"/cluster/resources", status=500, body="no quorum",
                count=10000)
    try:
        op = wait_operation(_request(inst, OperationKind.PURGE).id, states=("failed",),
                            timeout=60)
        assert op.error["retryable"] is True
        assert not Allocation.objects.filter(instance=inst).exclude(state="claimed").exists()
        assert ContainerInstance.objects.get(pk=inst.id).status == "purging"
    finally:
        stack.pve("DELETE", "/_sim/faults")


def test_quarantine_keeps_the_values_of_a_server_whose_container_still_runs(
        stack, worker, owner):
    """What a purge that destroyed nothing left behind: the values in quarantine, the
    container running on another node. Before, the IP and port were freed for the next
    server while it still ran."""
    inst = running(owner, "revenant")
    migrate(stack, inst, _other_node(inst))
    rows = Allocation.objects.filter(instance=inst)
    rows.update(state="quarantined", quarantine_until=timezone.now())

    assert quarantine_release()["freed"] == 0
    assert set(rows.values_list("state", flat=True)) == {"quarantined"}

    # The container goes; while Proxmox cannot be asked, still nothing is freed.
    ct = _container(stack, inst.vmid)
    stack.pve_api("POST", f"/nodes/{ct['node']}/lxc/{inst.vmid}/status/stop")
    wait_until(lambda: _container(stack, inst.vmid)["status"] == "stopped", timeout=30)
    stack.pve_api("DELETE", f"/nodes/{ct['node']}/lxc/{inst.vmid}")
    wait_until(lambda: _container(stack, inst.vmid) is None, timeout=30)
    stack.fault(method="GET", path=r"/cluster/resources", status=500, count=10000)
    try:
        assert quarantine_release() == {"freed": 0, "vmids_freed": 0, "held": 0}
        assert set(rows.values_list("state", flat=True)) == {"quarantined"}
    finally:
        stack.pve("DELETE", "/_sim/faults")
    result = quarantine_release()
    assert result["freed"] == 2 and result["vmids_freed"] == 1
    assert not Allocation.objects.filter(instance=inst).exists()


# --- the reconciler records a move ---------------------------------------------------------------
def _titles(stack, channel):
    return [m["embeds"][0]["title"] for m in stack.discord_messages(channel)]


def test_the_reconciler_records_a_move_once_and_repairs_where_the_container_is(
        stack, worker, owner):
    inst = running(owner, "roamer")
    other = _other_node(inst)
    migrate(stack, inst, other)
    # And it stopped there: wanted running, so the reconciler starts it — on `other`.
    stack.pve_api("POST", f"/nodes/{other}/lxc/{inst.vmid}/status/stop")
    wait_until(lambda: _container(stack, inst.vmid)["status"] == "stopped", timeout=30)

    cycles(3)

    finding = Finding.objects.get(finding_type="container_moved")
    assert finding.action == "record_move" and finding.level == 1
    assert finding.details["observed_node"] == other
    assert RepairEvent.objects.get(action="record_move").state == "succeeded"
    inst = ContainerInstance.objects.select_related("node").get(pk=inst.id)
    assert inst.node.name == other and inst.status == "running"
    assert RepairEvent.objects.get(action="start_container").state == "succeeded"
    ct = _container(stack, inst.vmid)
    assert (ct["node"], ct["status"]) == (other, "running")
    assert not Finding.objects.filter(finding_type="container_missing").exists()
    assert len(_moves(inst)) == 1
    # The operator hears about the move once (the finding's alert; the move shares its key),
    # and once that it is over (the finding resolved once the row names the node).
    wait_until(lambda: any("container moved: roamer" in t for t in _titles(stack, "warning")),
               timeout=30, what="the move's warning")
    assert len([t for t in _titles(stack, "warning")
                if "moved" in t and not t.startswith("Resolved")]) == 1
    assert not [t for t in _titles(stack, "critical") if "missing" in t]


def test_a_server_stuck_in_a_transition_is_not_called_missing_when_its_container_moved(
        stack, worker, owner):
    """Before, the stuck-transition repair read the old node, found nothing and set the
    server `missing` (a critical alert, and a recreate at level 2)."""
    inst = running(owner, "stray")
    other = _other_node(inst)
    migrate(stack, inst, other)
    ContainerInstance.objects.filter(pk=inst.id).update(
        status="stopping", status_changed_at=timezone.now() - timedelta(minutes=5))

    cycles(3)

    inst = ContainerInstance.objects.select_related("node").get(pk=inst.id)
    assert inst.status == "running" and inst.node.name == other
    assert not Finding.objects.filter(finding_type="container_missing").exists()
    assert not AuditEvent.objects.filter(instance_id=inst.id, to_status="missing").exists()


# --- Velocity: every registration we own is observed ---------------------------------------------
def _register(stack, name, address, hosts):
    vel = stack.endpoints["velocity"]
    resp = stack.http.post(vel["url"] + "/servers", json={"name": name, "address": address,
                                                          "hosts": hosts},
                           headers={"Authorization": f"Bearer {vel['token']}"}, timeout=30)
    assert resp.status_code in (200, 201), resp.text


def test_stale_registrations_of_stopped_and_deleted_servers_are_removed_the_lobby_never(
        stack, worker, owner, settings):
    settings.RECONCILER_ENABLED_LEVELS = [0, 1, 2]  # even level-2 orphan deletion is on
    sleeper = running(owner, "sleeper")
    ghost = running(owner, "ghost")
    wait_operation(_request(sleeper, OperationKind.STOP).id, timeout=60)
    wait_operation(_request(ghost, OperationKind.DELETE).id, timeout=60)
    assert stack.velocity_servers() == []
    # The registrations come back behind our back (a proxy replaying an old configuration),
    # next to the operator's own lobby.
    for inst in (sleeper, ghost):
        target = edge_target_for(inst)
        _register(stack, target.slug, target.backend, [target.fqdn])
    _register(stack, "lobby", "10.9.9.9:25565", ["play.example.net"])

    cycles(2)

    assert [s["name"] for s in stack.velocity_servers()] == ["lobby"]
    repairs = RepairEvent.objects.filter(action="velocity_unregister")
    assert {(r.instance_id, r.state) for r in repairs} == {(sleeper.id, "succeeded"),
                                                          (ghost.id, "succeeded")}
    assert not RepairEvent.objects.filter(action="delete_edge_orphan").exists()
    assert ContainerInstance.objects.get(pk=sleeper.id).status == "stopped"


def test_an_edge_repair_holds_the_server_while_it_acts(stack, worker, owner):
    """A repair that checked "no operation is active" and then acted seconds later could undo
    a stop requested in between: the server stopped but registered with Velocity again."""
    inst = running(owner, "racer")
    stack.http.delete(stack.endpoints["velocity"]["url"] + "/servers/racer",
                      headers={"Authorization": f"Bearer {stack.endpoints['velocity']['token']}"},
                      timeout=30)
    # The repair's registration is slow (only the repair registers in this test).
    stack.sim("velocity", "POST", "/_sim/faults",
              json={"method": "POST", "path": "^/servers$", "count": 1, "delay_s": 4})
    run_cycle()
    repair = wait_until(lambda: RepairEvent.objects.filter(action="velocity_register",
                                                           state="running").first(),
                        timeout=30, interval=0.05, what="the velocity repair to run")
    time.sleep(1.5)  # the repair is inside its slow registration now

    op = _request(inst, OperationKind.STOP)  # waits for the repair's row lock, then runs
    wait_operation(op.id, timeout=60)
    settle()

    assert ContainerInstance.objects.get(pk=inst.id).status == "stopped"
    assert RepairEvent.objects.get(pk=repair.pk).state in ("succeeded", "skipped")
    assert stack.velocity_servers() == []
    assert Operation.objects.get(pk=op.id).state == "succeeded"
