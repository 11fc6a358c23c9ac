"""Provision: ensure the container → its firewall → start it → give the agent its credential →
send it the payload (installed before the first boot) → wait for ready → publish the edge →
running."""
from __future__ import annotations

from typing import Any

from notifications.services import notify_lifecycle

from ...choices import InstanceStatus as S
from ...clients.agent import AgentState
from ...models import ContainerInstance
from ..context import OperationContext
from ..steps import Step
from ..steps.agent import agent_session, wait_ready
from ..steps.edge import publish_step
from ..steps.firewall import firewall_step
from ..steps.payload import provisioning_payload
from ..steps.proxmox import container_start, ensure_container, proxmox
from ..steps.status import begin, finish, server_facts, settle_on_failure
from . import Flow


def run(ctx: OperationContext) -> None:
    begin(ctx, fields={"last_error": None})
    pve = proxmox()
    inst = ensure_container(ctx, pve)
    firewall_step(ctx, pve, inst)  # before the first start: the agent port is closed to others
    inst = container_start(ctx, pve, inst)
    ctx.checkpoint(Step.STARTED, f"CT {inst.vmid} running")

    agent, status = agent_session(ctx, inst)  # enrolled before anything else is sent
    try:
        state = status.get("state")
        if state == AgentState.FAILED or not (
            status.get("provisioningComplete") or state == AgentState.INSTALLING
        ):
            reply = agent.provision(provisioning_payload(inst))
            ctx.checkpoint(Step.PAYLOAD,
                           f"payload sent ({'replayed' if reply.get('replay') else 'new'})")
        else:
            ctx.checkpoint(Step.PAYLOAD, f"agent already has the payload ({state})")
        wait_ready(ctx, agent)
    finally:
        agent.close()
    publish_step(ctx, inst)  # only now: Velocity never gets a backend that cannot answer
    finish(ctx, expected=ctx.spec.working, to=ctx.spec.ends_in, announce=_announce_running)


def _announce_running(inst: ContainerInstance) -> None:
    notify_lifecycle(f"{inst.slug} is running", "Provisioning succeeded.",
                     fields=server_facts(inst), subject=str(inst.id))


def on_failure(ctx: OperationContext, error: dict[str, Any]) -> None:
    settle_on_failure(ctx, expected=(S.PENDING, S.PROVISIONING), to=S.FAILED, error=error)
    inst = ctx.instance()
    # The operator's warning is the runner's (announce_failure), like every failed operation.
    notify_lifecycle(f"Provisioning {inst.slug} failed", error["message"],
                     fields=server_facts(inst), subject=str(inst.id))


PROVISION = Flow(run=run, on_failure=on_failure)
