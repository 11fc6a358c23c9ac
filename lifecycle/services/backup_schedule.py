"""Scheduled backups and their retention (run by beat: `lifecycle.backup_schedule`).

Each plan has a policy (`catalog.BACKUP_POLICIES`): an interval and what to keep. A server's
backups are due at its own phase within the interval (derived from its id), so a fleet's
backups are spread over the interval instead of all landing at midnight; a server backed up
late for one slot is next due at the following slot, at least half an interval later. A tick
requests the backups that are due, the server longest without one first, with at most
`BACKUP_NODE_CONCURRENCY` backup or restore operations in flight per Proxmox node (the rest
stay due), skipping servers with another operation in progress. Every scheduled backup that
ends sends a tick of its own, so the place it freed on its node is filled at once rather than
at beat's next tick. Over the account's quota, the server's oldest scheduled backups are pruned
first to make room; manual backups are never pruned.

One tick at a time, across beats and hosts: a MariaDB named lock (released with the
connection, so a dead tick never holds it, and independent of Redis).
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Max

from core.clock import db_now

from ..catalog import BACKUP_POLICIES, BackupPolicy
from ..choices import BackupKind, BackupState, OperationKind, OperationState
from ..choices import InstanceStatus as S
from core.db import named_lock
from ..errors import LifecycleError, QuotaExceeded
from ..models import Backup, ContainerInstance, Operation
from .audit import Actor
from .backups import backup_delete_request, backup_request

logger = logging.getLogger(__name__)

LOCK_NAME = "zlh_backup_schedule"
SCHEDULER = Actor.system("backup schedule")
RETENTION = Actor.system("backup retention")


def policy_for(plan: str) -> BackupPolicy | None:
    policy = BACKUP_POLICIES.get(plan)
    if policy is None:
        return None
    override = settings.BACKUP_SCHEDULE_INTERVAL_SECONDS
    if override:
        return BackupPolicy(interval_seconds=override, keep_last=policy.keep_last,
                            keep_daily=policy.keep_daily, keep_weekly=policy.keep_weekly)
    return policy


def phase_of(server_id: Any, interval: int) -> int:
    """The server's offset within the interval: stable, and even across a fleet."""
    digest = hashlib.sha256(str(server_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") % interval


def latest_slot(server_id: Any, interval: int, now: datetime) -> float:
    """The latest time (epoch seconds) at or before `now` the server's backup was due."""
    t = now.timestamp()
    phase = phase_of(server_id, interval)
    return t - ((t - phase) % interval)


def retention_keep(backups: list[tuple[Any, datetime]], policy: BackupPolicy) -> set[Any]:
    """Which of (id, created_at) to keep under `policy` (the newest of each bucket)."""
    ordered = sorted(backups, key=lambda b: b[1], reverse=True)
    keep = {bid for bid, _ in ordered[:policy.keep_last]}
    days: set[Any] = set()
    weeks: set[Any] = set()
    for bid, created in ordered:
        day = created.date()
        if day not in days and len(days) < policy.keep_daily:
            days.add(day)
            keep.add(bid)
        week = created.isocalendar()[:2]
        if week not in weeks and len(weeks) < policy.keep_weekly:
            weeks.add(week)
            keep.add(bid)
    return keep


def _in_flight_per_node() -> Counter:
    rows = (Operation.objects.filter(
        state__in=(OperationState.QUEUED, OperationState.RUNNING),
        kind__in=(OperationKind.BACKUP, OperationKind.RESTORE_BACKUP))
        .values_list("instance__node_id", flat=True))
    return Counter(rows)


def _request_with_room(server: dict[str, Any]) -> bool:
    """Request a scheduled backup; over quota, prune this server's oldest scheduled backups
    first (never its last one, never a manual one). False when there is no room."""
    for _ in range(5):
        try:
            backup_request(instance_id=server["id"], actor=SCHEDULER, kind=BackupKind.SCHEDULED,
                           notes="scheduled")
            return True
        except QuotaExceeded:
            oldest = list(Backup.objects.filter(
                instance_id=server["id"], kind=BackupKind.SCHEDULED, state=BackupState.READY)
                .order_by("created_at").values_list("id", flat=True)[:2])
            if len(oldest) < 2:
                return False
            backup_delete_request(backup_id=oldest[0], actor=RETENTION)
    return False


def backup_schedule_tick() -> dict[str, int]:
    """Request the scheduled backups that are due, then apply retention."""
    counts = {"due": 0, "requested": 0, "busy": 0, "node_limit": 0, "no_room": 0,
              "refused": 0, "pruned": 0}
    if not settings.BACKUP_SCHEDULED:
        return counts
    with named_lock(LOCK_NAME) as held:
        if not held:
            counts["skipped_tick"] = 1
            return counts
        now = db_now()
        servers = list(ContainerInstance.objects.filter(
            status__in=(S.RUNNING, S.STOPPED), suspended=False, vmid__isnull=False,
            node__isnull=False).values("id", "plan", "node_id", "created_at"))
        last = dict(Backup.objects.filter(kind=BackupKind.SCHEDULED).values_list(
            "instance_id").annotate(last=Max("created_at")).values_list("instance_id", "last"))
        busy = set(Operation.objects.filter(active_slot__isnull=False)
                   .values_list("instance_id", flat=True))
        due = []
        for server in servers:
            policy = policy_for(server["plan"])
            if policy is None:
                continue
            slot = latest_slot(server["id"], policy.interval_seconds, now)
            since = (last.get(server["id"]) or server["created_at"]).timestamp()
            # Due once per slot; and a server that was just caught up (backed up late for its
            # previous slot) is not backed up again at once when its next slot comes.
            if since < slot and now.timestamp() - since >= policy.interval_seconds / 2:
                due.append((since, server))
        counts["due"] = len(due)
        in_flight = _in_flight_per_node()
        # The longest without a backup first: under the per-node limit nobody starves.
        for _since, server in sorted(due, key=lambda d: d[0]):
            if server["id"] in busy:
                counts["busy"] += 1
                continue
            if in_flight[server["node_id"]] >= settings.BACKUP_NODE_CONCURRENCY:
                counts["node_limit"] += 1
                continue
            try:
                if _request_with_room(server):
                    counts["requested"] += 1
                    in_flight[server["node_id"]] += 1
                else:
                    counts["no_room"] += 1
            except LifecycleError as exc:  # changed meanwhile: busy, deleted, …
                counts["refused"] += 1
                logger.info("scheduled backup of %s not requested: %s", server["id"],
                            exc.message)
        counts["pruned"] = backup_retention_apply()
    logger.info("backup schedule: %s", counts)
    return counts


def backup_retention_apply() -> int:
    """Remove the scheduled backups each server's policy does not keep; returns how many."""
    by_server: dict[Any, list[tuple[Any, datetime]]] = defaultdict(list)
    plans = {}
    for bid, iid, created, plan in Backup.objects.filter(
            kind=BackupKind.SCHEDULED, state=BackupState.READY).values_list(
            "id", "instance_id", "created_at", "instance__plan"):
        by_server[iid].append((bid, created))
        plans[iid] = plan
    pruned = 0
    for iid, backups in by_server.items():
        policy = policy_for(plans[iid])
        if policy is None or len(backups) <= policy.keep_last:
            continue
        keep = retention_keep(backups, policy)
        for bid, _created in backups:
            if bid not in keep:
                try:
                    backup_delete_request(backup_id=bid, actor=RETENTION)
                    pruned += 1
                except LifecycleError as exc:  # a restore reads it right now
                    logger.info("retention kept %s for now: %s", bid, exc.message)
    return pruned
