"""Each finding, produced by making its drift in fakepve or a stand-in the way a person would,
with the level-1 repair done and post-checked within two cycles, or the alert for level 0/2."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from lifecycle.models import ContainerInstance, Operation
from lifecycle.services.edge import edge_target_for
from lifecycle.services.servers import server_create
from edge.services import observe_edge_state
from reconciler.models import ControllerRun, Finding, RepairEvent
from reconciler.services import run_cycle
from tests.support.platform import game_body
from tests.support.waiting import wait_until

from .helpers import cycles, running

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reconciler]


def titles(stack, channel):
    return [m["embeds"][0]["title"] for m in stack.discord_messages(channel)]


def wait_message(stack, channel, text):
    wait_until(lambda: any(text in t for t in titles(stack, channel)), timeout=30,
               what=f"a {channel} message containing {text!r}")


def test_a_clean_platform_has_no_findings(stack, worker, owner):
    running(owner, "clean")
    summary = run_cycle()
    assert summary["outcome"] == "completed", summary
    assert summary["counts"]["findings"] == {}
    assert set(summary["sources"].values()) == {"healthy"}
    assert summary["calls"]["proxmox"] == 1
    run = ControllerRun.objects.get()
    assert run.finished_at and run.outcome == "completed"


def test_power_drift_is_repaired_by_starting_the_container(stack, worker, owner):
    inst = running(owner, "powerless")
    stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop")
    cycles(2)
    repair = RepairEvent.objects.get(action="start_container")
    assert repair.state == "succeeded" and repair.after["power"] == "running"
    assert ContainerInstance.objects.get(pk=inst.id).status == "running"
    assert stack.containers()[0]["status"] == "running"
    assert Operation.objects.filter(instance=inst, kind="start", state="succeeded").count() == 1
    wait_message(stack, "info", "Repaired: start_container")
    assert not Finding.objects.filter(open=True).exists()


def test_container_deleted_behind_our_back_alerts_critically_and_is_not_recreated(
        stack, worker, owner):
    inst = running(owner, "vanished")
    stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop")
    stack.pve_api("DELETE", f"/nodes/{inst.node.name}/lxc/{inst.vmid}")
    cycles(2)
    finding = Finding.objects.get(finding_type="container_missing")
    assert finding.open and finding.level == 2 and finding.action == "recreate_container"
    assert RepairEvent.objects.get(action="recreate_container").state == "blocked"
    assert ContainerInstance.objects.get(pk=inst.id).status == "missing"  # level-1 status sync
    assert stack.containers() == []  # no automatic recreation
    wait_message(stack, "critical", "container missing: vanished")
    assert len([t for t in titles(stack, "critical") if "container missing" in t]) == 1
    assert not Operation.objects.filter(instance=inst, kind="provision").exclude(
        pk=Operation.objects.filter(instance=inst).order_by("created_at").first().pk).exists()


def test_a_server_the_user_stopped_that_comes_back_up_is_stopped_again(stack, worker, owner):
    """Desired `stopped` is enforced like `running` is: a graceful stop operation."""
    from rest_framework.test import APIClient

    from tests.support.stack import wait_status

    inst = running(owner, "drifty")
    APIClient().post(f"/api/v1/servers/{inst.id}/stop", **owner.headers)
    wait_status(inst.id, "stopped")
    stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/start")
    wait_until(lambda: stack.agent(inst.vmid)["state"] == "running", timeout=30)
    cycles(2)
    repair = RepairEvent.objects.get(action="stop_container")
    assert repair.state == "succeeded" and repair.after["power"] == "stopped"
    inst = ContainerInstance.objects.get(pk=inst.id)
    assert inst.status == "stopped" and inst.desired_state == "stopped"
    assert stack.containers()[0]["status"] == "stopped"
    assert Operation.objects.filter(instance=inst, kind="stop", state="succeeded").count() == 2


def test_status_drift_a_server_wanted_running_found_running_is_synced(stack, worker, owner):
    from tests.support.stack import wait_status

    inst = running(owner, "drifty2")
    stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop")
    ContainerInstance.objects.filter(pk=inst.id).update(status="stopped")  # a stale belief
    stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/start")
    wait_until(lambda: stack.agent(inst.vmid)["state"] == "running", timeout=30)
    cycles(2)
    assert wait_status(inst.id, "running")
    assert RepairEvent.objects.get(action="sync_status").state == "succeeded"


def test_stuck_transition_is_synced_from_what_is_observed(stack, worker, owner):
    inst = running(owner, "stuck")
    ContainerInstance.objects.filter(pk=inst.id).update(
        status="stopping", status_changed_at=timezone.now() - timedelta(minutes=5))
    cycles(2)
    assert Finding.objects.filter(finding_type="stuck_transition").exists()
    assert ContainerInstance.objects.get(pk=inst.id).status == "running"


def test_stale_operation_lock_is_cleared(stack, worker_env, owner, tmp_path):
    result = server_create(owner=owner.user, data=game_body("stale-op"))
    Operation.objects.filter(pk=result.operation.id).update(
        state="running", worker="dead-host:1:x",
        lease_expires_at=timezone.now() - timedelta(minutes=10))
    from tests.support.workers import start_worker

    repairs = start_worker(worker_env(), tmp_path, name="repairs", queues="repair,notify")
    try:
        cycles(2)
    finally:
        repairs.stop()
    op = Operation.objects.get(pk=result.operation.id)
    assert op.state == "stale" and op.active_slot is None
    assert RepairEvent.objects.get(action="clear_stale_operation_lock").state == "succeeded"


def test_edge_drift_dns_and_velocity_are_republished(stack, worker, owner):
    inst = running(owner, "edgy")
    target = edge_target_for(inst)
    a = next(r for r in stack.cf_records() if r["type"] == "A")
    stack.cf_api("DELETE", f"/dns_records/{a['id']}")
    cycles(2)
    assert RepairEvent.objects.get(action="dns_republish").state == "succeeded"
    assert observe_edge_state(target).ok
    stack.sim("velocity", "POST", "/_sim/restart")
    cycles(2)
    assert RepairEvent.objects.get(action="velocity_register").state == "succeeded"
    assert observe_edge_state(target).ok


def _purged_row(owner, server_id, name):
    """A server of ours that was purged (its tombstone row), so what it left is an orphan."""
    ContainerInstance.objects.create(id=server_id, owner=owner.user, name=name, slug=name,
                                     live_slug=None, kind="game", variant="vanilla",
                                     version="1.21.1", plan="vanilla", memory_mb=2048, cores=2,
                                     disk_gb=8, status="purged", desired_state="purged")


def test_edge_orphan_and_orphan_container_are_reported_not_touched(stack, worker, owner):
    running(owner, "anchor")
    ghost = uuid.uuid4()
    _purged_row(owner, ghost, "ghost")
    stack.cf_api("POST", "/dns_records", json={
        "type": "A", "name": "ghost.play.zlh.test", "content": "203.0.113.10", "ttl": 60,
        "proxied": False, "comment": f"zlh:{ghost}"})
    resp = stack.pve_api("POST", "/nodes/pve2/lxc", data={
        "vmid": 7777, "ostemplate": stack.endpoints["proxmox"]["ostemplate"],
        "rootfs": "local-lvm:4", "tags": f"zlh;zlh-{ghost}"})
    assert resp.status_code == 200
    cycles(2)
    assert {f.finding_type for f in Finding.objects.filter(open=True)} >= {
        "edge_orphan", "orphan_container"}
    assert set(RepairEvent.objects.filter(
        action__in=("delete_edge_orphan", "destroy_orphan")).values_list("state", flat=True)) == {
        "blocked"}
    assert any(c["vmid"] == 7777 for c in stack.containers())
    assert any(r["name"] == "ghost.play.zlh.test" for r in stack.cf_records())
    wait_message(stack, "warning", "orphan container")


def test_leftovers_of_a_server_the_database_never_knew_are_reported_never_removed(
        stack, worker, owner, settings):
    """What a database restored from an older dump does not know is not an orphan: it is
    adoptable (by its tag), and no repair level removes it."""
    running(owner, "anchor")
    newer = uuid.uuid4()
    stack.cf_api("POST", "/dns_records", json={
        "type": "A", "name": "newer.play.zlh.test", "content": "203.0.113.10", "ttl": 60,
        "proxied": False, "comment": f"zlh:{newer}"})
    resp = stack.pve_api("POST", "/nodes/pve2/lxc", data={
        "vmid": 7778, "hostname": "newer", "rootfs": "local-lvm:4",
        "ostemplate": stack.endpoints["proxmox"]["ostemplate"], "tags": f"zlh;zlh-{newer}"})
    assert resp.status_code == 200
    settings.RECONCILER_ENABLED_LEVELS = [0, 1, 2]  # even destructive repairs allowed
    cycles(2)
    found = {f.finding_type: f for f in Finding.objects.filter(open=True)}
    assert set(found) == {"unknown_container"}, found
    assert found["unknown_container"].action == "notify"
    assert "adopt --vmid 7778" in found["unknown_container"].details["hint"]
    assert not RepairEvent.objects.filter(action__in=("delete_edge_orphan",
                                                      "destroy_orphan")).exists()
    assert any(c["vmid"] == 7778 for c in stack.containers())
    assert any(r["name"] == "newer.play.zlh.test" for r in stack.cf_records())


def test_vmid_conflict_is_alerted(stack, worker, owner):
    inst = running(owner, "conflict")
    node, vmid = inst.node.name, inst.vmid
    stack.pve_api("POST", f"/nodes/{node}/lxc/{vmid}/status/stop")
    stack.pve_api("DELETE", f"/nodes/{node}/lxc/{vmid}")
    stack.pve_api("POST", f"/nodes/{node}/lxc", data={
        "vmid": vmid, "ostemplate": stack.endpoints["proxmox"]["ostemplate"],
        "rootfs": "local-lvm:4", "tags": "someone-else"})
    cycles(1)
    assert Finding.objects.get(finding_type="vmid_conflict").level == 0
    wait_message(stack, "critical", "vmid conflict")


def test_agent_unreachable_and_crash_loop_are_alerted(stack, worker, owner):
    hung, crashy = running(owner, "hung"), running(owner, "crashy")
    stack.agents("POST", f"/_sim/agents/{hung.vmid}/hang")
    for _ in range(3):
        stack.agents("POST", f"/_sim/agents/{crashy.vmid}/crash")
        stack.agents("POST", f"/_sim/agents/{crashy.vmid}/recover")
    cycles(1)
    types = set(Finding.objects.filter(open=True).values_list("finding_type", flat=True))
    assert {"agent_unreachable", "crash_loop"} <= types
    wait_message(stack, "warning", "agent unreachable: hung")
    wait_message(stack, "warning", "crash loop: crashy")
    stack.agents("POST", f"/_sim/agents/{hung.vmid}/recover")
    cycles(1)
    assert not Finding.objects.filter(finding_type="agent_unreachable", open=True).exists()
    wait_message(stack, "warning", "Resolved: agent unreachable: hung")


def test_purge_overdue_is_level_2_and_alerted(stack, worker, owner):
    from rest_framework.test import APIClient

    from tests.support.stack import wait_status

    inst = running(owner, "overdue")
    APIClient().delete(f"/api/v1/servers/{inst.id}", **owner.headers)
    wait_status(inst.id, "deleted")
    ContainerInstance.objects.filter(pk=inst.id).update(
        purge_after=timezone.now() - timedelta(hours=2))
    cycles(1)
    assert RepairEvent.objects.get(action="purge").state == "blocked"
    assert ContainerInstance.objects.get(pk=inst.id).status == "deleted"
    wait_message(stack, "warning", "purge due")
