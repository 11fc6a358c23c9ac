"""Steps on the container in Proxmox: make sure ours exists (adopt, create, or move off a
foreign VMID), power it, destroy it. Every step reads the real state first.

The fleet moves under us (Proxmox HA, an operator's `pct migrate`): no step concludes that a
container is absent because the server's node says so. It asks the whole cluster first
(`whereabouts`), follows ours to the node it is on now, and records the move. And nothing of
the server is released while a container carrying its tag exists anywhere
(`nothing_of_ours_left`)."""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

from django.conf import settings

from core.ownership import container_tags, owners_from_tags

from ...clients.proxmox import (
    PowerState,
    ProxmoxClient,
    ProxmoxError,
    PveErrorKind,
    bool01,
    parse_tags,
)
from ...choices import NodeTaskKind
from ...firewall import enabled as firewall_enabled
from ...models import ContainerInstance
from ...services.adoption import container_description
from ...services.allocations import allocation_replace_vmid
from ...services.moves import UnknownNode, server_record_move
from ...services.node_slots import node_slot_acquire, node_slot_limit, node_slot_release
from ..context import OperationContext
from ..errors import LeaseLost, StepError, WaitForSlot
from . import Step
from .agent import ask_game_to_stop

T = TypeVar("T")
MAX_VMID_ATTEMPTS = 3
#: A stop or destroy whose goal already holds.
_GONE_OR_STOPPED = (PveErrorKind.NOT_RUNNING, PveErrorKind.NOT_FOUND)


def proxmox() -> ProxmoxClient:
    """The worker thread's Proxmox client (its HTTP session reused from step to step)."""
    return ProxmoxClient.shared()


def container_params(inst: ContainerInstance) -> dict[str, Any]:
    net = ipaddress.IPv4Network(inst.node.subnet, strict=False)
    return {
        "ostemplate": settings.PROXMOX_OSTEMPLATE,
        "hostname": inst.slug,
        "memory": inst.memory_mb,
        "swap": 512,
        "cores": inst.cores,
        "rootfs": f"{settings.PROXMOX_STORAGE}:{inst.disk_gb}",
        "net0": (f"name=eth0,bridge={settings.PROXMOX_BRIDGE},ip={inst.ip}/{net.prefixlen},"
                 f"gw={inst.node.gateway}" + (",firewall=1" if firewall_enabled() else "")),
        "tags": container_tags(inst.id),
        "unprivileged": bool01(True),
        "onboot": bool01(True),
        "features": "nesting=1",
        "description": container_description(inst),
    }


def is_ours(config: dict[str, Any], inst: ContainerInstance) -> bool:
    """The container carries this server's ownership tag."""
    return str(inst.id) in owners_from_tags(parse_tags(config.get("tags")))


def settled_config(ctx: OperationContext, pve: ProxmoxClient, node: str, vmid: int):
    """The config once no create/destroy task holds it (PVE shows only `lock: create` until the
    create task has written the real config, tags included)."""
    def check():
        cfg = pve.ct_config(node, vmid)
        if cfg is None:
            return ("absent", None)
        if cfg.get("lock") in ("create", "destroyed"):
            return None
        return ("present", cfg)

    return ctx.wait_for(check, timeout=settings.PROXMOX_TASK_TIMEOUT,
                        what=f"CT {vmid} to finish its create/destroy task")[1]


class Where(StrEnum):
    """Where the server's VMID is in the cluster, once its own node says "no such CT"."""

    MOVED = "moved"      # ours, on another node: the move is recorded, the row names it now
    ABSENT = "absent"    # nowhere in the cluster
    FOREIGN = "foreign"  # another node holds the VMID with a guest that is not ours


class Whereabouts(NamedTuple):
    inst: ContainerInstance
    where: Where
    #: The cluster's row for the VMID (MOVED, FOREIGN), None when ABSENT.
    resource: dict[str, Any] | None


def _carries_our_tag(resource: dict[str, Any], inst: ContainerInstance) -> bool:
    return (resource.get("type") == "lxc"
            and str(inst.id) in owners_from_tags(parse_tags(resource.get("tags"))))


def _cluster_row(pve: ProxmoxClient, vmid: int) -> dict[str, Any] | None:
    """The cluster's row for a VMID (any node, any guest type), or None."""
    return next((r for r in pve.cluster_resources() if int(r.get("vmid", -1)) == vmid), None)


def _follow(ctx: OperationContext, inst: ContainerInstance, node: str) -> ContainerInstance:
    """Record that our container is on `node` now (audit event, one warning to the operator)
    and return the fresh row, which names it."""
    try:
        server_record_move(instance_id=inst.id, to_node=node, actor=ctx.actor,
                           seen_by=f"{ctx.kind} operation {ctx.operation_id}")
    except UnknownNode as exc:
        raise StepError(exc.message, kind="unknown_node") from exc
    ctx.note(f"CT {inst.vmid} is on node {node}, not {inst.node.name}: move recorded, "
             "following it")
    return ctx.instance()


def whereabouts(ctx: OperationContext, pve: ProxmoxClient,
                inst: ContainerInstance) -> Whereabouts:
    """The server's node says its CT does not exist: ask the whole cluster before believing it
    (`/cluster/resources`; a VMID is unique cluster-wide). A container moved by Proxmox HA or
    an operator's `pct migrate` is not gone: ours on another node is followed — the move is
    recorded on the row (audit event, one warning to the operator) and the returned row names
    the new node. A guest that is not ours holding the VMID elsewhere is foreign, as on our own
    node. If the cluster cannot be listed, the ProxmoxError goes up (retryable): unknown is not
    absent."""
    resource = _cluster_row(pve, inst.vmid)
    if resource is None:
        return Whereabouts(inst, Where.ABSENT, None)
    if not _carries_our_tag(resource, inst):
        return Whereabouts(inst, Where.FOREIGN, resource)
    node = str(resource.get("node"))
    if node == inst.node.name:
        # Listed on our node, yet its config could not be read there: a migration is moving
        # it right now. Ask again shortly rather than conclude anything.
        raise StepError(f"CT {inst.vmid} is listed on {node} but not readable there "
                        "(a migration in flight?)", retryable=True, kind="moving")
    return Whereabouts(_follow(ctx, inst, node), Where.MOVED, resource)


def _read_following(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance,
                    read: Callable[[str, int], T]) -> tuple[ContainerInstance, T]:
    """`read(node, vmid)` on the server's node. When that node does not answer (lost, fenced),
    Proxmox HA may already have recovered the container on another node: if the cluster lists
    ours there, it is followed and read there. Otherwise the node's error goes up (retryable):
    an unreachable node proves nothing."""
    try:
        return inst, read(inst.node.name, inst.vmid)
    except ProxmoxError as err:
        if not err.retryable:
            raise
        try:
            resource = _cluster_row(pve, inst.vmid)
        except ProxmoxError:
            raise err from None
        if (resource is None or not _carries_our_tag(resource, inst)
                or resource.get("node") == inst.node.name):
            raise
        inst = _follow(ctx, inst, str(resource.get("node")))
        return inst, read(inst.node.name, inst.vmid)


def _config_anywhere(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance,
                     ) -> tuple[ContainerInstance, Where | None, dict[str, Any] | None]:
    """The settled config of the server's VMID, wherever in the cluster it is: (fresh row,
    None if found on the row's node else how it was looked for, config or None). A foreign
    guest on another node is returned as a config without tags, so `is_ours` says no."""
    inst, cfg = _read_following(ctx, pve, inst,
                                lambda node, vmid: settled_config(ctx, pve, node, vmid))
    if cfg is not None:
        return inst, None, cfg
    found = whereabouts(ctx, pve, inst)
    if found.where == Where.FOREIGN:
        return found.inst, found.where, {"node": found.resource.get("node"),
                                         "type": found.resource.get("type")}
    if found.where == Where.ABSENT:
        return found.inst, found.where, None
    inst = found.inst
    cfg = settled_config(ctx, pve, inst.node.name, inst.vmid)
    if cfg is None:
        raise StepError(f"CT {inst.vmid} moved again while being followed", retryable=True,
                        kind="moving")
    return inst, found.where, cfg


def _create(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance, node: str,
            vmid: int, extra: dict[str, Any] | None) -> tuple[ContainerInstance, str, dict]:
    """Create CT `vmid` and wait for it; (row, node, config read back)."""
    try:
        upid = pve.ct_create(node, vmid, **{**container_params(inst), **(extra or {})})
    except ProxmoxError as err:
        if err.kind != PveErrorKind.ALREADY_EXISTS:
            raise
        # Re-read, never assume: ours from an earlier attempt, someone else's here, or a
        # container that appeared on another node meanwhile.
        inst, _where, cfg = _config_anywhere(ctx, pve, inst)
        if cfg is None:
            raise StepError(f"{err.message}; not visible cluster-wide yet",
                            retryable=True, kind="already_exists") from err
        return inst, inst.node.name, cfg
    ctx.note(f"creating CT {vmid} on {node}")
    result = pve.task_wait(upid, timeout=settings.PROXMOX_TASK_TIMEOUT, on_tick=ctx.renew)
    if not result.ok:
        err = pve.task_error(result, f"create CT {vmid}")
        if err.kind != PveErrorKind.ALREADY_EXISTS:
            raise err
    # Re-read, never assume: a lost race leaves someone else's container here.
    cfg = settled_config(ctx, pve, node, vmid)
    if cfg is None:
        raise StepError(f"CT {vmid} vanished right after its create task",
                        retryable=True, kind="vanished")
    return inst, node, cfg


def ensure_container(ctx: OperationContext, pve: ProxmoxClient, *,
                     extra: dict[str, Any] | None = None) -> ContainerInstance:
    """Make sure our container exists: adopt it (our tag, on whichever node it is now), create
    it (absent from the whole cluster), or move to another VMID if a foreign guest holds ours.
    `extra`: create parameters on top of the server's own (a restore: the archive instead of
    the template). Returns the fresh server row."""
    for _ in range(MAX_VMID_ATTEMPTS):
        inst, _where, cfg = _config_anywhere(ctx, pve, ctx.instance())
        node, vmid = inst.node.name, inst.vmid
        if cfg is None:
            kind = NodeTaskKind.RESTORE if (extra or {}).get("restore") else NodeTaskKind.CREATE
            with node_task_slot(ctx, node, kind):
                inst, node, cfg = _create(ctx, pve, inst, node, vmid, extra)
        if is_ours(cfg, inst):
            ctx.checkpoint(Step.CONTAINER, f"CT {vmid} on {node} is ours")
            return inst
        new_vmid = allocation_replace_vmid(instance_id=inst.id, old_vmid=vmid, actor=ctx.actor,
                                           reason=f"foreign container on VMID {vmid}")
        ctx.note(f"VMID {vmid} holds a container that is not ours; moved to VMID {new_vmid}")
    raise StepError(f"no usable VMID after {MAX_VMID_ATTEMPTS} tries (foreign containers)",
                    kind="vmid_conflict")


@contextmanager
def node_task_slot(ctx: OperationContext, node: str, kind: str, *,
                   ttl: float | None = None) -> Iterator[None]:
    """Hold one of the node's places for a Proxmox task of `kind` for the block
    (`services.node_slots`); WaitForSlot when all are taken (the runner queues the operation
    again, no worker waits). A lost lease keeps the place: the operation's new owner has it."""
    holder = str(ctx.operation_id)
    ttl = ttl or (settings.PROXMOX_TASK_TIMEOUT + settings.CONTAINER_SHUTDOWN_TIMEOUT + 120)
    if not node_slot_acquire(node=node, kind=kind, holder=holder, ttl_seconds=ttl):
        raise WaitForSlot(node=node, kind=kind, limit=node_slot_limit(kind))
    keep = False
    try:
        yield
    except LeaseLost:
        keep = True
        raise
    finally:
        if not keep:
            node_slot_release(holder=holder, node=node, kind=kind)


def run_task(ctx: OperationContext, pve: ProxmoxClient, start: Callable[[], str], *, what: str,
             done: tuple[str, ...]) -> bool:
    """Start a Proxmox task and wait for it (renewing the lease). An error of a kind in `done`
    — raised at once or as the task's exitstatus — means the goal already holds (PVE says "CT
    already running", "does not exist", …). Returns False in that case, True if the task ran."""
    try:
        upid = start()
    except ProxmoxError as err:
        if err.kind in done:
            return False
        raise
    result = pve.task_wait(upid, timeout=settings.PROXMOX_TASK_TIMEOUT, on_tick=ctx.renew)
    if not result.ok:
        err = pve.task_error(result, what)
        if err.kind not in done:
            raise err
        return False
    return True


def container_power(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance,
                    ) -> tuple[ContainerInstance, str | None]:
    """(fresh row, the container's power state) — followed to another node if it moved there;
    None when no container of ours holds the VMID anywhere in the cluster."""
    inst, status = _read_following(ctx, pve, inst, pve.ct_status)
    if status is None:
        found = whereabouts(ctx, pve, inst)
        if found.where != Where.MOVED:
            return found.inst, None
        inst = found.inst
        status = pve.ct_status(inst.node.name, inst.vmid)
    return inst, None if status is None else str(status.get("status"))


def container_start(ctx: OperationContext, pve: ProxmoxClient,
                    inst: ContainerInstance) -> ContainerInstance:
    """Start the container (on whichever node it is); returns the fresh row."""
    inst, power = container_power(ctx, pve, inst)
    if power is None:
        raise StepError(f"CT {inst.vmid} does not exist anywhere in the cluster",
                        kind="missing")
    if power == PowerState.RUNNING:
        return inst
    node, vmid = inst.node.name, inst.vmid
    with node_task_slot(ctx, node, NodeTaskKind.START):
        run_task(ctx, pve, lambda: pve.ct_start(node, vmid),
                 what=f"start CT {vmid}", done=(PveErrorKind.ALREADY_RUNNING,))
    ctx.note(f"CT {vmid} started")
    return inst


def container_stop(ctx: OperationContext, pve: ProxmoxClient,
                   inst: ContainerInstance) -> ContainerInstance:
    """Let the game save, shut the container down cleanly, and stop it hard only if the clean
    shutdown does not finish in time. A container of ours that exists nowhere in the cluster
    counts as stopped; one that moved is stopped where it is. Returns the fresh row."""
    inst, power = container_power(ctx, pve, inst)
    if power is None:
        ctx.note(f"CT {inst.vmid} does not exist anywhere in the cluster; nothing to stop")
        return inst
    if power != PowerState.RUNNING:
        return inst
    ask_game_to_stop(ctx, inst)
    with node_task_slot(ctx, inst.node.name, NodeTaskKind.STOP):
        return _shut_down(ctx, pve, inst)


def _shut_down(ctx: OperationContext, pve: ProxmoxClient,
               inst: ContainerInstance) -> ContainerInstance:
    """Shut the container down cleanly, hard if that does not finish in time."""
    node, vmid = inst.node.name, inst.vmid
    try:
        upid = pve.ct_shutdown(node, vmid, timeout=settings.CONTAINER_SHUTDOWN_TIMEOUT)
        result = pve.task_wait(upid, timeout=settings.CONTAINER_SHUTDOWN_TIMEOUT + 60,
                               on_tick=ctx.renew)
        if result.ok:
            ctx.note(f"CT {vmid} shut down")
            return inst
        ctx.note(f"clean shutdown did not finish ({result.exitstatus}); stopping hard")
    except ProxmoxError as err:
        if err.kind in _GONE_OR_STOPPED:
            return inst
        if not err.retryable:
            raise
        ctx.note(f"shutdown failed ({err.message}); stopping hard")
    if run_task(ctx, pve, lambda: pve.ct_stop(node, vmid), what=f"stop CT {vmid}",
                done=_GONE_OR_STOPPED):
        ctx.note(f"CT {vmid} stopped hard")
    return inst


def container_destroy(ctx: OperationContext, pve: ProxmoxClient,
                      inst: ContainerInstance) -> ContainerInstance:
    """Destroy with purge, on whichever node the container is now; absent from the whole
    cluster counts as done. A foreign guest on the VMID is never destroyed. Returns the fresh
    row."""
    inst, _where, cfg = _config_anywhere(ctx, pve, inst)
    node, vmid = inst.node.name, inst.vmid
    if cfg is None:
        ctx.note(f"CT {vmid} does not exist anywhere in the cluster; nothing to destroy")
        return inst
    if not is_ours(cfg, inst):
        ctx.note(f"VMID {vmid} holds a guest that is not ours; left alone")
        return inst
    if (pve.ct_status(node, vmid) or {}).get("status") == PowerState.RUNNING:
        with node_task_slot(ctx, node, NodeTaskKind.STOP):
            run_task(ctx, pve, lambda: pve.ct_stop(node, vmid), what=f"stop CT {vmid}",
                     done=_GONE_OR_STOPPED)
    if run_task(ctx, pve, lambda: pve.ct_destroy(node, vmid), what=f"destroy CT {vmid}",
                done=(PveErrorKind.NOT_FOUND,)):
        ctx.note(f"CT {vmid} destroyed on {node}")
    return inst


def nothing_of_ours_left(ctx: OperationContext, pve: ProxmoxClient,
                         inst: ContainerInstance) -> None:
    """Before any allocation of the server is released: no container carrying its tag may
    exist anywhere in the cluster — on any node, under any VMID. Otherwise its IP and port
    would be handed to a new server while it still runs. Fails retryably, naming what is left;
    if Proxmox cannot be listed the ProxmoxError goes up (retryable): unknown is not absent."""
    left = [r for r in pve.cluster_resources() if _carries_our_tag(r, inst)]
    if left:
        where = ", ".join(f"CT {r.get('vmid')} on {r.get('node')}" for r in left)
        raise StepError(f"{where} still carries the tag of {inst.slug}; its VMID, IP and "
                        "ports stay allocated until no container of it is left",
                        retryable=True, kind="still_present")
    ctx.note("no container of ours left anywhere in the cluster")
