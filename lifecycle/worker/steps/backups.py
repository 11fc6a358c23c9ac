"""Backup steps (the `backup` operation, and the backups a purge or a restore takes first):
flush the world, run the backup's vzdump exactly once, find its one archive, mark it ready.

- A running server keeps running: the game is asked to `save-all flush` and `save-off` first
  (the agent turns saving on again by itself after a bound, should we die before we say so),
  vzdump runs in snapshot mode, and `save-on` follows whatever happened. An agent that does
  not answer (a crashed game, a tenant's dev container) does not prevent the backup; the
  backup records that the world was not flushed.
- Exactly one archive per backup: the vzdump's UPID is kept on the backup row before it is
  waited for, so a retry after a worker died waits for that task instead of starting another;
  the archive is found by the `zlh-backup:<id>` its notes carry, and should two exist anyway
  (a worker that died between starting the task and writing its UPID), the extra is removed.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models.functions import Now

from core.clock import db_after

from ...choices import BackupState, NodeTaskKind
from ...choices import InstanceStatus as S
from ...clients.agent import AgentError
from ...clients.proxmox import ProxmoxClient, ProxmoxError, PveErrorKind
from ...models import AgentCredential, Backup, ContainerInstance
from ...services.agent_credentials import decrypt_secret
from ..context import OperationContext
from ..errors import StepError
from . import Step
from .agent import agent_for
from .proxmox import container_power, node_task_slot

#: Margin on top of the vzdump timeout before the agent turns saving on by itself.
FLUSH_HOLD_MARGIN = 120


def archives_of(pve: ProxmoxClient, backup: Backup) -> list[dict[str, Any]]:
    """The archives of this backup (by the marker in their notes), oldest first."""
    found = [v for v in pve.backup_volumes(backup.node, backup.storage, vmid=backup.vmid)
             if backup.marker in str(v.get("notes") or "").split()]
    return sorted(found, key=lambda v: (v.get("ctime") or 0, v["volid"]))


def the_archive(ctx: OperationContext, pve: ProxmoxClient,
                backup: Backup) -> dict[str, Any] | None:
    """The one archive of this backup; extras (there should be none) are removed."""
    found = archives_of(pve, backup)
    for extra in found[1:]:
        ctx.note(f"a second archive of this backup ({extra['volid']}): removing it")
        try:
            upid = pve.volume_delete(backup.node, backup.storage, extra["volid"])
            if upid:
                pve.task_wait(upid, timeout=settings.PROXMOX_TASK_TIMEOUT, on_tick=ctx.renew)
        except ProxmoxError as err:
            ctx.note(f"could not remove {extra['volid']}: {err.message}")
    return found[0] if found else None


def held_credentials(backup: Backup) -> tuple[tuple[str, Any], ...]:
    """(secret, server id) pairs the agent of a container restored from `backup` may hold,
    newest first (decrypted here, only to derive the token that authenticates a handover)."""
    return tuple((decrypt_secret(token), backup.instance_id) for _v, token in
                 sorted(backup.agent_secrets.items(), key=lambda kv: -int(kv[0])))


def _held_secrets(inst: ContainerInstance) -> dict[str, str]:
    """The credential versions the agent may hold as the archive is taken (encrypted)."""
    cred = AgentCredential.objects.filter(pk=inst.id).first()
    if cred is None:
        return {}
    held = {str(cred.version): cred.secret_encrypted}
    if cred.previous_encrypted:
        held[str(cred.version - 1)] = cred.previous_encrypted
    return held


def _flush(ctx: OperationContext, inst: ContainerInstance):
    """Ask the game to flush and pause saving; (agent client or None, flushed)."""
    if inst.status != S.RUNNING:
        ctx.note(f"the server is {inst.status}: its world is on disk as it is")
        return None, None
    agent = agent_for(inst)
    try:
        agent.world_flush(hold_seconds=settings.BACKUP_TASK_TIMEOUT_SECONDS + FLUSH_HOLD_MARGIN)
        ctx.note("the game saved the world (save-all flush) and paused saving (save-off)")
        return agent, True
    except AgentError as err:
        agent.close()
        ctx.note(f"the agent did not flush the world ({err.message}); the snapshot is taken as "
                 "the disk is")
        return None, False


def _resume(ctx: OperationContext, agent) -> None:
    if agent is None:
        return
    try:
        agent.world_resume()
        ctx.note("saving resumed (save-on)")
    except AgentError as err:
        ctx.note(f"could not resume saving ({err.message}); the agent resumes by itself")
    finally:
        agent.close()


def _vzdump(ctx: OperationContext, pve: ProxmoxClient, backup: Backup) -> None:
    """Run the backup's vzdump once: wait for the task an earlier attempt started, else start
    one and keep its UPID before waiting."""
    upid = backup.task_upid
    if upid:
        ctx.note(f"waiting for the vzdump an earlier attempt started ({upid})")
    else:
        # The container may have moved since the backup was asked for: back it up where it is.
        node = ContainerInstance.objects.filter(pk=backup.instance_id).values_list(
            "node__name", flat=True).first()
        if node and node != backup.node:
            Backup.objects.filter(pk=backup.pk).update(node=node)
            backup.node = node
        upid = pve.vzdump(backup.node, backup.vmid, storage=backup.storage,
                          notes=f"{backup.marker} {{{{guestname}}}}")
        Backup.objects.filter(pk=backup.pk).update(task_upid=upid, updated_at=Now())
        backup.task_upid = upid
        ctx.checkpoint(Step.BACKUP_STARTED, f"vzdump of CT {backup.vmid} on {backup.node} "
                                            f"into {backup.storage} started")
    result = pve.task_wait(upid, timeout=settings.BACKUP_TASK_TIMEOUT_SECONDS,
                           on_tick=ctx.renew)
    if not result.ok:
        # The next attempt starts a new one.
        Backup.objects.filter(pk=backup.pk).update(task_upid="", updated_at=Now())
        err = pve.task_error(result, f"back up CT {backup.vmid}")
        # "job errors" with the container locked (a start, a migration): worth another try.
        retryable = err.retryable or err.kind in (PveErrorKind.LOCKED, PveErrorKind.TASK_FAILED)
        raise StepError(err.message, retryable=retryable, kind=err.kind)


def archive_step(ctx: OperationContext, pve: ProxmoxClient, backup: Backup,
                 inst: ContainerInstance) -> dict[str, Any]:
    """Make the backup's one archive (or find the one an earlier attempt made) and mark the
    backup ready; returns the archive as PVE lists it. `inst` says whether to flush (running)."""
    archive = the_archive(ctx, pve, backup)
    flushed = backup.flushed
    if archive is None:
        # The node's backup place first: the world is not flushed for a backup that waits.
        with node_task_slot(ctx, inst.node.name, NodeTaskKind.BACKUP,
                            ttl=settings.BACKUP_TASK_TIMEOUT_SECONDS + 120):
            agent, flushed = _flush(ctx, inst)
            Backup.objects.filter(pk=backup.pk).update(flushed=flushed,
                                                       agent_secrets=_held_secrets(inst))
            try:
                _vzdump(ctx, pve, backup)
            finally:
                _resume(ctx, agent)
        archive = the_archive(ctx, pve, backup)
        if archive is None:
            raise StepError(f"vzdump finished, but no archive in {backup.storage} carries "
                            f"{backup.marker}", retryable=True, kind="archive_missing")
    elif flushed and inst.status == S.RUNNING:
        # An earlier attempt flushed the world and died before turning saving on again.
        _resume(ctx, agent_for(inst))
    updated = Backup.objects.filter(pk=backup.pk, state=BackupState.CREATING).update(
        state=BackupState.READY, volid=archive["volid"], size_bytes=archive.get("size"),
        finished_at=Now(), error=None, updated_at=Now())
    if not updated and not Backup.objects.filter(pk=backup.pk, state=BackupState.READY,
                                                 volid=archive["volid"]).exists():
        raise StepError(f"backup {backup.id} changed meanwhile", retryable=False,
                        kind="backup_state")
    ctx.note(f"{backup.kind} backup: archive {archive['volid']} "
             f"({(archive.get('size') or 0) / 1024**2:.0f} MiB)")
    return archive


def backup_before(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance, *,
                  kind: str, notes: str, keep_seconds: int | None = None) -> Backup | None:
    """The backup a destructive step takes first (one per operation: a retry finds the row and
    the archive an earlier attempt made). None when there is no container to back up. Not
    counted against the owner's quota and never refused by it: the platform takes it."""
    backup = Backup.objects.filter(operation_id=ctx.operation_id, kind=kind).first()
    if backup is None:
        inst, power = container_power(ctx, pve, inst)  # followed, should it have moved
        if power is None:
            ctx.note(f"no container of CT {inst.vmid} to back up before the {ctx.kind}")
            return None
        backup = Backup.objects.create(
            instance=inst, owner_id=inst.owner_id, kind=kind, operation_id=ctx.operation_id,
            node=inst.node.name, storage=settings.PROXMOX_BACKUP_STORAGE, vmid=inst.vmid,
            notes=notes[:200],
            expires_at=db_after(keep_seconds) if keep_seconds else None)
    if backup.state == BackupState.READY:
        return backup
    if backup.state != BackupState.CREATING:
        raise StepError(f"the {kind} backup {backup.id} is {backup.state}", retryable=False,
                        kind="backup_state")
    archive_step(ctx, pve, backup, inst)
    backup.refresh_from_db()
    return backup
