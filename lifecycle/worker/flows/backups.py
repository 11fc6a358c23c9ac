"""Back up a server's container (operation kind `backup`): the steps are
`lifecycle/worker/steps/backups.py` (flush the world, vzdump exactly once, one archive)."""
from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from django.db import transaction
from django.db.models.functions import Now

from notifications.services import alert_resolve

from ...choices import BackupKind, BackupState
from ...models import Backup
from ..context import OperationContext
from ..errors import StepError
from ..steps import Step
from ..steps.backups import archive_step
from ..steps.proxmox import proxmox
from ..steps.status import failure_alert_key
from . import Flow

logger = logging.getLogger(__name__)
#: The schedule's task (lifecycle/tasks.py), sent by name.
BACKUP_SCHEDULE_TASK = "lifecycle.backup_schedule"


def _next_scheduled(backup_kind: str) -> None:
    """A scheduled backup that ends frees a place on its node: let the schedule fill it now
    rather than at its next tick (after commit; a lost message only waits for that tick)."""
    if backup_kind != BackupKind.SCHEDULED:
        return

    def send() -> None:
        try:
            current_app.send_task(BACKUP_SCHEDULE_TASK)
        except Exception:  # the broker is down: the beat's tick comes anyway
            logger.warning("could not send the backup schedule task", exc_info=True)

    transaction.on_commit(send)


def _run(ctx: OperationContext) -> None:
    backup = Backup.objects.get(pk=ctx.params["backup_id"])
    if backup.state != BackupState.CREATING:
        raise StepError(f"backup {backup.id} is {backup.state}", retryable=False,
                        kind="backup_state")
    archive_step(ctx, proxmox(), backup, ctx.instance())
    with transaction.atomic():
        ctx.checkpoint(Step.DONE, f"backup {backup.id} ready")
        alert_resolve(failure_alert_key(ctx.instance_id, ctx.kind),
                      body="A backup of this server succeeded.")
        ctx.succeed()
        _next_scheduled(backup.kind)


def _on_failure(ctx: OperationContext, error: dict[str, Any]) -> None:
    """The backup failed for good: its row says why (the server itself is untouched, and a new
    backup can be requested at once)."""
    backups = Backup.objects.filter(pk=ctx.params.get("backup_id"))
    backups.filter(state=BackupState.CREATING).update(
        state=BackupState.FAILED, error=error, finished_at=Now(), updated_at=Now())
    _next_scheduled(backups.values_list("kind", flat=True).first() or "")


BACKUP = Flow(run=_run, on_failure=_on_failure)
