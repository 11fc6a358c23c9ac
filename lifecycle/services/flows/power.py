"""Start, graceful stop and restart of a provisioned server."""
from __future__ import annotations

from typing import Any

from ...choices import InstanceStatus as S
from ..edge import publish_step, velocity_unregister_step
from ..runner import OperationContext
from .common import (
    Flow,
    agent_for,
    container_power,
    container_start,
    container_stop,
    finish,
    move,
    proxmox,
    settle_on_failure,
    wait_agent,
    wait_ready,
)


def start_steps(ctx: OperationContext) -> None:
    """Container running, agent up, game started, ready."""
    pve = proxmox()
    inst = ctx.instance()
    container_start(ctx, pve, inst)
    ctx.checkpoint("started", f"CT {inst.vmid} running")
    agent = agent_for(inst)
    try:
        wait_agent(ctx, agent)
        agent.game_start()
        wait_ready(ctx, agent)
    finally:
        agent.close()
    publish_step(ctx, inst)


def stop_steps(ctx: OperationContext) -> None:
    inst = ctx.instance()
    velocity_unregister_step(ctx, inst)
    container_stop(ctx, proxmox(), inst)
    ctx.checkpoint("stopped", "container stopped")


def _run_start(ctx: OperationContext) -> None:
    move(ctx, expected=S.STOPPED, to=S.STARTING)
    start_steps(ctx)
    finish(ctx, expected=S.STARTING, to=S.RUNNING)


def _run_stop(ctx: OperationContext) -> None:
    move(ctx, expected=S.RUNNING, to=S.STOPPING)
    stop_steps(ctx)
    finish(ctx, expected=S.STOPPING, to=S.STOPPED)


def _run_restart(ctx: OperationContext) -> None:
    move(ctx, expected=S.RUNNING, to=S.RESTARTING)
    if ctx.step not in ("stopped", "started", "agent", "ready"):
        stop_steps(ctx)
    start_steps(ctx)
    finish(ctx, expected=S.RESTARTING, to=S.RUNNING)


def _settle_by_power(ctx: OperationContext, expected: tuple[str, ...], error: dict[str, Any]) -> None:
    """After a failed power operation, show what the container really does."""
    try:
        power = container_power(proxmox(), ctx.instance())
    except Exception:  # Proxmox unreachable too: leave the status to the reconciler
        power = None
    to = S.RUNNING if power == "running" else S.STOPPED
    settle_on_failure(ctx, expected=expected, to=to, error=error)


START = Flow(run=_run_start,
             on_failure=lambda ctx, err: _settle_by_power(ctx, (S.STARTING,), err))
STOP = Flow(run=_run_stop,
            on_failure=lambda ctx, err: _settle_by_power(ctx, (S.STOPPING,), err))
RESTART = Flow(run=_run_restart,
               on_failure=lambda ctx, err: _settle_by_power(ctx, (S.RESTARTING,), err))
