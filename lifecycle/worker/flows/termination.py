"""Soft delete (stop, unpublish, `deleted`, window), restore, and purge (destroy, quarantine)."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now

from core.clock import db_after, db_now

from notifications.services import notify_lifecycle

from ...choices import BackupKind, DesiredState
from ...choices import InstanceStatus as S
from ...services.agent_credentials import agent_credential_rotate
from ...services.allocations import allocation_release_to_quarantine
from ...services.nodes import node_release_memory
from ..context import OperationContext
from ..errors import StepError
from ..steps import Step
from ..steps.backups import backup_before
from ..steps.edge import unpublish_step
from ..steps.proxmox import container_destroy, nothing_of_ours_left, proxmox
from ..steps.status import begin, finish, record_failure, server_facts, settle_on_failure
from . import Flow
from .power import start_steps, stop_steps


def _run_delete(ctx: OperationContext) -> None:
    begin(ctx)
    unpublish_step(ctx, ctx.instance())
    stop_steps(ctx)
    # The window is judged in SQL (purge_due): written with the database clock.
    finish(ctx, expected=ctx.spec.working, to=ctx.spec.ends_in,
           fields={"deleted_at": Now(),
                   "purge_after": db_after(settings.ZLH_SOFT_DELETE_WINDOW_SECONDS)},
           announce=lambda inst: notify_lifecycle(
               f"{inst.slug} deleted",
               f"Restorable until {inst.purge_after:%Y-%m-%d %H:%M} UTC, purged after that.",
               fields=server_facts(inst), subject=str(inst.id)))


def _run_restore(ctx: OperationContext) -> None:
    inst = ctx.instance()
    if inst.status == S.DELETED and inst.purge_after and inst.purge_after <= db_now():
        raise StepError("the restore window has passed", kind="window_passed")
    begin(ctx)
    if not ctx.step:  # once per restore: a retry after this checkpoint keeps that version
        with transaction.atomic():
            version = agent_credential_rotate(instance_id=ctx.instance_id, actor=ctx.actor,
                                              reason="restore")
            ctx.checkpoint(Step.ROTATED, f"agent credential v{version} made for the restore")
    target = ctx.params.get("target", DesiredState.RUNNING)
    if target == DesiredState.RUNNING:
        start_steps(ctx)  # enrols the new version (the agent's old one authenticates it)
    finish(ctx, expected=ctx.spec.working,
           to=S.RUNNING if target == DesiredState.RUNNING else S.STOPPED,
           fields={"deleted_at": None, "purge_after": None})


def _run_purge(ctx: OperationContext) -> None:
    begin(ctx)
    pve = proxmox()
    if settings.BACKUP_BEFORE_PURGE and ctx.step not in (Step.BACKED_UP, Step.DESTROYED):
        # The world is never destroyed without a copy: no archive, no purge (it fails and is
        # retried, and the operator is told).
        backup = backup_before(ctx, pve, ctx.instance(), kind=BackupKind.PRE_PURGE,
                               notes="final backup before purge",
                               keep_seconds=settings.BACKUP_PRE_PURGE_KEEP_DAYS * 86400)
        ctx.checkpoint(Step.BACKED_UP, f"final backup {backup.id} ready" if backup
                       else "nothing to back up")
    container_destroy(ctx, pve, ctx.instance())  # on whichever node it is now
    # Nothing is released while a container carrying the server's tag exists anywhere: its IP
    # and port would go to a new server while it still runs. Unknown is not absent either.
    nothing_of_ours_left(ctx, pve, ctx.instance())
    ctx.checkpoint(Step.DESTROYED, "container gone")
    inst = ctx.instance()  # its node (memory given back) is where the container last was
    with transaction.atomic():
        released = allocation_release_to_quarantine(instance_id=inst.id)
        if inst.node_id:
            node_release_memory(node_id=inst.node_id, memory_mb=inst.memory_mb)
        ctx.note(f"{released} allocations moved to quarantine")
        finish(ctx, expected=ctx.spec.working, to=ctx.spec.ends_in,
               fields={"desired_state": DesiredState.PURGED},
               announce=lambda inst: notify_lifecycle(
                   f"{inst.slug} purged",
                   f"Container destroyed; {released} allocations in quarantine.",
                   fields=server_facts(inst), subject=str(inst.id)))


def _restore_failed(ctx: OperationContext, error: dict[str, Any]) -> None:
    """Back to `deleted`, with a whole new window: a user's explicit restore that failed must
    never end in the purge of their server on the old schedule."""
    settle_on_failure(ctx, expected=(S.RESTORING,), to=S.DELETED, error=error,
                      fields={"purge_after": db_after(settings.ZLH_SOFT_DELETE_WINDOW_SECONDS)})


DELETE = Flow(run=_run_delete, on_failure=record_failure)
RESTORE = Flow(run=_run_restore, on_failure=_restore_failed)
PURGE = Flow(run=_run_purge, on_failure=record_failure)
