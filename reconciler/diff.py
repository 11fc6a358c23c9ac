"""Diff: compare the snapshot with what the database wants and list findings. Pure: no I/O.
A finding that depends on a source is only produced when that source is healthy."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings

from lifecycle.choices import TRANSIENT_STATUSES, DesiredState, InstanceStatus
from lifecycle.clients.proxmox import parse_tags

from .choices import ACTION_LEVEL, Action, FindingType
from .observe import CONTAINER_EXPECTED, HEALTHY, World

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
    return world.sources.get(source) == HEALTHY


def diff(world: World) -> list[FindingSpec]:
    out: list[FindingSpec] = []
    stale = timedelta(seconds=settings.RECONCILER_STALE_OPERATION_SECONDS)
    stuck = timedelta(seconds=settings.RECONCILER_STUCK_TRANSITION_SECONDS)
    grace = timedelta(seconds=settings.RECONCILER_PURGE_GRACE_SECONDS)

    for iid, op in world.active_ops.items():
        # Only a running operation whose worker is long gone holds a stale lock: queued ones
        # (including those waiting out a retry backoff) are the sweeper's to re-send.
        lease = op["lease_expires_at"]
        if op["state"] == "running" and lease and world.now - lease > stale:
            out.append(FindingSpec(FindingType.STALE_OPERATION, Action.CLEAR_STALE_OPERATION_LOCK,
                                   subject=iid, instance_id=iid,
                                   details={"operation": str(op["id"]), "kind": op["kind"],
                                            "state": op["state"], "worker": op["worker"]}))

    proxmox_ok = _healthy(world, "proxmox") and world.proxmox is not None
    tag_owner: dict[str, int] = {}
    if proxmox_ok:
        for vmid, ct in world.proxmox.items():
            for tag in parse_tags(ct.get("tags")):
                if tag.startswith("zlh-"):
                    tag_owner[tag[4:]] = vmid

    for iid, inst in world.instances.items():
        if inst["maintenance_lock"] or inst["status"] == S.DELETING:
            continue  # an operator or a delete is at work: hands off
        busy = iid in world.active_ops
        status, vmid = inst["status"], inst["vmid"]
        facts = {"status": status, "desired": inst["desired_state"], "vmid": vmid,
                 "node": inst["node__name"], "slug": inst["slug"]}

        if status in TRANSIENT_STATUSES and not busy and \
                world.now - inst["status_changed_at"] > stuck:
            out.append(FindingSpec(FindingType.STUCK_TRANSITION, Action.SYNC_STATUS, iid, iid,
                                   facts))

        if status == S.DELETED and inst["purge_after"] and not busy and \
                world.now - inst["purge_after"] > grace:
            out.append(FindingSpec(FindingType.PURGE_DUE, Action.PURGE, iid, iid, facts))

        if not proxmox_ok or busy:
            continue
        ct = world.proxmox.get(vmid) if vmid else None
        ours = ct is not None and iid in {t[4:] for t in parse_tags(ct.get("tags"))
                                          if t.startswith("zlh-")}
        if ct is not None and not ours:
            out.append(FindingSpec(FindingType.VMID_CONFLICT, Action.NOTIFY, f"vmid-{vmid}", iid,
                                   {**facts, "tags": ct.get("tags", "")}))
            continue
        if status in CONTAINER_EXPECTED and status not in (S.DELETED, S.RESTORING) and ct is None:
            out.append(FindingSpec(FindingType.CONTAINER_MISSING, Action.RECREATE_CONTAINER, iid,
                                   iid, facts))
            if status != S.MISSING:
                out.append(FindingSpec(FindingType.STATUS_DRIFT, Action.SYNC_STATUS, iid, iid,
                                       {**facts, "observed": "absent"}))
            continue
        if ct is None:
            continue
        power = ct.get("status")
        if status == S.MISSING:
            out.append(FindingSpec(FindingType.STATUS_DRIFT, Action.SYNC_STATUS, iid, iid,
                                   {**facts, "observed": power}))
        elif status == S.RUNNING and power == "stopped":
            if inst["desired_state"] == DesiredState.RUNNING:
                out.append(FindingSpec(FindingType.POWER_DRIFT, Action.START_CONTAINER, iid, iid,
                                       {**facts, "observed": power}))
            else:
                out.append(FindingSpec(FindingType.STATUS_DRIFT, Action.SYNC_STATUS, iid, iid,
                                       {**facts, "observed": power}))
        elif status == S.STOPPED and power == "running":
            out.append(FindingSpec(FindingType.STATUS_DRIFT, Action.SYNC_STATUS, iid, iid,
                                   {**facts, "observed": power}))
        elif status == S.STOPPED and power == "stopped" and \
                inst["desired_state"] == DesiredState.RUNNING:
            # Wanted running but left stopped (a start that failed for good): start it.
            out.append(FindingSpec(FindingType.POWER_DRIFT, Action.START_CONTAINER, iid, iid,
                                   {**facts, "observed": power}))

        if status == S.RUNNING and power == "running" and _healthy(world, "agents"):
            agent = world.agents.get(iid, "absent")
            if agent is None:
                out.append(FindingSpec(FindingType.AGENT_UNREACHABLE, Action.NOTIFY, iid, iid,
                                       facts))
            elif isinstance(agent, dict):
                crash = agent.get("crash") or {}
                if crash.get("count", 0) >= settings.RECONCILER_CRASH_LOOP_THRESHOLD:
                    out.append(FindingSpec(FindingType.CRASH_LOOP, Action.NOTIFY, iid, iid,
                                           {**facts, "crashes": crash.get("count"),
                                            "reason": crash.get("reason")}))

    if proxmox_ok:
        live = set(world.instances) | world.known_ids
        for owner, vmid in tag_owner.items():
            if owner not in live:
                out.append(FindingSpec(FindingType.ORPHAN_CONTAINER, Action.DESTROY_ORPHAN,
                                       f"ct-{vmid}", None,
                                       {"vmid": vmid, "owner": owner,
                                        "node": world.proxmox[vmid].get("node")}))

    if world.edge is not None:
        for iid, obs in world.edge.by_server.items():
            inst = world.instances.get(iid)
            if inst is None or inst["maintenance_lock"] or iid in world.active_ops:
                continue
            broken = {p: v for p, v in obs.parts.items() if v in ("missing", "wrong")}
            foreign = {p: v for p, v in obs.parts.items() if v == "foreign"}
            if foreign:
                out.append(FindingSpec(FindingType.EDGE_DRIFT, Action.NOTIFY, f"{iid}:foreign",
                                       iid, {"parts": foreign, "problems": obs.problems,
                                             "slug": inst["slug"]}))
            if not broken:
                continue
            dns = {p for p in broken if p != "velocity"}
            action = (Action.EDGE_REPUBLISH if dns and "velocity" in broken
                      else Action.DNS_REPUBLISH if dns else Action.VELOCITY_REGISTER)
            out.append(FindingSpec(FindingType.EDGE_DRIFT, action, iid, iid,
                                   {"parts": broken, "slug": inst["slug"]}))
        slugs = {i["slug"].lower() for i in world.instances.values()} | world.known_slugs
        for orphan in world.edge.orphans:
            if world.sources.get(orphan["source"]) != HEALTHY:
                continue
            owner = orphan.get("owner")
            # Records of a server that still exists (stopping, deleting, stopped…) belong to
            # its own flows; an orphan is one whose server is gone.
            if (owner and (owner in world.instances or owner in world.known_ids)) or (
                    orphan["source"] == "velocity" and orphan["name"].lower() in slugs):
                continue
            subject = f"{orphan['source']}:{orphan.get('type', 'reg')}:{orphan['name']}"
            out.append(FindingSpec(FindingType.EDGE_ORPHAN, Action.DELETE_EDGE_ORPHAN, subject,
                                   None, orphan))
    return out
