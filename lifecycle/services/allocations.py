"""Claiming values from VMID / IP / port pools with row locks, and creating the pools."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Value, When
from django.db.models.functions import Now

from core.clock import db_after

from ..choices import AllocationState, PoolKind
from ..models import Allocation, AllocationPool

VMID_POOL_NAME = "vmid"
_BULK = 2000


def allocation_lock_free(*, pool_id: int, count: int) -> list[tuple[int, int]]:
    """Lock up to `count` free values of one pool, lowest first; returns (row id, value) pairs.

    `FOR UPDATE SKIP LOCKED`: concurrent creates each get different rows without waiting for
    one another. Must run inside the caller's transaction; the rows stay locked until it ends.
    """
    return list(
        Allocation.objects.select_for_update(skip_locked=True)
        .filter(pool_id=pool_id, state=AllocationState.FREE)
        .order_by("value")
        .values_list("id", "value")[:count]
    )


def allocation_bind(*, roles_by_row: dict[int, str], instance_id: Any) -> None:
    """Mark locked rows claimed by `instance_id`, each with its role, in one UPDATE."""
    if not roles_by_row:
        return
    changed = Allocation.objects.filter(
        pk__in=list(roles_by_row), state=AllocationState.FREE
    ).update(
        state=AllocationState.CLAIMED,
        instance_id=instance_id,
        claimed_at=Now(),
        released_at=None,
        quarantine_until=None,
        role=Case(*(When(pk=pk, then=Value(role)) for pk, role in roles_by_row.items())),
    )
    if changed != len(roles_by_row):
        # Impossible while the rows are locked by us; fail loudly rather than half-claim.
        raise RuntimeError(f"claimed {changed} of {len(roles_by_row)} locked allocation rows")


def _bulk_add(pool: AllocationPool, values: Iterable[int]) -> int:
    """Add values to a pool; values already there are left as they are. Returns rows added."""
    before = Allocation.objects.filter(pool=pool).count()
    batch: list[Allocation] = []
    for value in values:
        batch.append(Allocation(pool=pool, value=value))
        if len(batch) >= _BULK:
            Allocation.objects.bulk_create(batch, ignore_conflicts=True)
            batch = []
    if batch:
        Allocation.objects.bulk_create(batch, ignore_conflicts=True)
    return Allocation.objects.filter(pool=pool).count() - before


@transaction.atomic
def vmid_pool_ensure(*, start: int, end: int) -> tuple[AllocationPool, int]:
    """Make sure the cluster-wide VMID pool holds start..end (inclusive). Idempotent."""
    if not 100 <= start <= end <= 999_999_999:
        raise ValueError("VMIDs must satisfy 100 <= start <= end <= 999999999")
    pool, _ = AllocationPool.objects.get_or_create(
        name=VMID_POOL_NAME, defaults={"kind": PoolKind.VMID, "node": None}
    )
    return pool, _bulk_add(pool, range(start, end + 1))


def ip_pool_ensure(*, node: Any, first: str, last: str) -> tuple[AllocationPool, int]:
    net = node.network
    lo, hi = ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)
    if lo > hi or lo not in net or hi not in net:
        raise ValueError(f"IP range {first}-{last} must lie inside {net}")
    skip = {int(net.network_address), int(net.broadcast_address), int(ipaddress.IPv4Address(node.gateway))}
    pool, _ = AllocationPool.objects.get_or_create(
        node=node, kind=PoolKind.IP, defaults={"name": f"{node.name}-ip"}
    )
    return pool, _bulk_add(pool, (v for v in range(int(lo), int(hi) + 1) if v not in skip))


def port_pool_ensure(*, node: Any) -> tuple[AllocationPool, int]:
    pool, _ = AllocationPool.objects.get_or_create(
        node=node, kind=PoolKind.PORT, defaults={"name": f"{node.name}-port"}
    )
    return pool, _bulk_add(pool, range(node.port_range_start, node.port_range_end + 1))


def pool_ids_for_nodes(node_ids: Sequence[int]) -> dict[tuple[int, str], int]:
    """(node id, pool kind) -> pool id, for the node-scoped pools of the given nodes."""
    return {
        (node_id, kind): pk
        for pk, node_id, kind in AllocationPool.objects.filter(node_id__in=node_ids).values_list(
            "id", "node_id", "kind"
        )
    }


@transaction.atomic
def allocation_replace_vmid(*, instance_id: Any, old_vmid: int, actor: Any, reason: str) -> int:
    """Mark `old_vmid` conflicted (never handed out again) and claim another VMID for the
    server, in one transaction. Raises CapacityExhausted when the pool is empty."""
    from ..errors import CapacityExhausted
    from ..models import ContainerInstance
    from .audit import audit_record

    inst = ContainerInstance.objects.select_for_update().get(pk=instance_id)
    if inst.vmid != old_vmid:
        return inst.vmid  # another attempt already moved it
    pool_id = AllocationPool.objects.get(name=VMID_POOL_NAME).pk
    Allocation.objects.filter(pool_id=pool_id, value=old_vmid).update(
        state=AllocationState.CONFLICTED, instance=None, note=reason[:255], released_at=Now())
    rows = allocation_lock_free(pool_id=pool_id, count=1)
    if not rows:
        raise CapacityExhausted("No VMID is free to replace a conflicted one.")
    row_id, new_vmid = rows[0]
    allocation_bind(roles_by_row={row_id: "vmid"}, instance_id=inst.id)
    ContainerInstance.objects.filter(pk=inst.pk).update(vmid=new_vmid)
    audit_record(actor=actor, instance_id=inst.id, action="vmid:conflict",
                 data={"old_vmid": old_vmid, "new_vmid": new_vmid, "reason": reason})
    return new_vmid


@transaction.atomic
def allocation_claim_spare_vmid(*, instance_id: Any, role: str = "restore") -> int:
    """Claim one more VMID for the server (a restore's temporary container), so that nobody
    else is handed it while that container exists. CapacityExhausted when the pool is empty."""
    from ..errors import CapacityExhausted

    pool_id = AllocationPool.objects.get(name=VMID_POOL_NAME).pk
    rows = allocation_lock_free(pool_id=pool_id, count=1)
    if not rows:
        raise CapacityExhausted("No VMID is free for a temporary container.")
    row_id, vmid = rows[0]
    allocation_bind(roles_by_row={row_id: role}, instance_id=instance_id)
    return vmid


@transaction.atomic
def allocation_claim_spares(*, instance_id: Any, node_id: int, role: str) -> tuple[int, str]:
    """Claim a spare VMID and a spare IP of the node for the server (a scratch container that
    must not collide with anything: verification of a backup). (vmid, ip)."""
    from ..errors import CapacityExhausted

    vmid_pool = AllocationPool.objects.get(name=VMID_POOL_NAME).pk
    ip_pool = AllocationPool.objects.get(node_id=node_id, kind=PoolKind.IP).pk
    vmids = allocation_lock_free(pool_id=vmid_pool, count=1)
    ips = allocation_lock_free(pool_id=ip_pool, count=1)
    if not vmids or not ips:
        raise CapacityExhausted("No VMID or IP is free for a scratch container.")
    allocation_bind(roles_by_row={vmids[0][0]: role, ips[0][0]: role}, instance_id=instance_id)
    return vmids[0][1], str(ipaddress.IPv4Address(ips[0][1]))


def allocation_release_role(*, instance_id: Any, role: str) -> int:
    """Put every value the server holds under `role` into quarantine."""
    return _quarantine(Allocation.objects.filter(instance_id=instance_id, role=role,
                                                 state=AllocationState.CLAIMED))


@transaction.atomic
def allocation_swap_vmid(*, instance_id: Any, new_vmid: int, actor: Any, reason: str) -> int:
    """Make `new_vmid` (already claimed by the server) the server's VMID; the old one stays
    claimed by it as `replaced` until its container is gone. Idempotent; returns the old VMID
    (None if the server already has `new_vmid`)."""
    from ..models import ContainerInstance
    from .audit import audit_record

    inst = ContainerInstance.objects.select_for_update().get(pk=instance_id)
    if inst.vmid == new_vmid:
        return None
    pool_id = AllocationPool.objects.get(name=VMID_POOL_NAME).pk
    mine = Allocation.objects.filter(pool_id=pool_id, instance_id=inst.id,
                                     state=AllocationState.CLAIMED)
    if not mine.filter(value=new_vmid).exists():
        raise RuntimeError(f"VMID {new_vmid} is not claimed by server {inst.id}")
    old = inst.vmid
    mine.filter(value=old).update(role="replaced")
    mine.filter(value=new_vmid).update(role="vmid")
    ContainerInstance.objects.filter(pk=inst.pk).update(vmid=new_vmid)
    audit_record(actor=actor, instance_id=inst.id, action="vmid:swap",
                 data={"old_vmid": old, "new_vmid": new_vmid, "reason": reason})
    return old


def allocation_release_vmid(*, instance_id: Any, vmid: int) -> int:
    """Put one VMID the server holds (not its current one) into quarantine: it is handed out
    again only once the quarantine sweep has seen no container on it."""
    pool_id = AllocationPool.objects.get(name=VMID_POOL_NAME).pk
    return _quarantine(Allocation.objects.filter(
        pool_id=pool_id, value=vmid, instance_id=instance_id,
        state=AllocationState.CLAIMED).exclude(role="vmid"))


def allocation_release_to_quarantine(*, instance_id: Any) -> int:
    """Put every value the server holds into quarantine; call inside the purge transaction."""
    return _quarantine(Allocation.objects.filter(instance_id=instance_id,
                                                 state=AllocationState.CLAIMED))


def _quarantine(rows) -> int:
    """Move claimed `rows` into quarantine (the database's clock for the deadline)."""
    return rows.update(state=AllocationState.QUARANTINED, released_at=Now(),
                       verified_absent_at=None,
                       quarantine_until=db_after(settings.ZLH_QUARANTINE_SECONDS))


def allocation_release_quarantined(*, present_vmids: set[int] | None,
                                   present_owners: set[str] | None = None) -> dict[str, int]:
    """Free quarantined values whose quarantine is over, with Proxmox's word for each: what
    /cluster/resources lists (`present_vmids`) and the servers whose tag a container there
    carries (`present_owners`). A value of a server that still has a container anywhere in the
    cluster is kept — its IP and port would otherwise go to a new server while the old one
    runs (a container migrated away, a purge that destroyed nothing) — and so is a VMID that
    is still listed. Proxmox unknown (`present_vmids` None): nothing is freed (unknown is not
    absent)."""
    if present_vmids is None:
        return {"freed": 0, "vmids_freed": 0, "held": 0}
    due = Allocation.objects.filter(state=AllocationState.QUARANTINED, quarantine_until__lte=Now())
    held = due.filter(instance_id__in=list(present_owners or ())).count()
    due = due.exclude(instance_id__in=list(present_owners or ()))
    freed = due.exclude(pool__kind=PoolKind.VMID).update(
        state=AllocationState.FREE, instance=None, role="", quarantine_until=None)
    vmids = due.filter(pool__kind=PoolKind.VMID).exclude(value__in=present_vmids).update(
        state=AllocationState.FREE, instance=None, role="", quarantine_until=None,
        verified_absent_at=Now())
    return {"freed": freed, "vmids_freed": vmids, "held": held}
