"""The portal's `GET /servers/{id}/status`: observed values with the time they were observed,
and `unknown` only with a reason (issue 14, item 4)."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from reconciler.models import ControllerRun, ServerObservation
from reconciler.services import run_cycle

from .helpers import running

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reconciler]


def status_of(owner, inst):
    resp = APIClient().get(f"/api/v1/servers/{inst.id}/status", **owner.headers)
    assert resp.status_code == 200, resp.content
    return resp.json()


def test_status_reports_what_the_latest_cycle_observed(stack, worker, owner):
    inst = running(owner, "seen")
    before = status_of(owner, inst)
    assert before["power"]["state"] == "unknown"
    assert "has not completed a cycle" in before["power"]["reason"]

    summary = run_cycle(dry_run=True)
    run = ControllerRun.objects.get(pk=summary["run"])
    now = status_of(owner, inst)
    assert now["power"]["state"] == "running" and now["power"]["reason"] is None
    assert now["power"]["details"]["node"] == inst.node.name
    assert now["power"]["observed_at"] == run.started_at.isoformat().replace("+00:00", "Z")
    assert now["edge"]["state"] == "ok", now["edge"]
    assert set(now["edge"]["details"]["parts"].values()) == {"ok"}

    # Drift made by hand shows in the next observation, with the time it changed.
    stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop")
    run_cycle(dry_run=True)
    later = status_of(owner, inst)
    assert later["power"]["state"] == "stopped"
    assert later["power"]["since"] > now["power"]["observed_at"]


def test_an_unchanged_fleet_writes_no_observation(stack, worker, owner):
    running(owner, "still-a")
    running(owner, "still-b")
    first = run_cycle(dry_run=True)
    assert first["counts"]["observations"] == {"created": 2, "changed": 0}
    second = run_cycle(dry_run=True)
    assert second["counts"]["observations"] == {"created": 0, "changed": 0}
    assert ServerObservation.objects.count() == 2


def test_a_source_that_cannot_be_read_is_unknown_with_the_reason(stack, worker, owner):
    inst = running(owner, "blind")
    run_cycle(dry_run=True)
    stack.fault(method="GET", path="cluster/resources", status=500, body="no quorum",
                count=5)
    stack.sim("velocity", "POST", "/_sim/faults",
              json={"method": "GET", "path": "^/servers$", "status": 503, "count": 5})
    try:
        run_cycle(dry_run=True)
    finally:
        stack.pve("DELETE", "/_sim/faults")
        stack.sim("velocity", "DELETE", "/_sim/faults")
    data = status_of(owner, inst)
    assert data["power"]["state"] == "unknown"
    assert "Proxmox could not be read" in data["power"]["reason"]
    assert data["power"]["details"]["last_known"] == "running"
    assert data["edge"]["state"] == "unknown" and "velocity" in data["edge"]["reason"]


def test_a_server_newer_than_the_latest_cycle_is_not_observed_yet(stack, worker, owner):
    running(owner, "older")
    run_cycle(dry_run=True)
    newer = running(owner, "newer")
    data = status_of(owner, newer)
    assert data["power"]["state"] == "unknown" and "not observed yet" in data["power"]["reason"]


def test_status_is_scoped_to_the_owner(stack, worker, owner):
    from tests.support.platform import make_user

    inst = running(owner, "private")
    other = make_user("someone-else")
    resp = APIClient().get(f"/api/v1/servers/{inst.id}/status", **other.headers)
    assert resp.status_code == 404


# --- the agent: heartbeats read in bulk, direct probes within a budget ---------------------------

def _beat(inst, seq, **over):
    """A heartbeat as the agent would send it, through the real endpoint and its token."""
    from core.agent_tokens import heartbeat_token
    from lifecycle.services.agent_credentials import agent_secrets

    body = {"sequence": seq, "state": "running", "provisioningComplete": True, "ready": True,
            "crashCount": 0, "lastCrash": None, "memoryUsedMb": 1024, "memoryLimitMb": 4096,
            "diskUsedMb": 2048, "diskLimitMb": 8192, "playersOnline": 2, "agentVersion": "1"}
    body.update(over)
    token = heartbeat_token(agent_secrets(instance_id=inst.id).current, inst.id)
    resp = APIClient().post(f"/api/v1/agents/{inst.id}/heartbeat", body, format="json",
                            HTTP_AUTHORIZATION=f"Bearer {token}")
    assert resp.status_code == 202, resp.content


def test_the_agent_part_comes_from_the_heartbeat_and_goes_unknown_when_stale(
        stack, worker, owner, settings):
    settings.AGENT_HEARTBEAT_INTERVAL_SECONDS = 0
    settings.AGENT_HEARTBEAT_STALE_SECONDS = 60
    inst = running(owner, "beating")
    none_yet = status_of(owner, inst)["agent"]
    assert none_yet["state"] == "unknown" and "no heartbeat" in none_yet["reason"]
    _beat(inst, 1, playersOnline=5)
    fresh = status_of(owner, inst)["agent"]
    assert fresh["state"] == "running" and fresh["reason"] is None
    assert fresh["details"]["players_online"] == 5
    assert fresh["details"]["heartbeat_age_seconds"] < 5
    settings.AGENT_HEARTBEAT_STALE_SECONDS = 1
    import time
    time.sleep(1.5)
    stale = status_of(owner, inst)["agent"]
    assert stale["state"] == "unknown" and "stale after 1 s" in stale["reason"]
    assert stale["details"]["last_known"] == "running"


def test_fresh_heartbeats_spare_the_probes_and_the_budget_bounds_the_rest(
        stack, worker, owner, settings):
    settings.AGENT_HEARTBEAT_INTERVAL_SECONDS = 0
    settings.AGENT_HEARTBEAT_STALE_SECONDS = 60
    servers = [running(owner, f"fleet-{i}") for i in range(4)]
    _beat(servers[0], 1)
    _beat(servers[1], 1)
    settings.RECONCILER_AGENT_PROBE_BUDGET = 1
    summary = run_cycle(dry_run=True)
    # Two fresh heartbeats read in one query; one of the two silent agents asked directly.
    assert summary["calls"]["agents"] == 1 and summary["calls"]["agent_heartbeats"] == 2
    assert summary["sources"]["agents"] == "healthy"
    settings.RECONCILER_AGENT_PROBE_BUDGET = 50
    assert run_cycle(dry_run=True)["calls"]["agents"] == 2


def test_an_agent_that_answers_but_sends_no_heartbeats_is_reported(stack, worker, owner,
                                                                    settings):
    from reconciler.models import Finding

    settings.RECONCILER_EXPECT_HEARTBEATS = True
    inst = running(owner, "quiet")
    run_cycle(dry_run=True)
    assert list(Finding.objects.filter(open=True).values_list("finding_type", "instance_id")) \
        == [("heartbeat_stale", inst.id)]


def test_memory_pressure_over_several_heartbeats_warns_once(stack, worker, owner, settings):
    from notifications.models import Notification
    from reconciler.models import Finding

    settings.AGENT_HEARTBEAT_INTERVAL_SECONDS = 0
    settings.AGENT_HEARTBEAT_STALE_SECONDS = 60
    settings.RECONCILER_MEMORY_PRESSURE_HEARTBEATS = 3
    inst = running(owner, "squeezed")
    for seq in range(1, 4):
        _beat(inst, seq, memoryUsedMb=3900, memoryLimitMb=4096)
    run_cycle(dry_run=True)
    run_cycle(dry_run=True)
    finding = Finding.objects.get(finding_type="memory_pressure", open=True)
    assert finding.instance_id == inst.id and finding.seen_count == 2
    assert Notification.objects.filter(alert_key=f"finding:{finding.key}").count() == 1
    _beat(inst, 4, memoryUsedMb=1000, memoryLimitMb=4096)
    run_cycle(dry_run=True)
    assert not Finding.objects.filter(finding_type="memory_pressure", open=True).exists()
