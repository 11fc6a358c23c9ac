"""`manage.py doctor`: a read-only consistency report of the control plane's own records.

It reads the database only (no outside system) and changes nothing. Each check names what is
wrong and where, so an operator can act on it; the reconciler's open findings (what it last
saw differ between the database and Proxmox / the edge) are part of the report. The command
exits non-zero when anything is wrong (`--json` for scripts); the admin shows the same report
(`/admin/reconciler/controllerrun/doctor/`).

The checks, in the order they are reported:
- allocations: a value claimed by nobody or by a purged server (outside quarantine); a live
  server's VMID, IP or port without its claimed allocation row; a VMID, IP or (IP, port) used
  by two live servers;
- node memory: a node's `allocated_memory_mb` against the memory of the servers it holds;
- quotas: accounts over their server, memory or backup quota;
- servers in a transient status (`provisioning`, `stopping`, …) with no active operation;
- operations: running with a lease that has run out, queued and never taken;
- notifications pending for too long (the outbox is stuck);
- backups being made with no active operation, or being removed for too long;
- the reconciler's open findings.
"""
from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Sum

from core.clock import db_now
from lifecycle.choices import (
    ACTIVE_OPERATION_STATES,
    QUOTA_STATUSES,
    TRANSIENT_STATUSES,
    AllocationState,
    BackupState,
    OperationState,
    PoolKind,
)
from lifecycle.choices import InstanceStatus as S
from lifecycle.models import AccountQuota, Allocation, Backup, ContainerInstance, Node, Operation
from lifecycle.services.backups import backup_limits, backup_usage
from notifications.models import Notification

from .models import Finding

#: A notification pending longer than this means the outbox is stuck.
OUTBOX_STUCK_AFTER = timedelta(minutes=15)


@dataclass(frozen=True)
class Problem:
    check: str
    subject: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def check_allocations() -> list[Problem]:
    out: list[Problem] = []
    rows = list(ContainerInstance.objects.values_list("id", "status", "slug"))
    statuses = {iid: status for iid, status, _slug in rows}
    slugs = {iid: slug for iid, _status, slug in rows}
    claimed: dict[Any, set[tuple[str, int]]] = defaultdict(set)
    for value, kind, iid, role in Allocation.objects.filter(
            state=AllocationState.CLAIMED).values_list("value", "pool__kind", "instance_id",
                                                       "role"):
        shown = _ip(value) if kind == PoolKind.IP else str(value)
        if iid is None:
            out.append(Problem("allocation claimed by nobody", f"{kind} {shown}",
                               "claimed, but by no server: release it or find its owner"))
            continue
        if statuses.get(iid) == S.PURGED:
            out.append(Problem("allocation of a purged server outside quarantine",
                               f"{kind} {shown}", f"claimed by purged {slugs.get(iid)} "
                               f"({iid}) as {role or '?'}; it should be in quarantine"))
        claimed[iid].add((kind, value))
    live = list(ContainerInstance.objects.exclude(status=S.PURGED).values(
        "id", "slug", "vmid", "ip", "ports"))
    for inst in live:
        have = claimed.get(inst["id"], set())
        wanted = []
        if inst["vmid"]:
            wanted.append((PoolKind.VMID, int(inst["vmid"])))
        if inst["ip"]:
            wanted.append((PoolKind.IP, int(ipaddress.IPv4Address(inst["ip"]))))
        wanted += [(PoolKind.PORT, int(p)) for p in (inst["ports"] or {}).values()]
        for kind, value in wanted:
            if (kind, value) not in have:
                shown = _ip(value) if kind == PoolKind.IP else str(value)
                out.append(Problem("server value without its allocation", inst["slug"],
                                   f"its {kind} {shown} is not claimed by it in the pools"))
    for label, key in (("VMID", lambda i: i["vmid"]), ("IP", lambda i: i["ip"])):
        used = Counter(key(i) for i in live if key(i))
        for value, n in used.items():
            if n > 1:
                who = sorted(i["slug"] for i in live if key(i) == value)
                out.append(Problem(f"{label} used by two live servers", str(value),
                                   ", ".join(who)))
    pairs = Counter((i["ip"], p) for i in live for p in (i["ports"] or {}).values())
    for (ip, port), n in pairs.items():
        if n > 1:
            out.append(Problem("(IP, port) used by two live servers", f"{ip}:{port}",
                               f"{n} servers"))
    return out


def check_node_memory() -> list[Problem]:
    held = dict(ContainerInstance.objects.exclude(status=S.PURGED).filter(
        node__isnull=False).values_list("node_id").annotate(m=Sum("memory_mb"))
        .values_list("node_id", "m"))
    out = []
    for node in Node.objects.order_by("name"):
        servers = held.get(node.pk, 0) or 0
        if node.allocated_memory_mb != servers:
            out.append(Problem("node memory counter disagrees with its servers", node.name,
                               f"allocated_memory_mb {node.allocated_memory_mb}, its servers "
                               f"hold {servers} MB"))
    return out


def check_quotas() -> list[Problem]:
    out = []
    usage = {row["owner_id"]: row for row in ContainerInstance.objects.filter(
        status__in=QUOTA_STATUSES).values("owner_id").annotate(
        servers=Count("id"), memory=Sum("memory_mb"))}
    names = dict(get_user_model().objects.values_list("pk", "username"))
    for quota in AccountQuota.objects.all():
        used = usage.get(quota.user_id) or {"servers": 0, "memory": 0}
        who = names.get(quota.user_id, str(quota.user_id))
        if used["servers"] > quota.max_servers:
            out.append(Problem("account over its server quota", who,
                               f"{used['servers']} servers, quota {quota.max_servers}"))
        if (used["memory"] or 0) > quota.max_memory_mb:
            out.append(Problem("account over its memory quota", who,
                               f"{used['memory']} MB, quota {quota.max_memory_mb} MB"))
        limits = backup_limits(quota)
        backups = backup_usage(user_id=quota.user_id)
        if backups.count > limits.count:
            out.append(Problem("account over its backup quota", who,
                               f"{backups.count} backups, quota {limits.count}"))
    return out


def check_transient_servers() -> list[Problem]:
    busy = set(Operation.objects.filter(state__in=ACTIVE_OPERATION_STATES)
               .values_list("instance_id", flat=True))
    return [Problem("server in a transient status with no active operation", slug,
                    f"{status} since {changed:%Y-%m-%d %H:%M} UTC" if changed else status)
            for iid, slug, status, changed in ContainerInstance.objects.filter(
                status__in=TRANSIENT_STATUSES).values_list("id", "slug", "status",
                                                           "status_changed_at")
            if iid not in busy]


def check_operations(now) -> list[Problem]:
    out = []
    grace = timedelta(seconds=settings.OPERATION_LEASE_SECONDS)
    for op_id, kind, slug, expires in Operation.objects.filter(
            state=OperationState.RUNNING, lease_expires_at__lt=now - grace).values_list(
            "id", "kind", "instance__slug", "lease_expires_at"):
        out.append(Problem("operation running with no live worker lease", f"{kind} {slug}",
                           f"operation {op_id}: lease ran out {expires:%Y-%m-%d %H:%M:%S} UTC"))
    stuck = now - timedelta(seconds=max(settings.OPERATION_REENQUEUE_AFTER_SECONDS * 10, 600))
    for op_id, kind, slug, created in Operation.objects.filter(
            state=OperationState.QUEUED, created_at__lt=stuck, next_attempt_at__isnull=True
            ).values_list("id", "kind", "instance__slug", "created_at"):
        out.append(Problem("operation queued and never taken", f"{kind} {slug}",
                           f"operation {op_id}, queued since {created:%Y-%m-%d %H:%M} UTC"))
    return out


def check_outbox(now) -> list[Problem]:
    rows = Notification.objects.filter(state="pending", created_at__lt=now - OUTBOX_STUCK_AFTER)
    n = rows.count()
    if not n:
        return []
    by_channel = Counter(rows.values_list("channel", flat=True))
    return [Problem("notifications stuck in the outbox", channel,
                    f"{count} pending for more than {OUTBOX_STUCK_AFTER}")
            for channel, count in sorted(by_channel.items())]


def check_backups(now) -> list[Problem]:
    out = []
    busy = set(Operation.objects.filter(state__in=ACTIVE_OPERATION_STATES)
               .values_list("id", flat=True))
    for bid, slug, op_id in Backup.objects.filter(state=BackupState.CREATING).values_list(
            "id", "instance__slug", "operation_id"):
        if op_id not in busy:
            out.append(Problem("backup being made with no active operation", slug,
                               f"backup {bid}"))
    late = now - timedelta(seconds=settings.BACKUP_DELETE_RETRY_SECONDS * 3)
    for bid, slug, error in Backup.objects.filter(state=BackupState.DELETING,
                                                  updated_at__lt=late).values_list(
            "id", "instance__slug", "error"):
        out.append(Problem("backup removal not finishing", slug,
                           f"backup {bid}: {(error or {}).get('message', 'no error recorded')}"))
    return out


def check_findings() -> list[Problem]:
    return [Problem(f"reconciler finding: {ftype}", (details or {}).get("slug") or subject,
                    f"level {level}, action {action}, seen {seen}×")
            for ftype, subject, details, level, action, seen in Finding.objects.filter(
                open=True).order_by("finding_type", "subject").values_list(
                "finding_type", "subject", "details", "level", "action", "seen_count")]


def doctor_report() -> dict[str, Any]:
    """Every check's problems (read-only). {"ok": bool, "checked_at", "problems": [...],
    "counts": {check: n}}."""
    now = db_now()
    problems = (check_allocations() + check_node_memory() + check_quotas()
                + check_transient_servers() + check_operations(now) + check_outbox(now)
                + check_backups(now) + check_findings())
    return {"ok": not problems, "checked_at": now.isoformat(timespec="seconds"),
            "problems": [p.as_dict() for p in problems],
            "counts": dict(Counter(p.check for p in problems))}
