"""reconciler.diff for a fleet that moves under us (issue 13, item 4): a container of ours on
another node is a move to record, never a missing server; every Velocity registration we own
is judged, including those of stopped and deleted servers; the operator's lobby never is."""
from __future__ import annotations

from edge.services import BulkObservation
from reconciler.choices import ACTION_LEVEL, Action, FindingType
from reconciler.diff import diff

from .test_reconciler_diff import ct, inst, new_id, op, world

HEALTHY = "healthy"


def _edge(registrations, *, velocity=HEALTHY):
    return BulkObservation(by_server={}, orphans=[], sources={"cloudflare": HEALTHY,
                                                              "technitium": HEALTHY,
                                                              "velocity": velocity},
                           calls={}, registrations=registrations)


def _reg(name, address="10.1.0.10:30000"):
    return {"name": name, "address": address, "hosts": [f"{name}.play.zerolaghub.com"]}


def test_a_container_of_ours_on_another_node_is_moved_not_missing():
    iid = new_id()
    w = world([inst(iid, status="running")], containers=[ct(5000, iid, "stopped", node="pve2")])
    [finding] = diff(w)
    assert finding.finding_type == FindingType.CONTAINER_MOVED
    assert finding.action == Action.RECORD_MOVE and ACTION_LEVEL[Action.RECORD_MOVE] == 1
    assert finding.details["observed_node"] == "pve2" and finding.details["node"] == "pve1"


def test_a_foreign_guest_on_another_node_is_still_a_vmid_conflict():
    iid = new_id()
    w = world([inst(iid)], containers=[ct(5000, None, node="pve2")])  # no tag of ours
    assert [f.finding_type for f in diff(w)] == [FindingType.VMID_CONFLICT]


def test_a_busy_server_whose_container_moved_is_left_to_its_operation():
    iid = new_id()
    w = world([inst(iid)], containers=[ct(5000, iid, node="pve2")],
              active_ops={iid: op(iid, kind="stop")})
    assert diff(w) == []


def test_registrations_of_stopped_and_deleted_servers_are_found():
    stopped, deleted, running = new_id(), new_id(), new_id()
    w = world([inst(stopped, slug="sleeper", status="stopped", desired_state="stopped",
                    vmid=5001),
               inst(deleted, slug="ghost", status="deleted", desired_state="deleted",
                    vmid=5002),
               inst(running, slug="alpha", vmid=5000)],
              containers=[ct(5000, running), ct(5001, stopped, "stopped"),
                          ct(5002, deleted, "stopped")],
              edge=_edge({"sleeper": _reg("sleeper"), "ghost": _reg("ghost"),
                          "alpha": _reg("alpha")}))
    found = {(f.instance_id, f.action) for f in diff(w)
             if f.finding_type == FindingType.EDGE_DRIFT}
    assert found == {(stopped, Action.VELOCITY_UNREGISTER), (deleted, Action.VELOCITY_UNREGISTER)}
    assert ACTION_LEVEL[Action.VELOCITY_UNREGISTER] == 1


def test_no_registration_finding_while_velocity_is_unknown_or_the_server_busy():
    iid = new_id()
    stopped = inst(iid, slug="sleeper", status="stopped", desired_state="stopped")
    unknown = world([stopped], containers=[ct(5000, iid, "stopped")],
                    edge=_edge({"sleeper": _reg("sleeper")}, velocity="unknown"))
    busy = world([stopped], containers=[ct(5000, iid, "stopped")],
                 edge=_edge({"sleeper": _reg("sleeper")}), active_ops={iid: op(iid)})
    for w in (unknown, busy):
        assert not [f for f in diff(w) if f.action == Action.VELOCITY_UNREGISTER]


def test_the_bulk_observation_lists_every_registration_we_own_and_never_the_lobby():
    from django.conf import settings

    from edge.services import EdgeTarget, observe_edge_bulk

    from .test_edge_evaluate import FakeClients

    zone = settings.EDGE_ZONE
    running = EdgeTarget(server_id=new_id(), slug="alpha", backend_ip="10.1.0.5",
                         backend_port=30001)
    clients = FakeClients(cf=[], tech=[], vel=[
        {"name": "alpha", "address": "10.1.0.5:30001", "hosts": [f"alpha.{zone}"]},
        # A stopped server's registration: not a target (only running servers are), ours.
        {"name": "sleeper", "address": "10.1.0.6:30002", "hosts": [f"sleeper.{zone}"]},
        {"name": "lobby", "address": "10.9.9.9:25565", "hosts": ["play.example.net"]},
    ])
    result = observe_edge_bulk([running], clients=clients)
    assert sorted(result.registrations) == ["alpha", "sleeper"]
    assert result.calls["velocity"] == 1
