"""The edge in the server's life: published once ready, Velocity dropped on stop and restored
on start, everything removed on delete, and resync after a Velocity restart."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from edge.services import observe_edge_state
from lifecycle.models import Operation
from lifecycle.services.edge import edge_target_for
from lifecycle.services.servers import server_create
from tests.support.platform import game_body
from tests.support.waiting import wait_until

from tests.support.stack import wait_operation, wait_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]


def test_edge_follows_the_server(stack, worker, owner):
    api = APIClient()
    inst = wait_status(server_create(owner=owner.user, data=game_body("edgy")).instance.id,
                       "running")
    target = edge_target_for(inst)
    assert target.backend == f"{inst.ip}:{inst.ports['game']}"
    assert observe_edge_state(target).ok
    assert stack.agent(inst.vmid)["seeded"]["serverProperties"]["server-port"] == inst.ports["game"]
    op = Operation.objects.get(instance=inst)
    assert op.step == "done" and any("edge published and seen live" in e["msg"] for e in op.log)

    api.post(f"/api/v1/servers/{inst.id}/stop", **owner.headers)
    wait_status(inst.id, "stopped")
    obs = observe_edge_state(target)
    assert obs.parts["velocity"] == "missing"
    assert obs.parts["cloudflare_a"] == obs.parts["technitium_a"] == "ok"

    api.post(f"/api/v1/servers/{inst.id}/start", **owner.headers)
    wait_status(inst.id, "running")
    assert observe_edge_state(target).ok

    api.delete(f"/api/v1/servers/{inst.id}", **owner.headers)
    wait_status(inst.id, "deleted")
    assert stack.cf_records() == [] and stack.tech_records() == []
    assert stack.velocity_servers() == []


def test_resync_after_a_velocity_restart(stack, worker, owner, staff):
    ids = [server_create(owner=owner.user, data=game_body(f"rs-{i}")).instance.id
           for i in range(3)]
    dev = server_create(owner=owner.user, data={
        "name": "rs-dev", "kind": "dev", "plan": "modded", "runtime": "go",
        "runtime_version": "1.23"}).instance.id
    for sid in [*ids, dev]:
        wait_status(sid, "running")
    assert len(stack.velocity_servers()) == 3  # dev containers have no Velocity entry
    stack.sim("velocity", "POST", "/_sim/restart")
    assert stack.velocity_servers() == []

    api = APIClient()
    assert api.post("/api/v1/velocity/resync", **owner.headers).status_code == 403
    resp = api.post("/api/v1/velocity/resync", **staff.headers)
    assert resp.status_code == 202 and resp.json()["servers"] == 3
    wait_until(lambda: len(stack.velocity_servers()) == 3, timeout=30,
               what="Velocity registrations to come back")
    assert "lifecycle.velocity_resync" in worker.log()


def test_a_foreign_record_does_not_stop_the_server_and_is_left_alone(stack, worker, owner):
    stack.cf_api("POST", "/dns_records", json={
        "type": "A", "name": "taken.play.zlh.test", "content": "192.0.2.1", "ttl": 300,
        "proxied": False})
    result = server_create(owner=owner.user, data=game_body("taken"))
    inst = wait_status(result.instance.id, "running")
    op = wait_operation(result.operation.id)
    assert any("foreign A record" in e["msg"] for e in op.log)
    a_records = [r for r in stack.cf_records() if r["type"] == "A"]
    assert [r["content"] for r in a_records] == ["192.0.2.1"]
    obs = observe_edge_state(edge_target_for(inst))
    assert obs.parts == {"cloudflare_a": "foreign", "cloudflare_srv": "ok",
                         "technitium_a": "ok", "velocity": "ok"}


def test_a_cloudflare_outage_during_provisioning_is_retried(stack, worker, owner):
    stack.sim("cloudflare", "POST", "/_sim/faults", json={
        "method": "POST", "path": "dns_records$", "status": 503, "count": 2})
    result = server_create(owner=owner.user, data=game_body("cf-down"))
    inst = wait_status(result.instance.id, "running", timeout=60)
    op = Operation.objects.get(pk=result.operation.id)
    assert op.attempt >= 2
    assert observe_edge_state(edge_target_for(inst)).ok
    assert len([r for r in stack.cf_records() if r["type"] == "A"]) == 1
