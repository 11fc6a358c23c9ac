"""Restore a server from one of its backups, in place (operation kind `restore_backup`).

The scheme: **restore into a temporary VMID, then swap**. PVE's own in-place restore
(`restore=1, force=1` over the existing VMID) removes the old container before the new one is
known to be good: if the archive is damaged or the storage fails halfway, the server is left
with no container at all. Here the old container is untouched until the restored one exists:

1. a backup of the current state (`pre_restore`, kept BACKUP_PRE_RESTORE_KEEP_DAYS);
2. a spare VMID is claimed for the server and the archive restored there, with the server's
   own config (hostname, IP, tags, limits) and its firewall, and not started;
3. the old container is stopped (gracefully), then, in one transaction, the server's VMID
   becomes the restored one (the old VMID stays claimed by the server as `replaced`);
4. the agent's credential is rotated and handed to the restored agent, authenticated by the
   secret it held when the backup was taken; the game is started and the edge published (a
   server that was stopped stays stopped);
5. the old container is destroyed and its VMID goes to quarantine.

IP, ports, DNS and Velocity stay as they are: only the VMID changes. A failure before step 3's
swap that ends the operation (`OperationContext.ends_with`: not retryable, or the last try)
removes the temporary container, quarantines its VMID and starts the old container again if
the server was running: the server is left on its old container. A failure after the swap is retried like any other operation
(the restored container is the server's now). The server keeps its status throughout; its
active `restore_backup` operation says what is happening.
"""
from __future__ import annotations

from django.conf import settings
from django.db import transaction

from core.errors import ExternalError
from notifications.services import alert_resolve, notify_lifecycle

from ...choices import BackupKind, BackupState, NodeTaskKind
from ...choices import InstanceStatus as S
from ...clients.proxmox import ProxmoxClient, PveErrorKind
from ...models import Backup, ContainerInstance
from ...services.agent_credentials import agent_credential_rotate
from ...services.allocations import (
    allocation_claim_spare_vmid,
    allocation_release_vmid,
    allocation_swap_vmid,
)
from ...services.firewall import Target, firewall_apply
from ...firewall import enabled as firewall_enabled
from ..context import OperationContext
from ..errors import StepError
from ..steps import Step
from ..steps.agent import agent_session
from ..steps.backups import backup_before, held_credentials
from ..steps.proxmox import (
    container_params,
    container_start,
    is_ours,
    proxmox,
    node_task_slot,
    run_task,
    settled_config,
)
from ..steps.status import failure_alert_key, record_failure, server_facts
from . import Flow
from .power import start_steps, stop_steps

def _restore_into(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance,
                  backup: Backup, vmid: int) -> None:
    """The archive restored into CT `vmid` on the server's node, stopped, with the server's
    config and firewall (idempotent: a container of ours already there is taken as made)."""
    node = inst.node.name
    cfg = settled_config(ctx, pve, node, vmid)
    if cfg is None:
        params = {**container_params(inst), "ostemplate": backup.volid, "restore": 1}
        with node_task_slot(ctx, node, NodeTaskKind.RESTORE):
            run_task(ctx, pve, lambda: pve.ct_create(node, vmid, **params),
                     what=f"restore {backup.volid} into CT {vmid}", done=())
        cfg = settled_config(ctx, pve, node, vmid)
        if cfg is None:
            raise StepError(f"CT {vmid} vanished right after its restore", retryable=True,
                            kind="vanished")
    if not is_ours(cfg, inst):
        raise StepError(f"VMID {vmid} holds a guest that is not ours", retryable=False,
                        kind="vmid_conflict")
    if firewall_enabled():
        target = Target(server_id=inst.id, kind=inst.kind, ports=inst.ports or {}, node=node,
                        vmid=vmid)
        _changes, verdict = firewall_apply(pve, target)
        if verdict is None or not verdict.ok:
            raise StepError(f"the firewall of CT {vmid} could not be set up", retryable=True,
                            kind="firewall")
    ctx.checkpoint(Step.RESTORED, f"{backup.volid} restored into CT {vmid} on {node}")


def _destroy(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance,
             vmid: int) -> None:
    """Destroy CT `vmid` on the server's node if it is ours (stopped first); gone is done."""
    node = inst.node.name
    cfg = settled_config(ctx, pve, node, vmid)
    if cfg is None:
        return
    if not is_ours(cfg, inst):
        ctx.note(f"VMID {vmid} holds a guest that is not ours; left alone")
        return
    with node_task_slot(ctx, node, NodeTaskKind.STOP):
        run_task(ctx, pve, lambda: pve.ct_stop(node, vmid), what=f"stop CT {vmid}",
                 done=(PveErrorKind.NOT_RUNNING, PveErrorKind.NOT_FOUND))
    run_task(ctx, pve, lambda: pve.ct_destroy(node, vmid), what=f"destroy CT {vmid}",
             done=(PveErrorKind.NOT_FOUND,))
    ctx.note(f"CT {vmid} destroyed on {node}")


def _abandon(ctx: OperationContext, pve: ProxmoxClient, spare: int | None,
             was_running: bool) -> None:
    """The restore ends before the swap: leave the server on its old container (best effort;
    what could not be done is in the log, the failure is announced by the runner)."""
    inst = ctx.instance()
    try:
        if spare is not None and spare != inst.vmid:
            _destroy(ctx, pve, inst, spare)
            allocation_release_vmid(instance_id=inst.id, vmid=spare)
            ctx.note(f"temporary CT {spare} removed, VMID {spare} in quarantine")
        if was_running:
            container_start(ctx, pve, inst)
            ctx.note(f"CT {inst.vmid} (the server's own container) started again")
    except (ExternalError, StepError) as err:
        ctx.note(f"could not undo everything ({err.message}); the reconciler starts the "
                 "server's container if it should run")


def _run(ctx: OperationContext) -> None:
    """Each stage is remembered on the operation's params (`ctx.remember`), so a retry or a
    takeover carries on from where the last attempt got, never repeating the swap."""
    backup = Backup.objects.get(pk=ctx.params["backup_id"])
    if backup.state != BackupState.READY or not backup.volid:
        raise StepError(f"backup {backup.id} is {backup.state}", retryable=False,
                        kind="backup_state")
    pve = proxmox()
    done = ctx.params
    if "was_running" not in done:
        ctx.remember(was_running=ctx.instance().status == S.RUNNING)
    was_running = bool(done["was_running"])
    if not done.get("swapped"):
        spare = done.get("spare_vmid")
        try:
            if not done.get("backed_up"):
                pre = backup_before(ctx, pve, ctx.instance(), kind=BackupKind.PRE_RESTORE,
                                    notes=f"before restoring backup {backup.id}",
                                    keep_seconds=settings.BACKUP_PRE_RESTORE_KEEP_DAYS * 86400)
                ctx.remember(backed_up=True)
                ctx.checkpoint(Step.BACKED_UP, f"current state backed up ({pre.id})" if pre
                               else "no container to back up")
            if spare is None:
                spare = allocation_claim_spare_vmid(instance_id=ctx.instance_id)
                ctx.remember(spare_vmid=spare)
            if not done.get("restored"):
                _restore_into(ctx, pve, ctx.instance(), backup, spare)
                ctx.remember(restored=True)
            if was_running and not done.get("old_stopped"):
                stop_steps(ctx)
                ctx.remember(old_stopped=True)
            with transaction.atomic():
                old = allocation_swap_vmid(instance_id=ctx.instance_id, new_vmid=spare,
                                           actor=ctx.actor, reason=f"restore of {backup.id}")
                ctx.remember(swapped=True, old_vmid=old)
                ctx.checkpoint(Step.SWAPPED, f"the server is CT {spare} now (was CT {old})")
        except Exception as err:
            if ctx.ends_with(err):
                _abandon(ctx, pve, spare, was_running)
            raise
    if not done.get("rotated"):
        with transaction.atomic():
            version = agent_credential_rotate(instance_id=ctx.instance_id, actor=ctx.actor,
                                              reason=f"restore of backup {backup.id}")
            ctx.remember(rotated=True)
            ctx.checkpoint(Step.ROTATED, f"agent credential v{version} made for the restore")
    # The restored agent holds the credential of the day the backup was taken: hand it the
    # new one now, authenticated by that one (also for a server that stays stopped: the
    # control plane knows that old secret only here).
    held = held_credentials(backup)
    if not done.get("started"):
        if was_running:
            start_steps(ctx, also=held)
        else:
            inst = container_start(ctx, pve, ctx.instance())
            agent, _ = agent_session(ctx, inst, also=held)
            agent.close()
            stop_steps(ctx)
        ctx.remember(started=True)
    old = done.get("old_vmid")
    if old and not done.get("old_destroyed"):
        _destroy(ctx, pve, ctx.instance(), old)
        allocation_release_vmid(instance_id=ctx.instance_id, vmid=old)
        ctx.remember(old_destroyed=True)
        ctx.checkpoint(Step.DESTROYED, f"the old CT {old} destroyed, VMID {old} in quarantine")
    with transaction.atomic():
        inst = ctx.instance()
        alert_resolve(failure_alert_key(ctx.instance_id, ctx.kind),
                      body="A restore of this server succeeded.")
        notify_lifecycle(f"{inst.slug} restored from a backup",
                         f"Backup of {backup.created_at:%Y-%m-%d %H:%M} UTC restored; the "
                         f"server is {inst.status} on CT {inst.vmid}.",
                         fields=server_facts(inst), subject=str(inst.id))
        ctx.succeed()


RESTORE_BACKUP = Flow(run=_run, on_failure=record_failure)
