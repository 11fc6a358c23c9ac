"""Provision: ensure the container → start it → send the agent its payload (installed before
the first boot) → wait for ready → running."""
from __future__ import annotations

from typing import Any

from notifications.services import alert_resolve, notify_lifecycle, notify_warning

from ...choices import InstanceStatus as S
from ...models import ContainerInstance
from ..edge import publish_step
from ..runner import OperationContext
from .common import (
    Flow,
    agent_for,
    container_start,
    ensure_container,
    finish,
    move,
    provisioning_payload,
    proxmox,
    server_facts,
    settle_on_failure,
    wait_agent,
    wait_ready,
)


def run(ctx: OperationContext) -> None:
    move(ctx, expected=(S.PENDING, S.FAILED, S.MISSING), to=S.PROVISIONING,
         fields={"last_error": None})
    pve = proxmox()
    inst = ensure_container(ctx, pve)
    container_start(ctx, pve, inst)
    ctx.checkpoint("started", f"CT {inst.vmid} running")

    agent = agent_for(inst)
    try:
        status = wait_agent(ctx, agent)
        if status.get("state") == "failed" or not (
            status.get("provisioningComplete") or status.get("state") == "installing"
        ):
            reply = agent.provision(provisioning_payload(inst))
            ctx.checkpoint("payload", f"payload sent ({'replayed' if reply.get('replay') else 'new'})")
        else:
            ctx.checkpoint("payload", f"agent already has the payload ({status.get('state')})")
        wait_ready(ctx, agent)
    finally:
        agent.close()
    publish_step(ctx, inst)  # only now: Velocity never gets a backend that cannot answer
    finish(ctx, expected=S.PROVISIONING, to=S.RUNNING, announce=_announce_running)


def _announce_running(inst: ContainerInstance) -> None:
    notify_lifecycle(f"{inst.slug} is running", "Provisioning succeeded.",
                     fields=server_facts(inst), subject=str(inst.id))
    alert_resolve(f"provision-failed:{inst.id}", body=f"{inst.slug} is running now.")


def on_failure(ctx: OperationContext, error: dict[str, Any]) -> None:
    settle_on_failure(ctx, expected=(S.PENDING, S.PROVISIONING), to=S.FAILED, error=error)
    inst = ctx.instance()
    notify_lifecycle(f"Provisioning {inst.slug} failed", error["message"],
                     fields=server_facts(inst), subject=str(inst.id))
    notify_warning(f"Provisioning {inst.slug} failed", error["message"],
                   fields=server_facts(inst), alert_key=f"provision-failed:{inst.id}",
                   subject=str(inst.id))


PROVISION = Flow(run=run, on_failure=on_failure)
