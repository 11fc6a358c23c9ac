"""Give a server's container its plan's memory, cores and disk (operation kind `resize`).

The request (services/resizes.py) has put the new sizes on the server's row; this flow makes
the container match the row, reading before each change so a retry redoes only what is
missing. Memory and cores change online when Proxmox can hotplug them; what it cannot take
while the container runs waits in the container's pending changes and is applied by a stop
and a start (graceful: the world is saved first). A running game server also restarts then,
so its game takes the new memory; a stopped one gets it at its next start
(`reconfigure_at_start`). The disk only grows. The server's status never changes.
"""
from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.db import transaction

from notifications.services import alert_resolve

from ...choices import InstanceStatus as S
from ...choices import Kind
from ...clients.proxmox import ProxmoxClient
from ...models import ContainerInstance
from ..context import OperationContext
from ..errors import StepError
from ..steps import RESTART_STOP_DONE, Step
from ..steps.status import failure_alert_key, record_failure
from . import Flow
from ..steps.proxmox import proxmox
from .power import start_steps, stop_steps

_SIZE_RE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)")
_UNIT_GB = {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1, "T": 1024, "": 1 / 1024 ** 3}


def rootfs_gb(rootfs: Any) -> float | None:
    """The size of a `rootfs` config value ("local-lvm:vm-1-disk-0,size=8G") in GB."""
    match = _SIZE_RE.search(str(rootfs or ""))
    return float(match.group(1)) * _UNIT_GB[match.group(2)] if match else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _apply(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance) -> bool:
    """Container config and disk as the row says; True when a change waits for a restart."""
    node, vmid = inst.node.name, inst.vmid
    cfg = pve.ct_config(node, vmid)
    if cfg is None:
        raise StepError(f"CT {vmid} is not on {node}; the reconciler will find where it is",
                        retryable=True, kind="missing")
    changes = {key: want for key, want in (("memory", inst.memory_mb), ("cores", inst.cores))
               if _int(cfg.get(key)) != want}
    if changes:
        pve.ct_config_set(node, vmid, **changes)
        ctx.note("set " + ", ".join(f"{k} {v}" for k, v in changes.items()))
    size = rootfs_gb(cfg.get("rootfs"))
    if size is None or size < inst.disk_gb:
        upid = pve.ct_resize(node, vmid, disk="rootfs", size=f"{inst.disk_gb}G")
        if upid:
            result = pve.task_wait(upid, timeout=settings.PROXMOX_TASK_TIMEOUT,
                                   on_tick=ctx.renew)
            if not result.ok:
                raise pve.task_error(result, f"resize the disk of CT {vmid}")
        ctx.note(f"disk grown to {inst.disk_gb} GB")
    waiting = [e["key"] for e in pve.ct_pending(node, vmid)
               if e["key"] in ("memory", "cores") and e.get("pending") is not None]
    if waiting:
        ctx.note(f"{', '.join(waiting)} wait for a restart (not hotpluggable now)")
    # The game takes its memory at a start: restart a game server whose memory moved, now or
    # in an earlier attempt or operation (a re-applied failed resize has from == to).
    moved = ctx.params.get("from", {}).get("memory_mb") != inst.memory_mb or (
        ctx.params.get("from") == ctx.params.get("to"))
    return bool(waiting) or (inst.kind == Kind.GAME and ("memory" in changes or moved))


def _run(ctx: OperationContext) -> None:
    inst = ctx.instance()
    if "restart" not in ctx.params:  # a retry after this point goes on with the restart
        restart = _apply(ctx, proxmox(), inst)
        ctx.remember(restart=restart)
        ctx.checkpoint(Step.RESIZED, f"CT {inst.vmid}: {inst.memory_mb} MB, {inst.cores} "
                                     f"cores, {inst.disk_gb} GB")
    restart = bool(ctx.params.get("restart"))
    inst = ctx.instance()
    if restart and inst.status == S.RUNNING:
        # The game (or the container) takes the new sizes at a start: a graceful restart.
        if inst.kind == Kind.GAME:
            ContainerInstance.objects.filter(pk=inst.pk).update(reconfigure_at_start=True)
        if ctx.step not in RESTART_STOP_DONE:
            stop_steps(ctx)
        start_steps(ctx)
    elif restart and inst.kind == Kind.GAME:
        ContainerInstance.objects.filter(pk=inst.pk).update(reconfigure_at_start=True)
        ctx.note("the game takes the new memory at its next start")
    with transaction.atomic():
        alert_resolve(failure_alert_key(ctx.instance_id, ctx.kind),
                      body=f"The {ctx.kind} succeeded.")
        ctx.succeed()


def _on_failure(ctx: OperationContext, error: dict[str, Any]) -> None:
    """Keep the status and say why; a game server whose resize failed gets its configuration
    again at its next start, whatever the container took meanwhile."""
    record_failure(ctx, error)
    ContainerInstance.objects.filter(pk=ctx.instance_id, kind=Kind.GAME).update(
        reconfigure_at_start=True)


RESIZE = Flow(run=_run, on_failure=_on_failure)
