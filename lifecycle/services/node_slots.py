"""Bounded pressure on Proxmox: at most PROXMOX_NODE_LIMIT_<KIND> tasks of each kind at once
on each node (create, start, stop, backup, restore), whatever the number of workers and hosts.

A counting semaphore in the database (`NodeTaskSlot`: one row per place): a place is taken with
one conditional UPDATE (free, or its holder's time is up) and given back after the task. It
needs nothing from Redis, so a wiped Redis neither loses nor duplicates a place; a worker that
dies holding one gives it up when `expires_at` passes (the bound on its task plus a margin),
so nothing deadlocks. The holder is the operation: an operation taken over by another worker
after a crash finds its own place again. The deadline is the database's clock.

An operation that found every place taken is queued again with `waiting_for` = "node/kind" and
looks again after PROXMOX_SLOT_WAIT_SECONDS; a place given back wakes the one that has waited
longest at once (made due and sent), so a freed place is not left idle until the next look. A
woken operation may still lose the place to another taker: it then waits again. A lost wake-up
(Redis wiped, the sender died) costs only the wait until its own next look.
"""
from __future__ import annotations

from collections import Counter

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

from core.clock import db_after

from ..choices import NodeTaskKind, OperationState
from ..models import NodeTaskSlot, Operation
from .operations import operation_enqueue

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
    """Give back what `holder` holds (of one node and kind, or all), and wake as many waiting
    operations of each node and kind as places were given back."""
    rows = NodeTaskSlot.objects.filter(holder=holder)
    if node is not None:
        rows = rows.filter(node=node)
    if kind is not None:
        rows = rows.filter(kind=kind)
    freed = Counter(waiting_key(n, k) for n, k in rows.values_list("node", "kind"))
    if not freed:
        return 0
    released = rows.update(holder="", acquired_at=None, expires_at=None)
    for key, places in freed.items():
        transaction.on_commit(lambda key=key, places=places: node_slot_wake(key, places))
    return released


def waiting_key(node: str, kind: str) -> str:
    """What a waiting operation's `waiting_for` holds."""
    return f"{node}/{kind}"


def node_slot_wake(key: str, places: int = 1) -> list[str]:
    """Make the `places` operations that have waited longest for `key` due now and send them.
    Conditional on their still waiting: one woken twice (two places given back at once) is sent
    once. Returns the ids sent."""
    woken = []
    # Those not yet due: one that is due is being sent or looked at already.
    waiting = Operation.objects.filter(waiting_for=key, state=OperationState.QUEUED,
                                       next_attempt_at__gt=Now())
    for pk in waiting.order_by("created_at").values_list("pk", flat=True)[:places]:
        if waiting.filter(pk=pk).update(next_attempt_at=Now()):
            operation_enqueue(operation_id=pk)
            woken.append(str(pk))
    return woken


def node_slots_in_use(*, node: str, kind: str) -> int:
    limit = node_slot_limit(kind)
    return NodeTaskSlot.objects.filter(node=node, kind=kind, slot__lt=limit).exclude(
        _free()).count()
