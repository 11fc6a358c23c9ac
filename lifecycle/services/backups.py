"""World backups: requests, quotas and removal of archives.

A backup is an operation on its server like any other (kind `backup`, one active operation per
server, claimed and leased by a worker; the flow is `lifecycle/worker/flows/backups.py`), with
a `Backup` row made in the same transaction as the operation, so a request, its quota and the
archive it makes can never disagree. The archive's notes carry `zlh-backup:<id>`: a retry finds
what an earlier attempt made instead of making a second archive.

Removing an archive is not an operation on the server (a purged server's pre-purge backup must
be removable too): the row moves `ready` → `deleting` once (a conditional update), the removal
task is idempotent (an archive already gone is done), and the sweep sends it again for rows
left in `deleting`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import Now

from core.clock import db_now

from ..clients.proxmox import ProxmoxClient, ProxmoxError, PveErrorKind
from ..choices import (
    BACKUP_COUNTED_STATES,
    PLATFORM_BACKUP_KINDS,
    TERMINAL_OPERATION_STATES,
    BackupKind,
    BackupState,
    OperationKind,
    OperationState,
)
from core.db import retry_on_lock_conflict
from ..errors import InvalidState, QuotaExceeded
from ..models import AccountQuota, Backup, ContainerInstance, Operation
from ..operation_kinds import spec_for
from .accounts import quota_ensure
from .audit import Actor, audit_record
from .operations import operation_create_exclusive, operation_refuse_if_active

logger = logging.getLogger(__name__)

#: The task that removes one archive (lifecycle/tasks.py), sent by name after commit.
BACKUP_REMOVE_TASK = "lifecycle.backup_remove"
GB = 1024**3


@dataclass(frozen=True)
class BackupUsage:
    count: int
    bytes: int


@dataclass(frozen=True)
class BackupLimits:
    count: int
    gb: int


def backup_limits(quota: AccountQuota) -> BackupLimits:
    return BackupLimits(
        count=quota.max_backups if quota.max_backups is not None else settings.BACKUP_QUOTA_COUNT,
        gb=quota.max_backup_gb if quota.max_backup_gb is not None else settings.BACKUP_QUOTA_GB)


def backup_usage(*, user_id: Any) -> BackupUsage:
    """What counts against the backup quota: archives that exist or are being made, except
    the ones the platform takes before a purge or a restore (kept for a while, then removed)."""
    row = Backup.objects.filter(owner_id=user_id, state__in=BACKUP_COUNTED_STATES).exclude(
        kind__in=PLATFORM_BACKUP_KINDS).aggregate(
        count=Count("id"), bytes=Sum("size_bytes"))
    return BackupUsage(count=row["count"] or 0, bytes=row["bytes"] or 0)


def _check_quota(owner: Any) -> None:
    """Refuse when the account is at its limits. Called with the account's quota row locked,
    so two requests at once cannot both take the last place."""
    quota = AccountQuota.objects.select_for_update().get(user=owner)
    limits = backup_limits(quota)
    used = backup_usage(user_id=owner.pk)
    if used.count >= limits.count:
        raise QuotaExceeded(
            f"Backup quota reached: {used.count} of {limits.count} backups are kept. Delete a "
            "backup before taking another.",
            fields={"used_backups": used.count, "max_backups": limits.count})
    if used.bytes >= limits.gb * GB:
        raise QuotaExceeded(
            f"Backup quota reached: {used.bytes / GB:.1f} GB of {limits.gb} GB are used. Delete "
            "a backup before taking another.",
            fields={"used_backup_gb": round(used.bytes / GB, 2), "max_backup_gb": limits.gb})


@retry_on_lock_conflict
def backup_request(*, instance_id: Any, actor: Actor, kind: str = BackupKind.MANUAL,
                   notes: str = "", enforce_quota: bool = True,
                   expires_at: Any = None) -> tuple[Backup, Operation]:
    """Accept a backup of a server; returns the backup row and the queued operation.

    Owns its transaction or joins the caller's. The quota is not enforced for the backups the
    platform takes before destroying something (a purge or a restore must not be stopped by
    it, and must not lose the world because of it)."""
    spec = spec_for(OperationKind.BACKUP)
    with transaction.atomic():
        inst = (ContainerInstance.objects.select_for_update().select_related("node", "owner")
                .get(pk=instance_id))
        if inst.status not in spec.requestable_from:
            raise InvalidState(f"Only a running or stopped server can be backed up; this one is "
                               f"{inst.status}.")
        if not (inst.vmid and inst.node_id):
            raise InvalidState("This server has no container to back up.")
        operation_refuse_if_active(instance_id=inst.id)
        quota_ensure(user=inst.owner)
        if enforce_quota:
            _check_quota(inst.owner)
        backup = Backup.objects.create(
            instance=inst, owner_id=inst.owner_id, kind=kind, notes=(notes or "")[:200],
            node=inst.node.name, storage=settings.PROXMOX_BACKUP_STORAGE, vmid=inst.vmid,
            expires_at=expires_at)
        op = operation_create_exclusive(instance_id=inst.id, kind=OperationKind.BACKUP,
                                        requested_by=actor.label,
                                        params={"backup_id": str(backup.id)})
        Backup.objects.filter(pk=backup.pk).update(operation=op)
        backup.operation = op
        audit_record(actor=actor, instance_id=inst.id, action="request:backup",
                     from_status=inst.status,
                     data={"operation": str(op.id), "backup": str(backup.id), "kind": kind})
    return backup, op


_NOT_RESTORABLE = {
    BackupState.CREATING: "This backup is still being made; restore it once it is ready.",
    BackupState.FAILED: "This backup failed; it has no archive to restore.",
    BackupState.DELETING: "This backup is being deleted.",
    BackupState.DELETED: "This backup was deleted.",
}


@retry_on_lock_conflict
def backup_restore_request(*, backup_id: Any, actor: Actor) -> Operation:
    """Restore a server from one of its own backups, in place. One transaction: the server row
    locked, the backup checked (ready, of this server), the operation inserted (the database
    refuses a second active one: two restores at once, one runs)."""
    spec = spec_for(OperationKind.RESTORE_BACKUP)
    with transaction.atomic():
        backup = Backup.objects.get(pk=backup_id)
        inst = ContainerInstance.objects.select_for_update().get(pk=backup.instance_id)
        backup = Backup.objects.get(pk=backup_id)  # read again under the server's lock
        if backup.state in _NOT_RESTORABLE:
            raise InvalidState(_NOT_RESTORABLE[backup.state])
        if not backup.volid:
            raise InvalidState("This backup has no archive to restore.")
        if inst.suspended:
            raise InvalidState("This server is suspended; contact support.")
        if inst.status not in spec.requestable_from:
            raise InvalidState(f"Only a running or stopped server can be restored from a "
                               f"backup; this one is {inst.status}.")
        operation_refuse_if_active(instance_id=inst.id)
        op = operation_create_exclusive(instance_id=inst.id, kind=OperationKind.RESTORE_BACKUP,
                                        requested_by=actor.label,
                                        params={"backup_id": str(backup.id)})
        audit_record(actor=actor, instance_id=inst.id, action="request:restore_backup",
                     from_status=inst.status,
                     data={"operation": str(op.id), "backup": str(backup.id),
                           "volid": backup.volid})
    return op


def backup_restore_as_new(*, backup_id: Any, owner: Any, name: str,
                          idempotency_key: str | None = None) -> Any:
    """A new server made from a backup (of a live server, or the final backup of a purged
    one): the same game and plan as the backup's server, its own name and allocations; its
    provision restores the archive instead of installing. Quota and placement as any create.
    Returns the CreateResult."""
    from .servers import server_create

    backup = Backup.objects.select_related("instance").get(pk=backup_id)
    if backup.state in _NOT_RESTORABLE:
        raise InvalidState(_NOT_RESTORABLE[backup.state])
    if not backup.volid:
        raise InvalidState("This backup has no archive to restore.")
    src = backup.instance
    data = {"name": name, "kind": src.kind, "plan": src.plan}
    if src.kind == "game":
        data.update(variant=src.variant, version=src.version)
    else:
        data.update(runtime=src.runtime, runtime_version=src.runtime_version,
                    enable_code_server=src.enable_code_server)
    return server_create(owner=owner, data=data, idempotency_key=idempotency_key,
                         source_backup=backup)


def backup_in_use(backup: Backup) -> Operation | None:
    """An active operation that reads this backup (a restore from it), if any."""
    return Operation.objects.filter(active_slot__isnull=False).filter(
        Q(kind=OperationKind.RESTORE_BACKUP, params__backup_id=str(backup.id))
        | Q(kind=OperationKind.PROVISION, params__source_backup=str(backup.id))).first()


@retry_on_lock_conflict
def backup_delete_request(*, backup_id: Any, actor: Actor) -> Backup:
    """Remove a backup: the row moves to `deleting` once and the archive's removal is sent
    after commit. Refused while it is still being made or read by a restore."""
    with transaction.atomic():
        backup = Backup.objects.select_for_update().get(pk=backup_id)
        if backup.state == BackupState.CREATING:
            raise InvalidState("This backup is still being made; delete it once it is ready.")
        if backup.state in (BackupState.DELETING, BackupState.DELETED):
            return backup  # asked twice: the first request carries on
        using = backup_in_use(backup)
        if using is not None:
            raise InvalidState(f"This backup is being read by a {using.kind} operation; "
                               "delete it once that has finished.")
        to = BackupState.DELETING if backup.volid else BackupState.DELETED
        Backup.objects.filter(pk=backup.pk).update(
            state=to, deleted_at=Now() if to == BackupState.DELETED else None,
            updated_at=Now())
        audit_record(actor=actor, instance_id=backup.instance_id, action="backup:delete",
                     data={"backup": str(backup.id), "volid": backup.volid,
                           "kind": backup.kind})
        if to == BackupState.DELETING:
            transaction.on_commit(lambda: backup_remove_enqueue(backup_id=backup.id))
    backup.refresh_from_db()
    return backup


def backup_remove_enqueue(*, backup_id: Any) -> bool:
    """Send the removal task; never raises (the sweep sends it again)."""
    try:
        current_app.send_task(BACKUP_REMOVE_TASK, args=[str(backup_id)])
        return True
    except Exception:  # broker down: the row stays `deleting`, the sweep retries
        logger.warning("could not enqueue the removal of backup %s", backup_id, exc_info=True)
        return False


def backup_remove(*, backup_id: Any) -> str:
    """Remove one archive from the backup storage (idempotent: an archive already gone, or a
    backup no longer `deleting`, is done). Returns what happened."""
    backup = Backup.objects.filter(pk=backup_id).first()
    if backup is None or backup.state != BackupState.DELETING:
        return "nothing to do"
    # Touch the row: the sweep sends the removal again only for rows left alone for a while.
    Backup.objects.filter(pk=backup.pk, state=BackupState.DELETING).update(updated_at=Now())
    pve = ProxmoxClient.from_settings()
    node = backup.node
    try:
        upid = pve.volume_delete(node, backup.storage, backup.volid)
        if upid:
            result = pve.task_wait(upid, timeout=settings.PROXMOX_TASK_TIMEOUT)
            if not result.ok:
                err = pve.task_error(result, f"delete {backup.volid}")
                if err.kind != PveErrorKind.NOT_FOUND:
                    raise err
    except ProxmoxError as err:
        if err.kind != PveErrorKind.NOT_FOUND and "no such volume" not in err.message.lower():
            logger.warning("backup %s: removal failed, the sweep retries: %s", backup.id,
                           err.message)
            Backup.objects.filter(pk=backup.pk).update(
                error={"message": err.message[:500], "kind": err.kind}, updated_at=Now())
            return "failed"
    Backup.objects.filter(pk=backup.pk, state=BackupState.DELETING).update(
        state=BackupState.DELETED, deleted_at=Now(), error=None, updated_at=Now())
    return "deleted"


def backup_sweep() -> dict[str, int]:
    """Send the removal again for backups left in `deleting` (a lost message, a failure), and
    end backups whose operation ended without making them (cancelled as expired, stale): they
    would count against the quota for ever."""
    cutoff = db_now() - timedelta(seconds=settings.BACKUP_DELETE_RETRY_SECONDS)
    stuck = list(Backup.objects.filter(state=BackupState.DELETING, updated_at__lt=cutoff)
                 .values_list("id", flat=True)[:100])
    for backup_id in stuck:
        backup_remove_enqueue(backup_id=backup_id)
    orphaned = Backup.objects.filter(
        state=BackupState.CREATING,
        operation__state__in=sorted(TERMINAL_OPERATION_STATES - {OperationState.SUCCEEDED}),
    ).update(state=BackupState.FAILED, finished_at=Now(), updated_at=Now(),
             error={"kind": "operation_ended", "message": "its operation ended before the "
                    "backup was made", "retryable": False})
    # Backups kept for a while (a purged server's final backup) go when their time is up.
    expired = 0
    for backup_id in list(Backup.objects.filter(state=BackupState.READY,
                                                expires_at__lte=Now())
                          .values_list("id", flat=True)[:100]):
        backup_delete_request(backup_id=backup_id,
                              actor=Actor.system("backup expiry"))
        expired += 1
    return {"removals_resent": len(stuck), "backups_abandoned": orphaned,
            "backups_expired": expired, "failed_archives_removed": _failed_archives_remove()}


def _failed_archives_remove(limit: int = 10) -> int:
    """A backup that failed after its vzdump had started (the archive was made but could not
    be confirmed, the operation ran out of tries) may have left an archive: remove it, so the
    storage holds only archives of ready backups. Done when none is left (`task_upid`
    cleared); a Proxmox failure leaves it for the next sweep."""
    removed = 0
    failed = list(Backup.objects.filter(state=BackupState.FAILED).exclude(task_upid="")
                  .order_by("updated_at")[:limit])
    if not failed:
        return 0
    pve = ProxmoxClient.from_settings()
    for backup in failed:
        try:
            for volume in pve.backup_volumes(backup.node, backup.storage, vmid=backup.vmid):
                if backup.marker in str(volume.get("notes") or "").split():
                    upid = pve.volume_delete(backup.node, backup.storage, volume["volid"])
                    if upid:
                        pve.task_wait(upid, timeout=settings.PROXMOX_TASK_TIMEOUT)
                    removed += 1
        except ProxmoxError as err:
            logger.info("archive of failed backup %s not removed yet: %s", backup.id,
                        err.message)
            continue
        Backup.objects.filter(pk=backup.pk, state=BackupState.FAILED).update(
            task_upid="", updated_at=Now())
    return removed
