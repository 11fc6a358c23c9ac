"""Provision: ensure the container → its firewall → start it → give the agent its credential →
send it the payload (installed before the first boot) → wait for ready (no worker held while the
game installs: the operation is queued and looks again, resuming here) → publish the edge →
running. A server made from a backup (`source_backup`) restores the archive instead of the
template, and its agent, holding the backup's world and game, is sent this server's
configuration to apply in place (`reconfigure`)."""
from __future__ import annotations

from typing import Any

from notifications.services import notify_lifecycle

from ...choices import InstanceStatus as S
from ...clients.agent import AgentState
from ...choices import BackupState
from ...models import Backup, ContainerInstance
from ..context import OperationContext
from ..steps import Step
from ..errors import StepError
from ..steps.agent import agent_session, resume_wait_ready, wait_ready
from ..steps.backups import held_credentials
from ..steps.edge import publish_step
from ..steps.firewall import firewall_step
from ..steps.payload import provisioning_payload
from ..steps.proxmox import container_start, ensure_container, proxmox
from ..steps.status import begin, finish, server_facts, settle_on_failure
from . import Flow


def _source(ctx: OperationContext) -> Backup | None:
    """The backup a server made from a backup is restored from (restore as a new server)."""
    source_id = ctx.params.get("source_backup")
    if not source_id:
        return None
    source = Backup.objects.filter(pk=source_id).first()
    if source is None or source.state != BackupState.READY or not source.volid:
        raise StepError(f"backup {source_id} to restore from is "
                        f"{source.state if source else 'gone'}", retryable=False,
                        kind="backup_state")
    return source


def run(ctx: OperationContext) -> None:
    begin(ctx, fields={"last_error": None})
    if ctx.waiting:  # back from the wait for readiness, queued while the game installs
        _publish_and_finish(ctx, resume_wait_ready(ctx))
        return
    pve = proxmox()
    source = _source(ctx)
    inst = ensure_container(ctx, pve, extra={"ostemplate": source.volid, "restore": 1}
                            if source else None)
    firewall_step(ctx, pve, inst)  # before the first start: the agent port is closed to others
    inst = container_start(ctx, pve, inst)
    ctx.checkpoint(Step.STARTED, f"CT {inst.vmid} running")

    # Enrolled before anything else is sent. A container restored from a backup runs an agent
    # that holds the credential of the backup's server: that one authenticates the handover.
    agent, status = agent_session(ctx, inst, also=held_credentials(source) if source else ())
    try:
        state = status.get("state")
        if source is not None:
            # The world and the installed game come from the backup; the agent takes this
            # server's own configuration (port, name, secrets) in place and keeps the world.
            agent.provision({**provisioning_payload(inst), "reconfigure": True})
            ctx.checkpoint(Step.PAYLOAD, f"restored from backup {source.id}; configuration "
                                         "sent (world kept)")
        elif state == AgentState.FAILED or not (
            status.get("provisioningComplete") or state == AgentState.INSTALLING
        ):
            reply = agent.provision(provisioning_payload(inst))
            ctx.checkpoint(Step.PAYLOAD,
                           f"payload sent ({'replayed' if reply.get('replay') else 'new'})")
        else:
            ctx.checkpoint(Step.PAYLOAD, f"agent already has the payload ({state})")
        wait_ready(ctx, agent, reschedule=True)
    finally:
        agent.close()
    _publish_and_finish(ctx, inst)


def _publish_and_finish(ctx: OperationContext, inst: ContainerInstance) -> None:
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
