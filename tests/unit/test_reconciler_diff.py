"""reconciler.diff.diff on in-memory Worlds: one test per finding type, and the rules that keep
it from acting on what it does not know (unknown sources, locked, deleting or busy servers).
No database, no network: diff is pure."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone as dt_timezone
from typing import Any

import pytest
from django.conf import settings

from edge.services import BulkObservation, EdgeObservation
from reconciler.choices import ACTION_LEVEL, Action, FindingType
from reconciler.diff import diff
from core.health import Health
from reconciler.observe import INSTANCE_FIELDS, World

HEALTHY, UNKNOWN = Health.HEALTHY, Health.UNKNOWN

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=dt_timezone.utc)
ALL_OK = {"cloudflare_a": "ok", "cloudflare_srv": "ok", "technitium_a": "ok", "velocity": "ok"}


def new_id() -> str:
    return str(uuid.uuid4())


def inst(iid: str | None = None, **over: Any) -> dict[str, Any]:
    """An instance row as observe() reads it (the keys of INSTANCE_FIELDS)."""
    row = {
        "id": iid or new_id(), "slug": "alpha", "kind": "game", "status": "running",
        "desired_state": "running", "suspended": False, "maintenance_lock": False,
        "node__name": "pve1", "vmid": 5000, "ip": "10.1.0.10", "ports": {"game": 30000},
        "status_changed_at": NOW - timedelta(seconds=5), "purge_after": None,
    }
    row.update(over)
    assert set(row) == set(INSTANCE_FIELDS), "the row must look like observe()'s"
    return row


def ct(vmid: int, owner: str | None, status: str = "running", node: str = "pve1",
       tags: str | None = None) -> dict[str, Any]:
    """A container as /cluster/resources lists it."""
    if tags is None:
        tags = f"zlh;zlh-{owner}" if owner else ""
    return {"vmid": vmid, "node": node, "status": status, "tags": tags, "type": "lxc"}


def world(instances: list[dict[str, Any]] = (), *, containers: list[dict[str, Any]] | None = None,
          active_ops: dict[str, dict[str, Any]] | None = None,
          agents: dict[str, Any] | None = None, edge: BulkObservation | None = None,
          sources: dict[str, str] | None = None, known_ids: set[str] | None = None,
          purged: set[str] = frozenset(), purged_slugs: set[str] = frozenset()) -> World:
    """A snapshot; Proxmox and the agents are healthy unless `sources` says otherwise, and
    Proxmox is unknown (None) when no `containers` are given."""
    rows = {str(i["id"]): i for i in instances}
    w = World(now=NOW, instances=rows, active_ops=dict(active_ops or {}),
              vmid_owner={i["vmid"]: str(i["id"]) for i in instances if i["vmid"]})
    w.sources["database"] = HEALTHY
    if containers is not None:
        w.proxmox = {c["vmid"]: c for c in containers}
        w.sources["proxmox"] = HEALTHY
    else:
        w.sources["proxmox"] = UNKNOWN
    w.sources["agents"] = HEALTHY
    if edge is not None:
        w.edge = edge
        w.sources.update(edge.sources)
    w.sources.update(sources or {})
    w.agents = dict(agents or {})
    w.known_ids = set(rows) | set(known_ids or ())
    w.known_slugs = {i["slug"].lower() for i in instances}
    w.purged_owners, w.purged_slugs = set(purged), set(purged_slugs)
    return w


def op(iid: str, *, state: str = "running", lease_age: float | None = 5.0,
       kind: str = "start") -> dict[str, Any]:
    lease = None if lease_age is None else NOW - timedelta(seconds=lease_age)
    return {"id": new_id(), "instance_id": iid, "kind": kind, "state": state,
            "lease_expires_at": lease, "created_at": NOW - timedelta(hours=2), "worker": "w-1"}


def types(findings) -> list[str]:
    return sorted(f.finding_type for f in findings)


def only(findings, finding_type: str):
    matching = [f for f in findings if f.finding_type == finding_type]
    assert len(matching) == 1, [(f.finding_type, f.subject) for f in findings]
    return matching[0]


def bulk(by_server: dict[str, dict[str, str]] | None = None, *, orphans=(),
         sources: dict[str, str] | None = None) -> BulkObservation:
    return BulkObservation(
        by_server={iid: EdgeObservation(server_id=iid, parts=dict(parts))
                   for iid, parts in (by_server or {}).items()},
        orphans=list(orphans),
        sources=sources or {"cloudflare": HEALTHY, "technitium": HEALTHY, "velocity": HEALTHY},
        calls={},
    )


# --- a healthy world has nothing to say ----------------------------------------------------------
def test_a_world_that_matches_the_database_has_no_findings():
    a, b = inst(vmid=5000), inst(vmid=5001, slug="beta", status="stopped",
                                  desired_state="stopped")
    w = world([a, b], containers=[ct(5000, a["id"]), ct(5001, b["id"], status="stopped")],
              agents={a["id"]: {"state": "running", "crash": {"count": 0}}},
              edge=bulk({a["id"]: ALL_OK}))
    assert diff(w) == []


# --- operations and transitions (database only) --------------------------------------------------
def test_a_running_operation_whose_lease_expired_long_ago_is_stale():
    a = inst(status="starting")
    stale = settings.RECONCILER_STALE_OPERATION_SECONDS
    operation = op(a["id"], lease_age=stale + 1)
    f = only(diff(world([a], active_ops={a["id"]: operation})), FindingType.STALE_OPERATION)
    assert f.action == Action.CLEAR_STALE_OPERATION_LOCK and f.level == 1
    assert f.subject == a["id"] and f.instance_id == a["id"]
    assert f.details == {"operation": operation["id"], "kind": "start", "state": "running",
                         "worker": "w-1"}
    assert f.key == f"stale_operation:{a['id']}"


@pytest.mark.parametrize("operation", [
    pytest.param({"state": "running", "lease_age": 10}, id="running-lease-recent"),
    pytest.param({"state": "queued", "lease_age": 10 ** 6}, id="queued-is-the-sweepers"),
    pytest.param({"state": "running", "lease_age": None}, id="running-no-lease"),
])
def test_operations_that_are_not_stale(operation):
    a = inst(status="starting")
    assert FindingType.STALE_OPERATION not in types(
        diff(world([a], active_ops={a["id"]: op(a["id"], **operation)})))


def test_a_transient_status_past_its_deadline_without_an_operation_is_stuck():
    stuck = settings.RECONCILER_STUCK_TRANSITION_SECONDS
    a = inst(status="starting", status_changed_at=NOW - timedelta(seconds=stuck + 1))
    fresh = inst(status="stopping", slug="fresh",
                 status_changed_at=NOW - timedelta(seconds=stuck - 1))
    busy = inst(status="restarting", slug="busy",
                status_changed_at=NOW - timedelta(seconds=stuck + 1))
    findings = diff(world([a, fresh, busy], active_ops={busy["id"]: op(busy["id"])}))
    f = only(findings, FindingType.STUCK_TRANSITION)
    assert f.instance_id == a["id"] and f.action == Action.SYNC_STATUS
    assert f.details == {"status": "starting", "desired": "running", "vmid": 5000,
                         "node": "pve1", "slug": "alpha"}


def test_a_stable_status_is_never_stuck():
    a = inst(status="running", status_changed_at=NOW - timedelta(days=30))
    assert diff(world([a])) == []


def test_a_deleted_server_past_its_purge_time_and_grace_is_due():
    grace = settings.RECONCILER_PURGE_GRACE_SECONDS
    due = inst(status="deleted", purge_after=NOW - timedelta(seconds=grace + 1))
    within = inst(status="deleted", slug="within",
                  purge_after=NOW - timedelta(seconds=grace - 1))
    future = inst(status="deleted", slug="future", purge_after=NOW + timedelta(hours=1))
    no_date = inst(status="deleted", slug="nodate", purge_after=None)
    f = only(diff(world([due, within, future, no_date])), FindingType.PURGE_DUE)
    assert f.instance_id == due["id"] and f.action == Action.PURGE and f.level == 2


def test_a_purge_in_progress_is_not_due_again():
    grace = settings.RECONCILER_PURGE_GRACE_SECONDS
    due = inst(status="deleted", purge_after=NOW - timedelta(seconds=grace + 1))
    w = world([due], active_ops={due["id"]: op(due["id"], state="queued", kind="purge")})
    assert FindingType.PURGE_DUE not in types(diff(w))


# --- Proxmox -------------------------------------------------------------------------------------
def test_a_container_with_another_owner_on_our_vmid_is_a_conflict():
    a = inst()
    w = world([a], containers=[ct(5000, None, tags="web;prod")])
    findings = diff(w)
    assert types(findings) == [FindingType.VMID_CONFLICT]
    f = findings[0]
    assert f.subject == "vmid-5000" and f.instance_id == a["id"] and f.action == Action.NOTIFY
    assert f.details["tags"] == "web;prod"


def test_a_conflict_with_a_purged_zlh_owner_is_also_an_orphan():
    a, stranger = inst(), new_id()
    findings = diff(world([a], containers=[ct(5000, stranger)], purged={stranger}))
    assert types(findings) == [FindingType.ORPHAN_CONTAINER, FindingType.VMID_CONFLICT]
    assert only(findings, FindingType.ORPHAN_CONTAINER).details["owner"] == stranger


@pytest.mark.parametrize("status", ["running", "stopped", "starting", "stopping", "restarting"])
def test_a_container_gone_from_proxmox_is_missing_and_the_status_drifted(status):
    a = inst(status=status)
    findings = diff(world([a], containers=[]))
    assert types(findings) == [FindingType.CONTAINER_MISSING, FindingType.STATUS_DRIFT]
    missing = only(findings, FindingType.CONTAINER_MISSING)
    assert missing.action == Action.RECREATE_CONTAINER and missing.level == 2
    drift = only(findings, FindingType.STATUS_DRIFT)
    assert drift.action == Action.SYNC_STATUS and drift.details["observed"] == "absent"
    assert drift.details["status"] == status


def test_a_server_already_marked_missing_only_needs_its_container():
    a = inst(status="missing")
    assert types(diff(world([a], containers=[]))) == [FindingType.CONTAINER_MISSING]


@pytest.mark.parametrize("status", ["deleted", "restoring", "pending", "failed", "provisioning"])
def test_no_container_is_expected_in_these_statuses(status):
    a = inst(status=status)
    assert [f for f in diff(world([a], containers=[]))
            if f.finding_type in (FindingType.CONTAINER_MISSING, FindingType.STATUS_DRIFT)] == []


@pytest.mark.parametrize("status,power,desired,expected", [
    ("missing", "running", "running", (FindingType.STATUS_DRIFT, Action.SYNC_STATUS)),
    ("missing", "stopped", "running", (FindingType.STATUS_DRIFT, Action.SYNC_STATUS)),
    ("running", "stopped", "stopped", (FindingType.STATUS_DRIFT, Action.SYNC_STATUS)),
    # the user stopped it and it came back up: stopped again (issue 13)
    ("stopped", "running", "stopped", (FindingType.POWER_DRIFT, Action.STOP_CONTAINER)),
    ("running", "running", "stopped", (FindingType.POWER_DRIFT, Action.STOP_CONTAINER)),
    ("stopped", "running", "running", (FindingType.STATUS_DRIFT, Action.SYNC_STATUS)),
    ("running", "stopped", "running", (FindingType.POWER_DRIFT, Action.START_CONTAINER)),
    ("stopped", "stopped", "running", (FindingType.POWER_DRIFT, Action.START_CONTAINER)),
])
def test_status_and_power_drift(status, power, desired, expected):
    a = inst(status=status, desired_state=desired)
    findings = diff(world([a], containers=[ct(5000, a["id"], status=power)]))
    assert [(f.finding_type, f.action) for f in findings] == [expected]
    assert findings[0].details["observed"] == power
    assert findings[0].instance_id == a["id"]


@pytest.mark.parametrize("status,power,desired", [
    ("running", "running", "running"),
    ("stopped", "stopped", "stopped"),
])
def test_matching_power_is_no_drift(status, power, desired):
    a = inst(status=status, desired_state=desired)
    assert diff(world([a], containers=[ct(5000, a["id"], status=power)])) == []


def test_tags_are_matched_however_proxmox_spells_them():
    a = inst()
    tags = f"ZLH, ZLH-{a['id'].upper()} other"
    assert diff(world([a], containers=[ct(5000, a["id"], tags=tags)])) == []


def test_a_tagged_container_whose_server_is_gone_is_an_orphan():
    a, gone = inst(), new_id()
    w = world([a], containers=[ct(5000, a["id"]), ct(5077, gone, node="pve2", status="stopped")],
              purged={gone})
    f = only(diff(w), FindingType.ORPHAN_CONTAINER)
    assert f.subject == "ct-5077" and f.instance_id is None
    assert f.action == Action.DESTROY_ORPHAN and f.level == 2
    assert f.details == {"vmid": 5077, "owner": gone, "node": "pve2"}


def test_a_container_of_a_server_the_database_never_knew_is_adoptable_never_destroyed():
    """After a restore from an older dump: the server exists outside, not in the database."""
    a, newer = inst(), new_id()
    container = {**ct(5077, newer, node="pve2"), "name": "newer"}
    rows = [orphan("cloudflare", newer, "newer.play.zerolaghub.com", type="A", id="r1"),
            orphan("velocity", None, "newer", address="10.1.0.9:30000")]
    w = world([a], containers=[ct(5000, a["id"]), container], edge=bulk(orphans=rows))
    f = only(diff(w), FindingType.UNKNOWN_CONTAINER)
    assert f.subject == "ct-5077" and f.action == Action.NOTIFY and f.level == 0
    assert f.details["owner"] == newer and "adopt --vmid 5077" in f.details["hint"]
    assert [x.finding_type for x in diff(w)] == [FindingType.UNKNOWN_CONTAINER]  # records folded


def test_edge_records_of_an_owner_never_known_are_reported_not_deleted():
    never = new_id()
    rows = [orphan("technitium", never, "nobody.zlh.internal", type="A"),
            orphan("velocity", None, "nobody", address="10.1.0.9:30000")]
    findings = diff(world([], edge=bulk(orphans=rows)))
    assert {f.subject for f in findings} == {"technitium:A:nobody.zlh.internal",
                                             "velocity:reg:nobody"}
    assert {f.action for f in findings} == {Action.NOTIFY}


def test_a_registration_named_like_a_container_not_ours_is_left_to_adoption():
    rows = [orphan("velocity", None, "oldapi", address="10.1.0.9:30000")]
    w = world([], containers=[{**ct(6001, None, tags="old-api"), "name": "oldapi"}],
              edge=bulk(orphans=rows))
    assert diff(w) == []


def test_a_container_of_a_server_created_while_we_listed_is_no_orphan():
    late = new_id()  # not in the instance snapshot, but read again afterwards
    w = world([], containers=[ct(5077, late)], known_ids={late})
    assert diff(w) == []


def test_untagged_containers_are_not_ours_to_call_orphans():
    w = world([], containers=[ct(6000, None, tags="web"), ct(6001, None, tags="")])
    assert diff(w) == []


def test_a_zlh_prefixed_tag_without_a_server_id_is_no_ownership_tag():
    """`zlh-staging` is a person's tag, not `zlh-<uuid>`: never a candidate for destruction."""
    w = world([], containers=[ct(6000, None, tags="zlh;zlh-staging"),
                              ct(6001, None, tags="zlh-12345")])
    assert diff(w) == []


# --- agents --------------------------------------------------------------------------------------
def test_a_running_server_whose_agent_did_not_answer_is_unreachable():
    a = inst()
    f = only(diff(world([a], containers=[ct(5000, a["id"])], agents={a["id"]: None})),
             FindingType.AGENT_UNREACHABLE)
    assert f.action == Action.NOTIFY and f.level == 0 and f.instance_id == a["id"]


def test_an_agent_not_asked_is_not_unreachable():
    a = inst()
    assert diff(world([a], containers=[ct(5000, a["id"])], agents={})) == []


def test_crash_loop_from_the_threshold_on():
    threshold = settings.RECONCILER_CRASH_LOOP_THRESHOLD
    a, b = inst(), inst(vmid=5001, slug="beta")
    agents = {a["id"]: {"crash": {"count": threshold, "reason": "OutOfMemoryError"}},
              b["id"]: {"crash": {"count": threshold - 1, "reason": "x"}}}
    w = world([a, b], containers=[ct(5000, a["id"]), ct(5001, b["id"])], agents=agents)
    f = only(diff(w), FindingType.CRASH_LOOP)
    assert f.instance_id == a["id"] and f.action == Action.NOTIFY
    assert f.details["crashes"] == threshold and f.details["reason"] == "OutOfMemoryError"


def test_agents_are_only_judged_when_the_container_runs():
    a = inst(status="running", desired_state="stopped")
    w = world([a], containers=[ct(5000, a["id"], status="stopped")], agents={a["id"]: None})
    assert FindingType.AGENT_UNREACHABLE not in types(diff(w))


# --- edge ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("broken,action", [
    ({"cloudflare_a": "missing"}, Action.DNS_REPUBLISH),
    ({"technitium_a": "wrong", "cloudflare_srv": "missing"}, Action.DNS_REPUBLISH),
    ({"velocity": "missing"}, Action.VELOCITY_REGISTER),
    ({"velocity": "wrong"}, Action.VELOCITY_REGISTER),
    ({"cloudflare_srv": "wrong", "velocity": "missing"}, Action.EDGE_REPUBLISH),
])
def test_edge_drift_picks_the_smallest_repair(broken, action):
    a = inst()
    findings = diff(world([a], edge=bulk({a["id"]: {**ALL_OK, **broken}})))
    f = only(findings, FindingType.EDGE_DRIFT)
    assert f.action == action and f.subject == a["id"] and f.instance_id == a["id"]
    assert f.details == {"parts": broken, "slug": "alpha"}


def test_a_foreign_record_is_reported_never_repaired():
    a = inst()
    parts = {**ALL_OK, "cloudflare_a": "foreign"}
    f = only(diff(world([a], edge=bulk({a["id"]: parts}))), FindingType.EDGE_DRIFT)
    assert f.action == Action.NOTIFY and f.level == 0
    assert f.subject == f"{a['id']}:foreign"
    assert f.details["parts"] == {"cloudflare_a": "foreign"}


def test_foreign_and_broken_parts_give_two_findings():
    a = inst()
    parts = {**ALL_OK, "cloudflare_a": "foreign", "velocity": "missing"}
    findings = diff(world([a], edge=bulk({a["id"]: parts})))
    assert sorted((f.subject, f.action) for f in findings) == sorted([
        (f"{a['id']}:foreign", Action.NOTIFY), (a["id"], Action.VELOCITY_REGISTER)])


def test_edge_observations_of_servers_no_longer_in_the_snapshot_are_ignored():
    assert diff(world([], edge=bulk({new_id(): {**ALL_OK, "velocity": "missing"}}))) == []


def orphan(source: str, owner: str | None, name: str = "ghost", **extra: Any) -> dict[str, Any]:
    row = {"source": source, "name": name, **extra}
    if owner:
        row["owner"] = owner
    return row


def test_edge_records_of_a_gone_server_are_orphans():
    gone = new_id()
    rows = [orphan("cloudflare", gone, "ghost.play.zerolaghub.com", type="A", id="r1"),
            orphan("technitium", gone, "ghost.zlh.internal", type="A", ip="10.1.0.9"),
            orphan("velocity", None, "ghost", address="10.1.0.9:30000")]
    findings = diff(world([], edge=bulk(orphans=rows), purged={gone}, purged_slugs={"ghost"}))
    assert types(findings) == [FindingType.EDGE_ORPHAN] * 3
    assert {f.subject for f in findings} == {"cloudflare:A:ghost.play.zerolaghub.com",
                                             "technitium:A:ghost.zlh.internal",
                                             "velocity:reg:ghost"}
    assert all(f.action == Action.DELETE_EDGE_ORPHAN and f.instance_id is None
               for f in findings)
    assert only([f for f in findings if f.subject.startswith("cloudflare")],
                FindingType.EDGE_ORPHAN).details == rows[0]


def test_edge_records_of_a_server_that_still_exists_are_no_orphans():
    stopped = inst(status="stopped", slug="sleepy")
    late = new_id()
    rows = [orphan("cloudflare", stopped["id"], "sleepy.play.zerolaghub.com", type="A"),
            orphan("technitium", late, "late.zlh.internal", type="A"),
            orphan("velocity", None, "SLEEPY")]
    assert diff(world([stopped], edge=bulk(orphans=rows), known_ids={late})) == []


# --- unknown is not absent -----------------------------------------------------------------------
def test_proxmox_unknown_yields_nothing_that_depends_on_it():
    a = inst(status="running")
    w = world([a], containers=[ct(5001, new_id())], sources={"proxmox": UNKNOWN})
    w.proxmox = {}  # a listing that says "nothing" must not count when the source is unknown
    assert diff(w) == []


def test_proxmox_healthy_but_without_a_listing_yields_nothing():
    a = inst(status="running")
    w = world([a])
    w.sources["proxmox"] = HEALTHY
    assert w.proxmox is None
    assert diff(w) == []


def test_unknown_proxmox_still_allows_database_only_findings():
    stuck = settings.RECONCILER_STUCK_TRANSITION_SECONDS
    a = inst(status="stopping", status_changed_at=NOW - timedelta(seconds=stuck + 1))
    assert types(diff(world([a]))) == [FindingType.STUCK_TRANSITION]


def test_agents_unknown_yields_no_agent_findings():
    a = inst()
    w = world([a], containers=[ct(5000, a["id"])],
              agents={a["id"]: None}, sources={"agents": UNKNOWN})
    assert diff(w) == []


def test_an_unknown_edge_source_yields_no_orphans_from_it():
    gone = new_id()
    rows = [orphan("cloudflare", gone, "ghost.play.zerolaghub.com", type="A"),
            orphan("velocity", None, "ghost")]
    w = world([], edge=bulk(orphans=rows, sources={"cloudflare": UNKNOWN,
                                                   "technitium": HEALTHY,
                                                   "velocity": HEALTHY}))
    assert [f.subject for f in diff(w)] == ["velocity:reg:ghost"]


def test_unknown_edge_parts_are_no_drift():
    a = inst()
    parts = {"cloudflare_a": "unknown", "cloudflare_srv": "unknown", "technitium_a": "ok",
             "velocity": "unknown"}
    assert diff(world([a], edge=bulk({a["id"]: parts}))) == []


# --- hands off -----------------------------------------------------------------------------------
def test_a_server_under_maintenance_lock_is_skipped_entirely():
    stuck = settings.RECONCILER_STUCK_TRANSITION_SECONDS
    a = inst(status="starting", maintenance_lock=True,
             status_changed_at=NOW - timedelta(seconds=stuck + 1))
    w = world([a], containers=[], agents={a["id"]: None},
              edge=bulk({a["id"]: {**ALL_OK, "velocity": "missing",
                                   "cloudflare_a": "foreign"}}))
    assert diff(w) == []


def test_a_deleting_server_is_left_alone_unless_stuck():
    """A delete at work is hands off; one nobody carries on is reported (never repaired)."""
    stuck = settings.RECONCILER_STUCK_TRANSITION_SECONDS
    a = inst(status="deleting", status_changed_at=NOW - timedelta(seconds=stuck - 5))
    assert diff(world([a], containers=[ct(5000, a["id"], status="stopped")])) == []
    b = inst(status="deleting", status_changed_at=NOW - timedelta(seconds=stuck + 1))
    [finding] = diff(world([b], containers=[ct(5000, b["id"], status="running")]))
    assert (finding.finding_type, finding.action) == (FindingType.STUCK_TRANSITION,
                                                      Action.NOTIFY)
    ops = {b["id"]: op(b["id"], state="queued", lease_age=None)}
    assert diff(world([b], active_ops=ops, containers=[ct(5000, b["id"])])) == []


def test_a_busy_server_gets_no_power_status_agent_or_edge_findings():
    a = inst(status="running", desired_state="running")
    b = inst(status="stopped", desired_state="stopped", vmid=5001, slug="beta")
    c = inst(status="running", vmid=5002, slug="gamma")
    ops = {i["id"]: op(i["id"], state="queued", lease_age=None) for i in (a, b, c)}
    w = world([a, b, c], active_ops=ops,
              containers=[ct(5000, a["id"], status="stopped"),
                          ct(5001, b["id"], status="running")],  # c's container is gone
              agents={a["id"]: None},
              edge=bulk({a["id"]: {**ALL_OK, "velocity": "missing", "cloudflare_a": "foreign"}}))
    assert diff(w) == []


def test_levels_match_the_action_table():
    a, gone = inst(status="running"), new_id()
    w = world([a], containers=[ct(5077, gone)])
    findings = diff(w)
    assert findings, "expected findings"
    for f in findings:
        assert f.level == ACTION_LEVEL[f.action]


# --- a node that restarted -----------------------------------------------------------------------
def _stopped_fleet(n: int, node: str, first_vmid: int) -> tuple[list, list]:
    rows = [inst(slug=f"s{first_vmid + i}", vmid=first_vmid + i, node__name=node)
            for i in range(n)]
    return rows, [ct(r["vmid"], r["id"], status="stopped", node=node) for r in rows]


def test_servers_of_one_node_found_stopped_together_are_one_finding_for_the_node(settings):
    settings.RECONCILER_NODE_EVENT_MIN = 3
    down, cts_down = _stopped_fleet(4, "pve1", 5000)
    lone, cts_lone = _stopped_fleet(1, "pve2", 6000)
    findings = diff(world(down + lone, containers=cts_down + cts_lone))
    node = only(findings, FindingType.NODE_SERVERS_DOWN)
    assert node.subject == "node-pve1" and node.action == Action.START_NODE_SERVERS
    assert node.level == 1 and node.instance_id is None
    assert node.details["servers"] == sorted(r["id"] for r in down)
    assert node.details["count"] == 4
    # One node's few stay findings of their own; nothing of pve1 is reported per server.
    drift = [f for f in findings if f.finding_type == FindingType.POWER_DRIFT]
    assert [f.instance_id for f in drift] == [lone[0]["id"]]


def test_below_the_threshold_each_server_is_its_own_finding(settings):
    settings.RECONCILER_NODE_EVENT_MIN = 3
    down, cts = _stopped_fleet(2, "pve1", 5000)
    findings = diff(world(down, containers=cts))
    assert types(findings) == [FindingType.POWER_DRIFT] * 2
