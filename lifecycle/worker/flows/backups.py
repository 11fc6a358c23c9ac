"""Back up a server's container (operation kind `backup`): the steps are
`lifecycle/worker/steps/backups.py` (flush the world, vzdump exactly once, one archive)."""
from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.functions import Now

from notifications.services import alert_resolve

from ...choices import BackupState
from ...models import Backup
from ..context import OperationContext
from ..errors import StepError
from ..steps import Step
from ..steps.backups import archive_step
from ..steps.proxmox import proxmox
from ..steps.status import failure_alert_key
from . import Flow


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


def _on_failure(ctx: OperationContext, error: dict[str, Any]) -> None:
    """The backup failed for good: its row says why (the server itself is untouched, and a new
    backup can be requested at once)."""
    Backup.objects.filter(pk=ctx.params.get("backup_id"), state=BackupState.CREATING).update(
        state=BackupState.FAILED, error=error, finished_at=Now(), updated_at=Now())


BACKUP = Flow(run=_run, on_failure=_on_failure)
