"""Edge publish/observe/republish/unpublish against the Cloudflare, Technitium and Velocity
stand-ins over real HTTP."""
from __future__ import annotations

import time
import uuid

import pytest

from edge.errors import EdgeError
from tests.support.devstack import apply_settings
from edge.services import (
    EdgeClients,
    EdgeTarget,
    edge_publish,
    edge_republish,
    edge_unpublish,
    observe_edge_bulk,
    observe_edge_state,
    velocity_resync,
)

pytestmark = pytest.mark.edge


@pytest.fixture
def edge(devstack, settings):
    devstack.reset()
    apply_settings(settings, devstack.env)
    return devstack


def target(slug="alpha", ip="10.1.0.5", port=30001):
    return EdgeTarget(server_id=str(uuid.uuid4()), slug=slug, backend_ip=ip, backend_port=port)


def _ours(edge, t):
    cf = [r for r in edge.cf_records() if r.get("comment") == t.owner_comment]
    tech = [r for r in edge.tech_records() if r.get("comments") == t.owner_comment]
    vel = [s for s in edge.velocity_servers() if s["name"] == t.slug]
    return cf, tech, vel


def test_publish_twice_gives_exactly_one_of_each(edge):
    t = target()
    first = edge_publish(t)
    assert first.ok and len(first.actions) == 4
    second = edge_publish(t)
    assert second.ok and second.actions == []
    cf, tech, vel = _ours(edge, t)
    assert sorted(r["type"] for r in cf) == ["A", "SRV"]
    a = next(r for r in cf if r["type"] == "A")
    srv = next(r for r in cf if r["type"] == "SRV")
    assert (a["name"], a["content"], a["proxied"]) == (t.fqdn, edge.env["VELOCITY_PUBLIC_IP"],
                                                       False)
    assert srv["name"] == f"_minecraft._tcp.{t.fqdn}"
    assert srv["data"] == {"priority": 0, "weight": 5, "port": 25565, "target": t.fqdn}
    assert [(r["name"], r["rData"]["ipAddress"]) for r in tech] == [(t.internal_fqdn, t.backend_ip)]
    assert vel == [{"name": "alpha", "address": "10.1.0.5:30001", "hosts": [t.fqdn]}]
    assert observe_edge_state(t).ok


def test_a_record_deleted_by_hand_is_observed_and_republished(edge):
    t = target()
    edge_publish(t)
    a = next(r for r in edge.cf_records() if r["type"] == "A")
    assert edge.cf_api("DELETE", f"/dns_records/{a['id']}").json()["success"] is True
    obs = observe_edge_state(t)
    assert obs.parts["cloudflare_a"] == "missing" and obs.drift == ["cloudflare_a"]
    report = edge_republish(t)
    assert report.ok and report.observed.ok
    assert report.actions == [f"created A {t.fqdn}"]
    assert len([r for r in edge.cf_records() if r["type"] == "A"]) == 1


def test_republish_never_reports_success_it_did_not_see(edge):
    t = target()
    # Velocity accepts the registration but loses it at once (a restart right after).
    edge.sim("velocity", "POST", "/_sim/faults", json={
        "method": "POST", "path": "^/servers$", "status": 201,
        "body": {"registered": {}, "changed": True}, "count": 1})
    report = edge_republish(t)
    assert not report.ok
    assert report.observed.parts["velocity"] == "missing"
    assert any("still not right" in p for p in report.problems)


def test_a_wrong_record_of_ours_is_corrected_in_place(edge):
    t = target()
    edge_publish(t)
    a = next(r for r in edge.cf_records() if r["type"] == "A")
    edge.cf_api("PATCH", f"/dns_records/{a['id']}", json={"content": "198.51.100.7"})
    assert observe_edge_state(t).parts["cloudflare_a"] == "wrong"
    report = edge_republish(t)
    assert report.ok and report.actions == [f"corrected A {t.fqdn}"]
    assert next(r for r in edge.cf_records() if r["type"] == "A")["id"] == a["id"]


def test_velocity_address_change_is_unregister_then_register(edge):
    t = target()
    edge_publish(t)
    moved = EdgeTarget(server_id=t.server_id, slug=t.slug, backend_ip="10.2.0.9", backend_port=31005)
    report = edge_publish(moved)
    assert "unregistered stale alpha (10.1.0.5:30001)" in report.actions
    assert edge.velocity_servers()[0]["address"] == "10.2.0.9:31005"


def test_a_429_is_waited_out_not_failed(edge):
    t = target()
    edge.sim("cloudflare", "POST", "/_sim/rate-limit", json={"count": 2, "retry_after": 1})
    clients = EdgeClients()
    started = time.monotonic()
    report = edge_publish(t, clients=clients)
    assert report.ok
    assert clients.cloudflare.waited == 2 and time.monotonic() - started >= 2
    assert observe_edge_state(t).ok


def test_rate_limit_longer_than_the_bound_is_a_retryable_error(edge, settings):
    settings.CLOUDFLARE_MAX_RETRY_WAIT = 1
    edge.sim("cloudflare", "POST", "/_sim/rate-limit", json={"count": 5, "retry_after": 3})
    with pytest.raises(EdgeError) as err:
        edge_publish(target())
    assert err.value.kind == "rate_limited" and err.value.retryable


def test_technitium_status_error_is_an_error_not_a_success(edge):
    edge.sim("technitium", "POST", "/_sim/faults", json={
        "method": "POST", "path": "records/add", "status": 200, "count": 1,
        "body": {"status": "error", "errorMessage": "Access was denied.", "server": "dns"}})
    with pytest.raises(EdgeError) as err:
        edge_publish(target())
    assert "Access was denied" in err.value.message
    assert edge.tech_records() == []


def test_a_foreign_record_is_left_untouched_and_reported(edge):
    t = target()
    foreign = edge.cf_api("POST", "/dns_records", json={
        "type": "A", "name": t.fqdn, "content": "192.0.2.44", "ttl": 300, "proxied": False})
    assert foreign.json()["success"]
    report = edge_publish(t)
    assert not report.ok
    assert any("foreign A record" in p for p in report.problems)
    a_records = [r for r in edge.cf_records() if r["type"] == "A"]
    assert len(a_records) == 1 and a_records[0]["content"] == "192.0.2.44"
    assert a_records[0]["comment"] is None
    obs = observe_edge_state(t)
    assert obs.parts["cloudflare_a"] == "foreign"
    assert any("192.0.2.44" in p for p in obs.problems)
    # Unpublishing ours never deletes the foreign one.
    edge_unpublish(t)
    assert [r["content"] for r in edge.cf_records()] == ["192.0.2.44"]


def test_unpublish_removes_exactly_ours_and_is_idempotent(edge):
    t, other = target("alpha"), target("bravo", ip="10.1.0.6", port=30002)
    edge_publish(t)
    edge_publish(other)
    report = edge_unpublish(t)
    assert len(report.actions) == 4
    assert edge_unpublish(t).actions == []
    cf, tech, vel = _ours(edge, t)
    assert (cf, tech, vel) == ([], [], [])
    assert observe_edge_state(other).ok


def test_bulk_observe_uses_one_listing_per_source_and_finds_orphans(edge):
    targets = [target(f"s{i}", ip=f"10.1.0.{i + 10}", port=30000 + i) for i in range(12)]
    for t in targets:
        edge_publish(t)
    gone = targets.pop()  # its server no longer exists: its records are orphans
    a = next(r for r in edge.cf_records()
             if r["type"] == "A" and r["comment"] == targets[0].owner_comment)
    edge.cf_api("DELETE", f"/dns_records/{a['id']}")
    edge.sim("velocity", "POST", "/_sim/restart")
    bulk = observe_edge_bulk(targets)
    assert bulk.sources == {"cloudflare": "healthy", "technitium": "healthy",
                            "velocity": "healthy"}
    assert bulk.calls == {"cloudflare": 1, "technitium": 1, "velocity": 1}
    assert bulk.by_server[targets[0].server_id].parts["cloudflare_a"] == "missing"
    assert all(o.parts["velocity"] == "missing" for o in bulk.by_server.values())
    assert all(bulk.by_server[t.server_id].parts["cloudflare_srv"] == "ok" for t in targets)
    owners = {o.get("owner") for o in bulk.orphans if o["source"] != "velocity"}
    assert owners == {gone.server_id}


def test_bulk_observe_marks_a_failing_source_unknown(edge):
    t = target()
    edge_publish(t)
    edge.sim("technitium", "POST", "/_sim/faults", json={
        "method": "*", "path": "records/get", "status": 502, "count": 1})
    bulk = observe_edge_bulk([t])
    assert bulk.sources["technitium"] == "unknown"
    assert bulk.by_server[t.server_id].parts["technitium_a"] == "unknown"
    assert bulk.by_server[t.server_id].parts["cloudflare_a"] == "ok"


def test_velocity_resync_registers_what_a_restart_dropped(edge):
    targets = [target(f"r{i}", ip=f"10.1.0.{i + 20}", port=30100 + i) for i in range(5)]
    for t in targets:
        edge_publish(t)
    edge.sim("velocity", "POST", "/_sim/restart")
    assert edge.velocity_servers() == []
    result = velocity_resync(targets)
    assert result["changed"] == 5 and result["extra"] == []
    assert sorted(s["name"] for s in edge.velocity_servers()) == [f"r{i}" for i in range(5)]
    assert velocity_resync(targets)["changed"] == 0
