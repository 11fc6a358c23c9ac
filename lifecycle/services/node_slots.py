"""Bounded pressure on Proxmox: at most PROXMOX_NODE_LIMIT_<KIND> tasks of each kind at once
on each node (create, start, stop, backup, restore), whatever the number of workers and hosts.

A counting semaphore in the database (`NodeTaskSlot`: one row per place): a place is taken with
one conditional UPDATE (free, or its holder's time is up) and given back after the task. It
needs nothing from Redis, so a wiped Redis neither loses nor duplicates a place; a worker that
dies holding one gives it up when `expires_at` passes (the bound on its task plus a margin),
so nothing deadlocks. The holder is the operation: an operation taken over by another worker
after a crash finds its own place again. The deadline is the database's clock.
"""
from __future__ import annotations

from django.conf import settings
from django.db.models import Q
from django.db.models.functions import Now

from core.clock import db_after

from ..choices import NodeTaskKind
from ..models import NodeTaskSlot

_LIMITS = {
    NodeTaskKind.CREATE: "PROXMOX_NODE_LIMIT_CREATE",
    NodeTaskKind.START: "PROXMOX_NODE_LIMIT_START",
    NodeTaskKind.STOP: "PROXMOX_NODE_LIMIT_STOP",
    NodeTaskKind.BACKUP: "PROXMOX_NODE_LIMIT_BACKUP",
    NodeTaskKind.RESTORE: "PROXMOX_NODE_LIMIT_RESTORE",
}
#: (node, kind, limit) whose rows this process has seen made.
_made: set[tuple[str, str, int]] = set()


def node_slot_limit(kind: str) -> int:
    """The limit of a kind (0: no limit)."""
    return max(0, int(getattr(settings, _LIMITS[kind])))


def _free() -> Q:
    return Q(holder="") | Q(expires_at__lt=Now())


def node_slot_acquire(*, node: str, kind: str, holder: str, ttl_seconds: float) -> bool:
    """Take a place for `holder` (or refresh the one it holds); False when all are taken."""
    limit = node_slot_limit(kind)
    if limit == 0:
        return True
    if (node, kind, limit) not in _made:
        _make(node, kind, limit)
    if _take(node, kind, limit, holder, ttl_seconds):
        return True
    # All taken, or rows gone that this process thought were made (a database restored from
    # a dump): make sure every place exists, then look once more.
    _make(node, kind, limit)
    return _take(node, kind, limit, holder, ttl_seconds)


def _make(node: str, kind: str, limit: int) -> None:
    NodeTaskSlot.objects.bulk_create(
        [NodeTaskSlot(node=node, kind=kind, slot=i) for i in range(limit)],
        ignore_conflicts=True)
    _made.add((node, kind, limit))


def _take(node: str, kind: str, limit: int, holder: str, ttl_seconds: float) -> bool:
    places = NodeTaskSlot.objects.filter(node=node, kind=kind, slot__lt=limit)
    until = db_after(ttl_seconds)
    if places.filter(holder=holder).update(expires_at=until):
        return True
    for pk in places.filter(_free()).order_by("slot").values_list("pk", flat=True):
        # Conditional: of two takers of the same row, the second finds it taken and moves on.
        if NodeTaskSlot.objects.filter(_free(), pk=pk).update(holder=holder, acquired_at=Now(),
                                                              expires_at=until):
            return True
    return False


def node_slot_release(*, holder: str, node: str | None = None, kind: str | None = None) -> int:
    """Give back what `holder` holds (of one node and kind, or all)."""
    rows = NodeTaskSlot.objects.filter(holder=holder)
    if node is not None:
        rows = rows.filter(node=node)
    if kind is not None:
        rows = rows.filter(kind=kind)
    return rows.update(holder="", acquired_at=None, expires_at=None)


def node_slots_in_use(*, node: str, kind: str) -> int:
    limit = node_slot_limit(kind)
    return NodeTaskSlot.objects.filter(node=node, kind=kind, slot__lt=limit).exclude(
        _free()).count()
