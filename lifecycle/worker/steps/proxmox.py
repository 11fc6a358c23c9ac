"""Steps on the container in Proxmox: make sure ours exists (adopt, create, or move off a
foreign VMID), power it, destroy it. Every step reads the real state first."""
from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

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
from ...models import ContainerInstance
from ...services.allocations import allocation_replace_vmid
from ..context import OperationContext
from ..errors import StepError
from . import Step
from .agent import ask_game_to_stop

MAX_VMID_ATTEMPTS = 3
#: A stop or destroy whose goal already holds.
_GONE_OR_STOPPED = (PveErrorKind.NOT_RUNNING, PveErrorKind.NOT_FOUND)


def proxmox() -> ProxmoxClient:
    return ProxmoxClient.from_settings()


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
                 f"gw={inst.node.gateway}"),
        "tags": container_tags(inst.id),
        "unprivileged": bool01(True),
        "onboot": bool01(True),
        "features": "nesting=1",
        "description": f"ZeroLagHub {inst.kind} server {inst.slug} ({inst.id})",
    }


def is_ours(config: dict[str, Any], inst: ContainerInstance) -> bool:
    """The container carries this server's ownership tag."""
    return str(inst.id) in owners_from_tags(parse_tags(config.get("tags")))


def _settled_config(ctx: OperationContext, pve: ProxmoxClient, node: str, vmid: int):
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


def ensure_container(ctx: OperationContext, pve: ProxmoxClient) -> ContainerInstance:
    """Make sure our container exists: adopt it (our tag), create it (absent), or move to
    another VMID if a foreign container sits on ours. Returns the fresh server row."""
    for _ in range(MAX_VMID_ATTEMPTS):
        inst = ctx.instance()
        node, vmid = inst.node.name, inst.vmid
        cfg = _settled_config(ctx, pve, node, vmid)
        if cfg is None:
            try:
                upid = pve.ct_create(node, vmid, **container_params(inst))
            except ProxmoxError as err:
                if err.kind != PveErrorKind.ALREADY_EXISTS:
                    raise
                # Re-read, never assume: ours from an earlier attempt, someone else's here,
                # or a container on another node holding this VMID.
                cfg = (_settled_config(ctx, pve, node, vmid)
                       or _foreign_or_ours_elsewhere(pve, inst, err))
            else:
                ctx.note(f"creating CT {vmid} on {node}")
                result = pve.task_wait(upid, timeout=settings.PROXMOX_TASK_TIMEOUT,
                                       on_tick=ctx.renew)
                if not result.ok:
                    err = pve.task_error(result, f"create CT {vmid}")
                    if err.kind != PveErrorKind.ALREADY_EXISTS:
                        raise err
                # Re-read, never assume: a lost race leaves someone else's container here.
                cfg = _settled_config(ctx, pve, node, vmid)
                if cfg is None:
                    raise StepError(f"CT {vmid} vanished right after its create task",
                                    retryable=True, kind="vanished")
        if cfg is not None and is_ours(cfg, inst):
            ctx.checkpoint(Step.CONTAINER, f"CT {vmid} on {node} is ours")
            return inst
        if cfg is None:
            continue
        new_vmid = allocation_replace_vmid(instance_id=inst.id, old_vmid=vmid, actor=ctx.actor,
                                           reason=f"foreign container on VMID {vmid}")
        ctx.note(f"VMID {vmid} holds a container that is not ours; moved to VMID {new_vmid}")
    raise StepError(f"no usable VMID after {MAX_VMID_ATTEMPTS} tries (foreign containers)",
                    kind="vmid_conflict")


def _foreign_or_ours_elsewhere(pve: ProxmoxClient, inst: ContainerInstance,
                               err: ProxmoxError) -> dict[str, Any] | None:
    """'already exists' although our node has no such CT: look cluster-wide."""
    for res in pve.cluster_resources():
        if int(res.get("vmid", -1)) == inst.vmid and res.get("node") != inst.node.name:
            if str(inst.id) in owners_from_tags(parse_tags(res.get("tags"))):
                raise StepError(
                    f"our CT {inst.vmid} is on node {res.get('node')}, expected {inst.node.name}; "
                    "an operator must decide", kind="wrong_node")
            return {"tags": res.get("tags", ""), "node": res.get("node")}
    raise StepError(f"{err.message}; not visible cluster-wide yet", retryable=True,
                    kind="already_exists")


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


def container_power(pve: ProxmoxClient, inst: ContainerInstance) -> str | None:
    status = pve.ct_status(inst.node.name, inst.vmid)
    return None if status is None else str(status.get("status"))


def container_start(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance) -> None:
    power = container_power(pve, inst)
    if power is None:
        raise StepError(f"CT {inst.vmid} does not exist on {inst.node.name}", kind="missing")
    if power == PowerState.RUNNING:
        return
    run_task(ctx, pve, lambda: pve.ct_start(inst.node.name, inst.vmid),
             what=f"start CT {inst.vmid}", done=(PveErrorKind.ALREADY_RUNNING,))
    ctx.note(f"CT {inst.vmid} started")


def container_stop(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance) -> None:
    """Let the game save, shut the container down cleanly, and stop it hard only if the clean
    shutdown does not finish in time. A missing container counts as stopped."""
    power = container_power(pve, inst)
    if power is None:
        ctx.note(f"CT {inst.vmid} does not exist; nothing to stop")
        return
    if power != PowerState.RUNNING:
        return
    ask_game_to_stop(ctx, inst)
    node, vmid = inst.node.name, inst.vmid
    try:
        upid = pve.ct_shutdown(node, vmid, timeout=settings.CONTAINER_SHUTDOWN_TIMEOUT)
        result = pve.task_wait(upid, timeout=settings.CONTAINER_SHUTDOWN_TIMEOUT + 60,
                               on_tick=ctx.renew)
        if result.ok:
            ctx.note(f"CT {vmid} shut down")
            return
        ctx.note(f"clean shutdown did not finish ({result.exitstatus}); stopping hard")
    except ProxmoxError as err:
        if err.kind in _GONE_OR_STOPPED:
            return
        if not err.retryable:
            raise
        ctx.note(f"shutdown failed ({err.message}); stopping hard")
    if run_task(ctx, pve, lambda: pve.ct_stop(node, vmid), what=f"stop CT {vmid}",
                done=_GONE_OR_STOPPED):
        ctx.note(f"CT {vmid} stopped hard")


def container_destroy(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance) -> None:
    """Destroy with purge; "does not exist" counts as done. A foreign container on the VMID is
    never destroyed."""
    node, vmid = inst.node.name, inst.vmid
    cfg = _settled_config(ctx, pve, node, vmid)
    if cfg is None:
        ctx.note(f"CT {vmid} does not exist; nothing to destroy")
        return
    if not is_ours(cfg, inst):
        ctx.note(f"CT {vmid} is not ours; left alone")
        return
    if container_power(pve, inst) == PowerState.RUNNING:
        run_task(ctx, pve, lambda: pve.ct_stop(node, vmid), what=f"stop CT {vmid}",
                 done=_GONE_OR_STOPPED)
    if not run_task(ctx, pve, lambda: pve.ct_destroy(node, vmid), what=f"destroy CT {vmid}",
                    done=(PveErrorKind.NOT_FOUND,)):
        return
    ctx.note(f"CT {vmid} destroyed")
