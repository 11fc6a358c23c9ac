"""Start, graceful stop and restart of a provisioned server."""
from __future__ import annotations

from typing import Any

from core.errors import ExternalError

from ...choices import InstanceStatus as S
from ...clients.proxmox import PowerState
from ...models import ContainerInstance
from ..context import OperationContext
from ..steps import RESTART_STOP_DONE, Step
from ..steps.agent import agent_session, resume_wait_ready, wait_ready
from ..steps.payload import provisioning_payload
from ..steps.edge import publish_step, velocity_unregister_step
from ..steps.proxmox import container_power, container_start, container_stop, proxmox
from ..steps.status import begin, finish, record_failure, settle_on_failure
from . import Flow


def start_steps(ctx: OperationContext, *, also: tuple[tuple[str, Any], ...] = (),
                reschedule: bool = False) -> None:
    """Container running, agent up and holding the current credential, game started, ready,
    edge published. `also`: other secrets the agent may hold (see agent_session).
    `reschedule`: the wait for readiness queues the operation instead of holding the worker
    (wait_ready); a claim inside that wait (`ctx.waiting`) resumes at it."""
    if reschedule and ctx.waiting:
        publish_step(ctx, resume_wait_ready(ctx))
        return
    pve = proxmox()
    inst = container_start(ctx, pve, ctx.instance())  # the fresh row: it may have moved
    ctx.checkpoint(Step.STARTED, f"CT {inst.vmid} running")
    # A rotation made while stopped is delivered here.
    agent, _ = agent_session(ctx, inst, also=also)
    try:
        if inst.reconfigure_at_start:
            # Resized while stopped (or mid-resize): the game takes its new configuration
            # (memory) in place before it starts; the world is kept.
            agent.provision({**provisioning_payload(inst), "reconfigure": True})
            ContainerInstance.objects.filter(pk=inst.pk).update(reconfigure_at_start=False)
            ctx.note("configuration sent again (new plan)")
        agent.game_start()
        wait_ready(ctx, agent, reschedule=reschedule)
    finally:
        agent.close()
    publish_step(ctx, inst)


def stop_steps(ctx: OperationContext) -> None:
    """Velocity first (no player is sent to a server going away), then a graceful stop."""
    inst = ctx.instance()
    velocity_unregister_step(ctx, inst)
    container_stop(ctx, proxmox(), inst)  # followed to its node if it moved
    ctx.checkpoint(Step.STOPPED, "container stopped")


def _run_start(ctx: OperationContext) -> None:
    begin(ctx)
    start_steps(ctx, reschedule=True)
    finish(ctx, expected=ctx.spec.working, to=ctx.spec.ends_in)


def _run_stop(ctx: OperationContext) -> None:
    begin(ctx)
    stop_steps(ctx)
    finish(ctx, expected=ctx.spec.working, to=ctx.spec.ends_in)


def _run_restart(ctx: OperationContext) -> None:
    begin(ctx)
    if ctx.step not in RESTART_STOP_DONE:
        stop_steps(ctx)
    start_steps(ctx, reschedule=True)
    finish(ctx, expected=ctx.spec.working, to=ctx.spec.ends_in)


def _settle_by_power(ctx: OperationContext, error: dict[str, Any]) -> None:
    """After a failed power operation, show what the container really does. If Proxmox cannot
    say either, claim nothing: the server keeps its working status (with the error), and the
    reconciler settles it from what it observes once Proxmox answers (unknown is not stopped)."""
    try:
        _, power = container_power(ctx, proxmox(), ctx.instance())
    except ExternalError:
        record_failure(ctx, error)
        return
    to = S.RUNNING if power == PowerState.RUNNING else S.STOPPED
    settle_on_failure(ctx, expected=(ctx.spec.working,), to=to, error=error)


START = Flow(run=_run_start, on_failure=_settle_by_power)
STOP = Flow(run=_run_stop, on_failure=_settle_by_power)
RESTART = Flow(run=_run_restart, on_failure=_settle_by_power)
