"""Celery tasks of the lifecycle app: thin, take ids, call a service."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="lifecycle.execute_operation", acks_late=True, ignore_result=True)
def execute_operation(operation_id: str) -> str:
    from .services.operations import operation_execute

    return operation_execute(operation_id=operation_id)


@shared_task(name="lifecycle.sweep_operations", ignore_result=True)
def sweep_operations() -> dict:
    from .services.sweeper import operation_sweep

    return operation_sweep()


@shared_task(name="lifecycle.purge_due", ignore_result=True)
def purge_due() -> int:
    from .services.sweeper import server_purge_due

    return server_purge_due()


@shared_task(name="lifecycle.release_quarantine", ignore_result=True)
def release_quarantine() -> dict:
    from .services.sweeper import quarantine_release

    return quarantine_release()


@shared_task(name="lifecycle.velocity_resync", ignore_result=True)
def velocity_resync_task() -> dict:
    from .services.edge import velocity_resync_run

    return velocity_resync_run()
