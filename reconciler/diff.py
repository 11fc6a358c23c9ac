"""Diff: compare the snapshot with what the database wants and list findings. Pure: no I/O.

A finding that depends on a source is only produced when that source is healthy (unknown is not
absent). `diff` runs the checks below in order; each looks at one aspect and appends findings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings

from core.health import Health
from core.ownership import owners_from_tags
from edge.choices import REPAIRABLE, Part, Source, Verdict
from lifecycle.choices import TRANSIENT_STATUSES, DesiredState, InstanceStatus, OperationState
from lifecycle.clients.proxmox import PowerState, parse_tags

from .choices import ACTION_LEVEL, Action, FindingType
from .observe import CONTAINER_EXPECTED, NOT_REGISTERED, ObservedSource, World

S = InstanceStatus


@dataclass
class FindingSpec:
    finding_type: str
    action: str
    subject: str
    instance_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> int:
        return ACTION_LEVEL[self.action]

    @property
    def key(self) -> str:
        return f"{self.finding_type}:{self.subject}"


def _healthy(world: World, source: str) -> bool:
    return world.sources.get(source) == Health.HEALTHY


def _proxmox_ok(world: World) -> bool:
    return _healthy(world, ObservedSource.PROXMOX) and world.proxmox is not None


def diff(world: World) -> list[FindingSpec]:
    out: list[FindingSpec] = []
    _stale_operations(world, out)
    for iid, inst in world.instances.items():
        if inst["maintenance_lock"]:
            continue  # an operator is at work: hands off
        if inst["status"] == S.DELETING:
            _stuck_delete(world, iid, inst, out)  # a delete is at work: only report it stuck
            continue
        _server_findings(world, iid, inst, out)
    if _proxmox_ok(world):
        _orphan_containers(world, out)
        _firewall_cluster(world, out)
    if world.edge is not None:
        _edge_drift(world, out)
        _stale_registrations(world, out)
        _edge_orphans(world, out)
    return _node_events(out)


def _node_events(out: list[FindingSpec]) -> list[FindingSpec]:
    """Servers of one node that should run, found stopped, RECONCILER_NODE_EVENT_MIN or more at
    once: the node restarted. They become one finding for the node (one message, one repair
    that starts them all through their normal start operations, staggered by the node's start
    limit) instead of one alert and one repair per server."""
    by_node: dict[str, list[FindingSpec]] = {}
    for f in out:
        if f.action == Action.START_CONTAINER and f.details.get("node"):
            by_node.setdefault(f.details["node"], []).append(f)
    grouped = {node: fs for node, fs in by_node.items()
               if len(fs) >= max(2, settings.RECONCILER_NODE_EVENT_MIN)}
    if not grouped:
        return out
    folded = {id(f) for fs in grouped.values() for f in fs}
    out = [f for f in out if id(f) not in folded]
    for node, fs in sorted(grouped.items()):
        out.append(FindingSpec(
            FindingType.NODE_SERVERS_DOWN, Action.START_NODE_SERVERS, f"node-{node}", None,
            {"node": node, "slug": f"node {node}", "count": len(fs),
             "servers": sorted(f.instance_id for f in fs),
             "names": sorted(f.details.get("slug", "") for f in fs)[:20]}))
    return out


def _stale_operations(world: World, out: list[FindingSpec]) -> None:
    """Only a running operation whose worker is long gone holds a stale lock: queued ones
    (including those waiting out a retry backoff) are the sweeper's to re-send."""
    stale = timedelta(seconds=settings.RECONCILER_STALE_OPERATION_SECONDS)
    for iid, op in world.active_ops.items():
        lease = op["lease_expires_at"]
        if op["state"] == OperationState.RUNNING and lease and world.now - lease > stale:
            out.append(FindingSpec(FindingType.STALE_OPERATION, Action.CLEAR_STALE_OPERATION_LOCK,
                                   subject=iid, instance_id=iid,
                                   details={"operation": str(op["id"]), "kind": op["kind"],
                                            "state": op["state"], "worker": op["worker"]}))


def _server_findings(world: World, iid: str, inst: dict[str, Any],
                     out: list[FindingSpec]) -> None:
    """Everything about one server: timing in the database, then its container, then its
    agent."""
    busy = iid in world.active_ops
    facts = {"status": inst["status"], "desired": inst["desired_state"], "vmid": inst["vmid"],
             "node": inst["node__name"], "slug": inst["slug"]}
    _timing(world, iid, inst, facts, busy, out)
    if not _proxmox_ok(world) or busy:
        return
    ct = world.proxmox.get(inst["vmid"]) if inst["vmid"] else None
    if not _container(iid, inst, ct, facts, out):
        return
    _firewall(world, iid, facts, out)
    _agent(world, iid, inst, ct, facts, out)


def _timing(world: World, iid: str, inst: dict[str, Any], facts: dict[str, Any], busy: bool,
            out: list[FindingSpec]) -> None:
    if busy:
        return
    stuck = timedelta(seconds=settings.RECONCILER_STUCK_TRANSITION_SECONDS)
    grace = timedelta(seconds=settings.RECONCILER_PURGE_GRACE_SECONDS)
    if inst["status"] in TRANSIENT_STATUSES and world.now - inst["status_changed_at"] > stuck:
        out.append(FindingSpec(FindingType.STUCK_TRANSITION, Action.SYNC_STATUS, iid, iid, facts))
    if inst["status"] == S.DELETED and inst["purge_after"] and \
            world.now - inst["purge_after"] > grace:
        out.append(FindingSpec(FindingType.PURGE_DUE, Action.PURGE, iid, iid, facts))


def _stuck_delete(world: World, iid: str, inst: dict[str, Any], out: list[FindingSpec]) -> None:
    """A delete that nobody carries on (it failed, or its worker vanished): the operator is
    told; asking for the delete again carries on from where it stopped."""
    stuck = timedelta(seconds=settings.RECONCILER_STUCK_TRANSITION_SECONDS)
    if iid not in world.active_ops and world.now - inst["status_changed_at"] > stuck:
        out.append(FindingSpec(FindingType.STUCK_TRANSITION, Action.NOTIFY, iid, iid,
                               {"status": inst["status"], "slug": inst["slug"],
                                "vmid": inst["vmid"], "since": inst["status_changed_at"]}))


def _container(iid: str, inst: dict[str, Any], ct: dict[str, Any] | None,
               facts: dict[str, Any], out: list[FindingSpec]) -> bool:
    """The container against the status; True when it exists, is ours, and the agent check
    makes sense."""
    status = inst["status"]
    if ct is not None and iid not in owners_from_tags(parse_tags(ct.get("tags"))):
        out.append(FindingSpec(FindingType.VMID_CONFLICT, Action.NOTIFY, f"vmid-{inst['vmid']}",
                               iid, {**facts, "tags": ct.get("tags", "")}))
        return False
    moved_to = ct.get("node") if ct is not None else None
    if moved_to and moved_to != inst["node__name"]:
        # Ours, under its VMID (unique cluster-wide), on another node: moved (HA, a manual
        # migration), not missing. Recording the move comes first; the other checks judge
        # the container where it is in the next cycle.
        out.append(FindingSpec(FindingType.CONTAINER_MOVED, Action.RECORD_MOVE, iid, iid,
                               {**facts, "observed_node": moved_to,
                                "observed": ct.get("status")}))
        return False
    if ct is None:
        if status in CONTAINER_EXPECTED and status not in (S.DELETED, S.RESTORING):
            out.append(FindingSpec(FindingType.CONTAINER_MISSING, Action.RECREATE_CONTAINER, iid,
                                   iid, facts))
            if status != S.MISSING:
                out.append(FindingSpec(FindingType.STATUS_DRIFT, Action.SYNC_STATUS, iid, iid,
                                       {**facts, "observed": "absent"}))
        return False
    power = ct.get("status")
    observed = {**facts, "observed": power}
    wants_running = inst["desired_state"] == DesiredState.RUNNING
    wants_stopped = inst["desired_state"] == DesiredState.STOPPED
    if status in (S.RUNNING, S.STOPPED) and power == PowerState.RUNNING and wants_stopped:
        # The user stopped it and it came back up (someone started it behind our back, or a
        # stop failed): stopped again, like a server that should run is started again.
        out.append(FindingSpec(FindingType.POWER_DRIFT, Action.STOP_CONTAINER, iid, iid,
                               observed))
        return True
    if status == S.MISSING:
        out.append(FindingSpec(FindingType.STATUS_DRIFT, Action.SYNC_STATUS, iid, iid, observed))
    elif status == S.RUNNING and power == PowerState.STOPPED:
        if wants_running:
            out.append(FindingSpec(FindingType.POWER_DRIFT, Action.START_CONTAINER, iid, iid,
                                   observed))
        else:
            out.append(FindingSpec(FindingType.STATUS_DRIFT, Action.SYNC_STATUS, iid, iid,
                                   observed))
    elif status == S.STOPPED and power == PowerState.RUNNING:
        out.append(FindingSpec(FindingType.STATUS_DRIFT, Action.SYNC_STATUS, iid, iid, observed))
    elif status == S.STOPPED and power == PowerState.STOPPED and wants_running:
        # Wanted running but left stopped (a start that failed for good): start it.
        out.append(FindingSpec(FindingType.POWER_DRIFT, Action.START_CONTAINER, iid, iid,
                               observed))
    return True


def _agent(world: World, iid: str, inst: dict[str, Any], ct: dict[str, Any],
           facts: dict[str, Any], out: list[FindingSpec]) -> None:
    if not (inst["status"] == S.RUNNING and ct.get("status") == PowerState.RUNNING
            and _healthy(world, ObservedSource.AGENTS)):
        return
    if iid in world.legacy_agents:
        out.append(FindingSpec(FindingType.AGENT_LEGACY_CREDENTIAL, Action.NOTIFY, iid, iid,
                               {**facts, "until": settings.AGENT_LEGACY_TOKEN_UNTIL or "-"}))
    agent = world.agents.get(iid, "absent")  # absent: over the probe budget, not observed
    if agent is None:
        out.append(FindingSpec(FindingType.AGENT_UNREACHABLE, Action.NOTIFY, iid, iid, facts))
    elif isinstance(agent, dict):
        crash = agent.get("crash") or {}
        if crash.get("count", 0) >= settings.RECONCILER_CRASH_LOOP_THRESHOLD:
            out.append(FindingSpec(FindingType.CRASH_LOOP, Action.NOTIFY, iid, iid,
                                   {**facts, "crashes": crash.get("count"),
                                    "reason": crash.get("reason")}))
        streak = agent.get("memoryHighStreak") or 0
        if streak >= settings.RECONCILER_MEMORY_PRESSURE_HEARTBEATS:
            out.append(FindingSpec(FindingType.MEMORY_PRESSURE, Action.NOTIFY, iid, iid,
                                   {**facts, "heartbeats_above": streak,
                                    "percent": settings.AGENT_MEMORY_PRESSURE_PERCENT}))
        if iid in world.silent_heartbeats and settings.RECONCILER_EXPECT_HEARTBEATS:
            out.append(FindingSpec(FindingType.HEARTBEAT_STALE, Action.NOTIFY, iid, iid,
                                   facts))


def _firewall(world: World, iid: str, facts: dict[str, Any], out: list[FindingSpec]) -> None:
    """The container's firewall as last checked (this cycle or an earlier one)."""
    if not _healthy(world, ObservedSource.FIREWALL):
        return
    verdict = world.firewalls.get(iid) or {}
    if verdict.get("state") == "drift":
        out.append(FindingSpec(FindingType.FIREWALL_DRIFT, Action.FIREWALL_APPLY, iid, iid,
                               {**facts, "problems": verdict.get("problems", [])}))
    if verdict.get("foreign"):
        out.append(FindingSpec(FindingType.FIREWALL_FOREIGN_RULE, Action.NOTIFY,
                               f"{iid}:firewall-foreign", iid,
                               {**facts, "rules": verdict["foreign"]}))


def _firewall_cluster(world: World, out: list[FindingSpec]) -> None:
    """The datacenter switch (the operator's) and the IP sets our rules name (ours)."""
    cluster = world.firewall_cluster
    if cluster is None or not _healthy(world, ObservedSource.FIREWALL):
        return
    if not cluster["enabled"]:
        out.append(FindingSpec(FindingType.FIREWALL_DISABLED, Action.NOTIFY, "cluster", None,
                               {"slug": "datacenter firewall",
                                "hint": "enable it in Datacenter > Firewall > Options"}))
    if cluster["ipsets"]:
        out.append(FindingSpec(FindingType.FIREWALL_DRIFT, Action.FIREWALL_APPLY, "ipsets",
                               None, {"slug": "cluster IP sets", "ipsets": cluster["ipsets"]}))


def _orphan_containers(world: World, out: list[FindingSpec]) -> None:
    """Containers with our tag whose server does not exist (also not created meanwhile). The
    server was purged: an orphan. The database never knew the server (restored from a dump
    older than it): unknown, reported with the command that adopts it back; never destroyed."""
    live = set(world.instances) | world.known_ids
    for vmid, ct in world.proxmox.items():
        for owner in owners_from_tags(parse_tags(ct.get("tags"))):
            if owner in live:
                continue
            if owner in world.purged_owners:
                out.append(FindingSpec(FindingType.ORPHAN_CONTAINER, Action.DESTROY_ORPHAN,
                                       f"ct-{vmid}", None,
                                       {"vmid": vmid, "owner": owner, "node": ct.get("node")}))
            else:
                out.append(FindingSpec(
                    FindingType.UNKNOWN_CONTAINER, Action.NOTIFY, f"ct-{vmid}", None,
                    {"vmid": vmid, "owner": owner, "node": ct.get("node"),
                     "slug": ct.get("name") or f"CT {vmid}", "power": ct.get("status"),
                     "hint": f"manage.py adopt --vmid {vmid} (dry run), then add --apply"}))


def _unknown_containers(world: World) -> tuple[set[str], set[str]]:
    """(owners, hostnames) of containers whose server the database never knew: their records
    and registrations are part of that finding, not orphans of their own."""
    if world.proxmox is None:
        return set(), set()
    live = set(world.instances) | world.known_ids | world.purged_owners
    owners, names = set(), set()
    for ct in world.proxmox.values():
        unknown = owners_from_tags(parse_tags(ct.get("tags"))) - live
        if unknown:
            owners |= unknown
            if ct.get("name"):
                names.add(str(ct["name"]).lower())
    return owners, names


def _edge_drift(world: World, out: list[FindingSpec]) -> None:
    for iid, obs in world.edge.by_server.items():
        inst = world.instances.get(iid)
        if inst is None or inst["maintenance_lock"] or iid in world.active_ops:
            continue
        if _proxmox_ok(world) and inst["vmid"] not in world.proxmox:
            continue  # its container is gone (container_missing): nothing to publish for
        broken = {p: v for p, v in obs.parts.items() if v in REPAIRABLE}
        foreign = {p: v for p, v in obs.parts.items() if v == Verdict.FOREIGN}
        if foreign:
            out.append(FindingSpec(FindingType.EDGE_DRIFT, Action.NOTIFY, f"{iid}:foreign",
                                   iid, {"parts": foreign, "problems": obs.problems,
                                         "slug": inst["slug"]}))
        if not broken:
            continue
        dns = {p for p in broken if p != Part.VELOCITY}
        action = (Action.EDGE_REPUBLISH if dns and Part.VELOCITY in broken
                  else Action.DNS_REPUBLISH if dns else Action.VELOCITY_REGISTER)
        out.append(FindingSpec(FindingType.EDGE_DRIFT, action, iid, iid,
                               {"parts": broken, "slug": inst["slug"]}))


def _stale_registrations(world: World, out: list[FindingSpec]) -> None:
    """Velocity registrations of ours for a server that must not have one (stopped, deleted,
    failed…): players would be sent to a backend that does not answer. Those of a server that
    does not exist are orphans (below); those of a busy server belong to its operation."""
    if not _healthy(world, Source.VELOCITY):
        return
    by_slug = {inst["slug"].lower(): (iid, inst) for iid, inst in world.instances.items()}
    for name, reg in world.edge.registrations.items():
        iid, inst = by_slug.get(name.lower(), (None, None))
        if inst is None or inst["maintenance_lock"] or iid in world.active_ops:
            continue
        if inst["status"] in NOT_REGISTERED:
            out.append(FindingSpec(FindingType.EDGE_DRIFT, Action.VELOCITY_UNREGISTER,
                                   f"{iid}:velocity", iid,
                                   {"slug": inst["slug"], "status": inst["status"],
                                    "registration": name, "address": reg.get("address")}))


def _edge_orphans(world: World, out: list[FindingSpec]) -> None:
    """Records and registrations of a server that is gone. Those of a server that still exists
    (stopping, deleting, stopped…) belong to its own flows."""
    slugs = {i["slug"].lower() for i in world.instances.values()} | world.known_slugs
    unknown_owners, unknown_names = _unknown_containers(world)
    foreign_names = {str(ct.get("name")).lower() for ct in (world.proxmox or {}).values()
                     if ct.get("name") and not owners_from_tags(parse_tags(ct.get("tags")))}
    for orphan in world.edge.orphans:
        if not _healthy(world, orphan["source"]):
            continue
        owner = orphan.get("owner")
        if (owner and (owner in world.instances or owner in world.known_ids)) or (
                orphan["source"] == Source.VELOCITY and orphan["name"].lower() in slugs):
            continue
        if owner in unknown_owners or (orphan["source"] == Source.VELOCITY
                                       and orphan["name"].lower() in unknown_names):
            continue  # its container is reported (unknown_container) and adopted with it
        if orphan["source"] == Source.VELOCITY and orphan["name"].lower() in foreign_names:
            continue  # a container not ours by that name: the old API's, to be adopted
        subject = f"{orphan['source']}:{orphan.get('type', 'reg')}:{orphan['name']}"
        never_ours = (owner not in world.purged_owners if owner else
                      orphan["source"] == Source.VELOCITY
                      and orphan["name"].lower() not in world.purged_slugs)
        if never_ours:
            # Marked for (or named like) no server this database ever knew: reported, never
            # deleted. Only what a purged server of ours left behind is removed.
            out.append(FindingSpec(FindingType.EDGE_ORPHAN, Action.NOTIFY, subject, None,
                                   {**orphan, "hint": "of no server this database knows"}))
            continue
        out.append(FindingSpec(FindingType.EDGE_ORPHAN, Action.DELETE_EDGE_ORPHAN, subject,
                               None, orphan))
