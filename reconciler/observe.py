"""Observe: one snapshot of the database and of every source, with a constant number of calls
per source (agents aside: one status call per server that should be running, in parallel with
a bound). Each source reports healthy or unknown; principle 7: unknown is not absent."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings

from core.clock import db_now
from core.health import Health
from core.ownership import owners_from_tags
from edge.errors import EdgeError
from edge.services import BulkObservation, EdgeClients, observe_edge_bulk
from lifecycle.choices import (
    ACTIVE_OPERATION_STATES,
    AllocationState,
    InstanceStatus,
    Kind,
    PoolKind,
)
from lifecycle.clients.agent import AgentClient, AgentError
from lifecycle.clients.proxmox import PowerState, ProxmoxClient, ProxmoxError, parse_tags
from lifecycle.firewall import enabled as firewall_enabled
from lifecycle.models import (
    AgentCredential,
    AgentHeartbeat,
    Allocation,
    ContainerInstance,
    Operation,
)
from lifecycle.services.edge import edge_target_for
from lifecycle.services.firewall import Target, firewall_check, ipsets_check

from .models import ServerObservation

logger = logging.getLogger(__name__)
class ObservedSource(StrEnum):
    """The sources the reconciler reads besides the edge's (edge.choices.Source)."""

    DATABASE = "database"
    PROXMOX = "proxmox"
    AGENTS = "agents"
    FIREWALL = "firewall"


#: Statuses in which the server's container should exist in Proxmox.
CONTAINER_EXPECTED = frozenset({
    InstanceStatus.RUNNING, InstanceStatus.STOPPED, InstanceStatus.STARTING,
    InstanceStatus.STOPPING, InstanceStatus.RESTARTING, InstanceStatus.MISSING,
    InstanceStatus.DELETED, InstanceStatus.RESTORING,
})
#: Statuses in which a server must not be registered with Velocity: a stop unregisters it
#: first, a delete unpublishes it, and nothing answers players in the others. (Servers in a
#: transient status belong to the operation at work, or to the stuck-transition check.)
NOT_REGISTERED = frozenset({
    InstanceStatus.PENDING, InstanceStatus.STOPPED, InstanceStatus.FAILED,
    InstanceStatus.MISSING, InstanceStatus.DELETED,
})
INSTANCE_FIELDS = ("id", "slug", "kind", "status", "desired_state", "suspended",
                   "maintenance_lock", "node__name", "vmid", "ip", "ports", "status_changed_at",
                   "purge_after")


@dataclass
class World:
    now: datetime
    instances: dict[str, dict[str, Any]]
    active_ops: dict[str, dict[str, Any]]
    vmid_owner: dict[int, str]
    proxmox: dict[int, dict[str, Any]] | None = None
    edge: BulkObservation | None = None
    agents: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    #: source -> why it is unknown
    problems: dict[str, str] = field(default_factory=dict)
    #: Servers (not purged) and their slugs, read again after every source was listed: a
    #: server created while we listed is not mistaken for the owner-less one of an orphan.
    known_ids: set[str] = field(default_factory=set)
    known_slugs: set[str] = field(default_factory=set)
    #: Agents asked directly (their heartbeat stale or missing) that answered.
    silent_heartbeats: set[str] = field(default_factory=set)
    #: Agents with a stale or missing heartbeat left unasked this cycle (over the budget).
    unprobed_agents: int = 0
    #: Owners named by our tags or record comments that are not live servers but have a row
    #: (purged): their leftovers are orphans. An owner with no row at all is unknown to this
    #: database (restored from an older dump): its container is adoptable, never destroyed.
    purged_owners: set[str] = field(default_factory=set)
    #: Names of Velocity registrations of ours (by forced host) with no live server that are
    #: the slug of a purged server: only those are proven leftovers of ours.
    purged_slugs: set[str] = field(default_factory=set)
    #: Servers whose agent is still driven with the old shared token (AgentCredential).
    legacy_agents: set[str] = field(default_factory=set)
    #: Container firewall verdicts (Verdict.as_dict) by server: those checked this cycle and,
    #: for the others, the last one stored (ServerObservation.firewall).
    firewalls: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The servers whose firewall this cycle checked (their verdicts are stored).
    firewalls_checked: set[str] = field(default_factory=set)
    #: The cluster side of the firewall: {"enabled": bool, "ipsets": {name: diff}}; None when
    #: not observed (firewall off, or Proxmox unknown).
    firewall_cluster: dict[str, Any] | None = None


def observe(*, renew=lambda: None) -> World:
    """Take the snapshot; `renew` is called between sources (lease renewal)."""
    now = db_now()  # compared with leases and status times the database wrote
    instances = {
        str(row["id"]): row for row in ContainerInstance.objects.exclude(
            status=InstanceStatus.PURGED).values(*INSTANCE_FIELDS)
    }
    active_ops = {
        str(row["instance_id"]): row for row in Operation.objects.filter(
            state__in=ACTIVE_OPERATION_STATES).values(
            "id", "instance_id", "kind", "state", "lease_expires_at", "created_at", "worker")
    }
    vmid_owner = {
        int(v): str(i) for v, i in Allocation.objects.filter(
            pool__kind=PoolKind.VMID, state=AllocationState.CLAIMED).values_list(
            "value", "instance_id")
    }
    world = World(now=now, instances=instances, active_ops=active_ops, vmid_owner=vmid_owner)
    world.sources[ObservedSource.DATABASE] = Health.HEALTHY
    renew()
    _observe_proxmox(world)
    renew()
    _observe_edge(world)
    renew()
    _observe_agents(world)
    renew()
    _observe_firewalls(world)
    world.legacy_agents = {str(i) for i in AgentCredential.objects.filter(
        legacy_since__isnull=False).values_list("server_id", flat=True)}
    for iid, slug in ContainerInstance.objects.exclude(status=InstanceStatus.PURGED).values_list(
            "id", "slug"):
        world.known_ids.add(str(iid))
        world.known_slugs.add(slug.lower())
    _purged_owners(world)
    return world


def _purged_owners(world: World) -> None:
    """Which of the owners named outside without a live server have a (purged) row."""
    named: set[str] = set()
    for ct in (world.proxmox or {}).values():
        named |= owners_from_tags(parse_tags(ct.get("tags")))
    named |= {o["owner"] for o in (world.edge.orphans if world.edge else ()) if o.get("owner")}
    named -= world.known_ids
    if named:
        world.purged_owners = {str(i) for i in ContainerInstance.objects.filter(
            id__in=list(named)).values_list("id", flat=True)}
    names = {o["name"].lower() for o in (world.edge.orphans if world.edge else ())
             if o.get("source") == "velocity"} - world.known_slugs
    if names:
        world.purged_slugs = {s.lower() for s in ContainerInstance.objects.filter(
            status=InstanceStatus.PURGED, slug__in=list(names)).values_list("slug", flat=True)}


def _observe_proxmox(world: World) -> None:
    client = ProxmoxClient.from_settings()
    try:
        resources = client.cluster_resources()
    except ProxmoxError as err:
        world.sources[ObservedSource.PROXMOX] = Health.UNKNOWN
        world.problems[ObservedSource.PROXMOX] = f"Proxmox unknown: {err.message}"
        return
    finally:
        world.calls[ObservedSource.PROXMOX] = client.calls
    by_vmid = {int(r["vmid"]): r for r in resources if r.get("type") == "lxc" and "vmid" in r}
    expected = [i for i in world.instances.values() if i["status"] in CONTAINER_EXPECTED]
    seen = sum(1 for i in expected if i["vmid"] in by_vmid)
    # Implausible: Proxmox says "nothing" (or nearly) while we run many servers. An empty list
    # from a confused API must not read as "every container vanished".
    if expected and len(expected) >= 3 and seen == 0:
        world.sources[ObservedSource.PROXMOX] = Health.UNKNOWN
        world.problems[ObservedSource.PROXMOX] = (
            f"Proxmox implausible: lists {len(by_vmid)} containers, none of the "
            f"{len(expected)} we expect")
        return
    world.proxmox = by_vmid
    world.sources[ObservedSource.PROXMOX] = Health.HEALTHY


def _observe_edge(world: World) -> None:
    """One listing per edge source. Verdicts for the running game servers (the targets); and
    every Velocity registration we own, whatever its server's status (`registrations`): a
    stopped or deleted server's registration is only found with the full view."""
    targets = []
    for inst in world.instances.values():
        if inst["kind"] == Kind.GAME and inst["status"] == InstanceStatus.RUNNING:
            target = _target(inst)
            if target is not None:
                targets.append(target)
    clients = EdgeClients()
    try:
        world.edge = observe_edge_bulk(targets, clients=clients)
    except EdgeError as err:  # observe_edge_bulk marks sources itself; this is a bug guard
        world.problems["edge"] = f"edge unknown: {err.message}"
    world.calls.update({f"edge_{k}": v for k, v in clients.calls().items()})
    for source, health in (world.edge.sources if world.edge else {}).items():
        world.sources[source] = health
        if health != Health.HEALTHY:
            world.problems[source] = f"{source} unknown: its listing failed"


def _target(inst: dict[str, Any]):
    stub = ContainerInstance(id=inst["id"], slug=inst["slug"], kind=inst["kind"],
                             ip=inst["ip"], ports=inst["ports"])
    return edge_target_for(stub)


def should_have_agent(world: World, inst: dict[str, Any]) -> bool:
    if inst["status"] != InstanceStatus.RUNNING or world.proxmox is None:
        return False
    ct = world.proxmox.get(inst["vmid"])
    return ct is not None and ct.get("status") == PowerState.RUNNING


def heartbeat_stale_after() -> float:
    """Seconds after which a heartbeat no longer counts as an observation."""
    return float(settings.AGENT_HEARTBEAT_STALE_SECONDS
                 or 3 * settings.AGENT_HEARTBEAT_INTERVAL_SECONDS)


def heartbeat_as_status(row: dict[str, Any]) -> dict[str, Any]:
    """A heartbeat in the shape of the agent's `/status` answer (what diff reads)."""
    crash = row["last_crash"] or {}
    return {"state": row["state"], "provisioningComplete": row["provisioning_complete"],
            "ready": row["ready"],
            "crash": ({"count": row["crash_count"], "reason": crash.get("classification")}
                      if row["crash_count"] else None),
            "memoryHighStreak": row["memory_high_streak"], "viaHeartbeat": True}


def _observe_agents(world: World) -> None:
    """Agents push heartbeats; one query reads them all. Only an agent whose heartbeat is
    missing or stale is asked directly, at most RECONCILER_AGENT_PROBE_BUDGET per cycle (those
    never heard from first, then the stalest); the rest stay unobserved this cycle (nothing is
    concluded about them) and come up in later cycles."""
    wanted = [i for i in world.instances.values() if should_have_agent(world, i)]
    if not wanted:
        world.sources[ObservedSource.AGENTS] = Health.HEALTHY
        world.calls[ObservedSource.AGENTS] = 0
        return
    fields = ("server_id", "received_at", "state", "provisioning_complete", "ready",
              "crash_count", "last_crash", "memory_high_streak")
    beats = {str(row["server_id"]): row for row in AgentHeartbeat.objects.values(*fields)}
    cutoff = world.now - timedelta(seconds=heartbeat_stale_after())
    stale: list[tuple[datetime | None, dict[str, Any]]] = []
    for inst in wanted:
        row = beats.get(str(inst["id"]))
        if row is not None and row["received_at"] >= cutoff:
            world.agents[str(inst["id"])] = heartbeat_as_status(row)
        else:
            stale.append((row["received_at"] if row else None, inst))
    stale.sort(key=lambda item: (item[0] is not None, item[0] or world.now))
    budget = max(0, settings.RECONCILER_AGENT_PROBE_BUDGET)
    probe = [inst for _, inst in stale[:budget]]
    world.unprobed_agents = len(stale) - len(probe)

    def check(inst: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        client = AgentClient.for_instance(ip=inst["ip"], vmid=inst["vmid"], server_id=inst["id"])
        client.timeout = settings.RECONCILER_AGENT_TIMEOUT
        try:
            return str(inst["id"]), client.status()
        except AgentError:
            return str(inst["id"]), None
        finally:
            client.close()

    answered = 0
    if probe:
        with ThreadPoolExecutor(max_workers=settings.RECONCILER_AGENT_PARALLELISM) as pool:
            for server_id, status in pool.map(check, probe):
                world.agents[server_id] = status
                if status is not None:
                    answered += 1
                    # It answers when asked but its heartbeats do not arrive.
                    world.silent_heartbeats.add(server_id)
    world.calls[ObservedSource.AGENTS] = len(probe)
    world.calls["agent_heartbeats"] = len(wanted) - len(stale)
    world.calls["agents_unprobed"] = world.unprobed_agents
    # Every probed agent silent at once is a network problem on our side, not N broken
    # servers (and with heartbeats missing too: the receiver or the way to it).
    if len(probe) >= 3 and answered == 0:
        world.sources[ObservedSource.AGENTS] = Health.UNKNOWN
        world.problems[ObservedSource.AGENTS] = (
            f"agents unknown: none of {len(probe)} asked directly answered")
    else:
        world.sources[ObservedSource.AGENTS] = Health.HEALTHY


def firewall_candidates(world: World) -> list[dict[str, Any]]:
    """Servers whose container firewall can be judged now: the container is listed, ours, on
    the row's node, and neither an operation nor an operator is at work on the server."""
    out = []
    for iid, inst in world.instances.items():
        ct = world.proxmox.get(inst["vmid"]) if inst["vmid"] else None
        if (ct is None or inst["maintenance_lock"] or iid in world.active_ops
                or ct.get("node") != inst["node__name"]
                or iid not in owners_from_tags(parse_tags(ct.get("tags")))):
            continue
        out.append(inst)
    return out


def _observe_firewalls(world: World) -> None:
    """The cluster side every cycle (datacenter switch, our IP sets: 5 calls), and at most
    RECONCILER_FIREWALL_CHECKS containers (3 calls each, never checked first, then the longest
    unchecked). The other servers keep their last verdict (one query reads them all): a check
    is not repeated every cycle, and a drift found stays found until it is checked again."""
    if not firewall_enabled() or world.proxmox is None:
        return
    stored = {str(row["instance_id"]): row for row in ServerObservation.objects.values(
        "instance_id", "firewall", "firewall_checked_at")}
    world.firewalls = {iid: row["firewall"] for iid, row in stored.items()
                       if row["firewall"] and iid in world.instances}
    client = ProxmoxClient.from_settings()
    try:
        options = client.cluster_firewall_options()
        world.firewall_cluster = {"enabled": bool(options.get("enable")),
                                  "ipsets": ipsets_check(client)}
    except ProxmoxError as err:
        world.sources[ObservedSource.FIREWALL] = Health.UNKNOWN
        world.problems[ObservedSource.FIREWALL] = f"firewall unknown: {err.message}"
        world.calls[ObservedSource.FIREWALL] = client.calls
        return
    budget = max(0, settings.RECONCILER_FIREWALL_CHECKS)
    candidates = firewall_candidates(world)
    candidates.sort(key=lambda i: (stored.get(str(i["id"]), {}).get("firewall_checked_at")
                                   is not None,
                                   stored.get(str(i["id"]), {}).get("firewall_checked_at")
                                   or world.now))
    chosen = candidates[:budget]
    calls = [client.calls]

    def check(inst: dict[str, Any]) -> tuple[str, dict[str, Any] | None, int]:
        pve = ProxmoxClient.from_settings()
        target = Target(server_id=inst["id"], kind=inst["kind"], ports=inst["ports"] or {},
                        node=inst["node__name"], vmid=inst["vmid"])
        try:
            verdict = firewall_check(pve, target)
            return str(inst["id"]), verdict.as_dict() if verdict else None, pve.calls
        except ProxmoxError as err:
            logger.info("firewall of CT %s not checked: %s", inst["vmid"], err.message)
            return str(inst["id"]), None, pve.calls

    if chosen:
        workers = max(1, settings.RECONCILER_FIREWALL_PARALLELISM)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for iid, verdict, used in pool.map(check, chosen):
                calls.append(used)
                if verdict is not None:
                    world.firewalls[iid] = verdict
                    world.firewalls_checked.add(iid)
    world.calls[ObservedSource.FIREWALL] = sum(calls)
    world.calls["firewall_checks"] = len(world.firewalls_checked)
    world.sources[ObservedSource.FIREWALL] = Health.HEALTHY
