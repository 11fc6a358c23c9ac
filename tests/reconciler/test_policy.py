"""Policy: dry-run changes nothing, the mass-drift guard, budgets, breakers, source health."""
from __future__ import annotations

import pytest

from lifecycle.models import ContainerInstance, Operation
from notifications.models import Notification
from reconciler.models import Breaker, Finding, RepairEvent
from reconciler.services import run_cycle
from tests.support.waiting import wait_until

from .helpers import cycles, running, settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reconciler]


def test_dry_run_proposes_and_changes_nothing(stack, worker, owner):
    inst = running(owner, "dry")
    stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop")
    a = next(r for r in stack.cf_records() if r["type"] == "A")
    stack.cf_api("DELETE", f"/dns_records/{a['id']}")
    before = (list(ContainerInstance.objects.values()), Operation.objects.count(),
              stack.containers(), stack.cf_records(), stack.tech_records(),
              stack.velocity_servers())
    stack.pve("DELETE", "/_sim/calls")
    summary = run_cycle(dry_run=True)
    settle()
    assert summary["counts"]["decisions"] == {"proposed": 2}
    assert sorted(RepairEvent.objects.values_list("action", "state", "dry_run")) == [
        ("dns_republish", "proposed", True), ("start_container", "proposed", True)]
    after = (list(ContainerInstance.objects.values()), Operation.objects.count(),
             stack.containers(), stack.cf_records(), stack.tech_records(),
             stack.velocity_servers())
    assert after == before
    writes = [c for c in stack.pve("GET", "/_sim/calls")["calls"] if c[0] != "GET"]
    assert writes == []


def test_mass_drift_guard_makes_no_repairs_and_one_critical_alert(stack, worker, owner, settings):
    settings.RECONCILER_MASS_DRIFT_MIN = 2
    servers = [running(owner, f"mass-{i}") for i in range(3)]
    for inst in servers:
        stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop")
    cycles(2)
    assert set(RepairEvent.objects.values_list("state", flat=True)) == {"blocked"}
    assert all(c["status"] == "stopped" for c in stack.containers())
    wait_until(lambda: Notification.objects.filter(alert_key="mass-drift", state="sent").exists(),
               timeout=30)
    assert Notification.objects.filter(alert_key="mass-drift").count() == 1


def test_proxmox_errors_mean_no_findings_and_one_critical_alert(stack, worker, owner):
    inst = running(owner, "blind")
    stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop")
    stack.fault(method="GET", path="/cluster/resources", status=500,
                body="proxy loop detected", count=10)
    summaries = cycles(2)
    assert all(s["sources"]["proxmox"] == "unknown" for s in summaries)
    assert not Finding.objects.exists() and not RepairEvent.objects.exists()
    assert Notification.objects.filter(alert_key="source:proxmox").count() == 1
    assert ContainerInstance.objects.get(pk=inst.id).status == "running"


def test_proxmox_answering_an_empty_list_is_implausible_not_absence(stack, worker, owner):
    for i in range(3):
        running(owner, f"present-{i}")
    stack.fault(method="GET", path="/cluster/resources", status=200, body=[], count=10)
    summary = run_cycle()
    settle()
    assert summary["sources"]["proxmox"] == "unknown"
    assert not Finding.objects.filter(finding_type="container_missing").exists()
    assert not RepairEvent.objects.exists()
    assert set(ContainerInstance.objects.values_list("status", flat=True)) == {"running"}
    assert Notification.objects.filter(alert_key="source:proxmox", channel="critical").count() == 1


def test_breaker_opens_after_failures_and_recovers_through_half_open(stack, worker, owner,
                                                                     settings):
    settings.RECONCILER_MASS_DRIFT_MIN = 50
    servers = [running(owner, f"brk-{i}") for i in range(4)]
    stack.sim("velocity", "POST", "/_sim/restart")
    stack.sim("velocity", "POST", "/_sim/faults", json={
        "method": "POST", "path": "^/servers$", "status": 500, "count": 1000})
    cycles(1)  # four repairs, all fail: the breaker opens at the third failure
    breaker = Breaker.objects.get(action="velocity_register")
    assert breaker.state == "open" and breaker.consecutive_failures >= 3
    assert RepairEvent.objects.filter(action="velocity_register", state="failed").count() == 4
    wait_until(lambda: Notification.objects.filter(alert_key="breaker:velocity_register").exists(),
               timeout=10)

    cycles(1)  # open: refused, not attempted
    assert RepairEvent.objects.filter(action="velocity_register", state="blocked",
                                      reason__contains="breaker").exists()
    stack.sim("velocity", "DELETE", "/_sim/faults")
    import time
    time.sleep(2.2)  # the cool-down
    cycles(1)  # half-open: exactly one probe, which succeeds and closes the breaker
    probes = RepairEvent.objects.filter(action="velocity_register", state="succeeded")
    assert probes.count() == 1
    assert Breaker.objects.get(action="velocity_register").state == "closed"
    cycles(1)  # closed again: the rest are repaired
    assert len(stack.velocity_servers()) == 4
    assert {s.slug for s in servers} == {v["name"] for v in stack.velocity_servers()}


def test_repair_budget_per_server_is_enforced(stack, worker, owner, settings):
    settings.RECONCILER_REPAIR_BUDGET_PER_HOUR = 2
    inst = running(owner, "budget")
    for _ in range(3):
        stack.sim("velocity", "POST", "/_sim/restart")
        cycles(1)
    states = list(RepairEvent.objects.filter(action="velocity_register")
                  .order_by("id").values_list("state", flat=True))
    assert states == ["succeeded", "succeeded", "blocked"]
    assert "budget" in RepairEvent.objects.get(state="blocked").reason
    del inst


def test_suspended_and_maintenance_locked_servers_are_left_alone(stack, worker, owner):
    locked, suspended = running(owner, "locked"), running(owner, "suspended")
    ContainerInstance.objects.filter(pk=locked.id).update(maintenance_lock=True)
    ContainerInstance.objects.filter(pk=suspended.id).update(suspended=True)
    for inst in (locked, suspended):
        stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop")
    cycles(2)
    assert not Finding.objects.filter(instance=locked).exists()
    assert RepairEvent.objects.get(instance=suspended).state == "blocked"
    assert all(c["status"] == "stopped" for c in stack.containers())
