"""Celery tasks of the lifecycle app: thin, take ids, call the worker or a service. Their
queues are set in one place, by name (zlh/celery.py)."""
from __future__ import annotations

from celery import shared_task
from celery.signals import worker_init

from .services.backup_schedule import backup_schedule_tick
from .services.backups import backup_remove, backup_sweep
from .services.edge import velocity_resync_run
from .services.ide_tokens import ide_tokens_prune
from .services.schedules import schedule_announce, server_schedule_tick
from .worker.runner import operation_run
from .worker.verify import backup_verify_run
from .worker.sweeper import operation_sweep, quarantine_release, server_purge_due
from .operation_kinds import SPECS


@worker_init.connect
def _load_flows(**_kwargs) -> None:
    """Import every operation kind's flow when a worker starts, not in its first operation of
    that kind (in a burst, each process's first provisions would wait on the imports)."""
    for spec in SPECS.values():
        spec.load_flow()


@shared_task(name="lifecycle.execute_operation", acks_late=True, ignore_result=True)
def execute_operation(operation_id: str) -> str:
    return operation_run(operation_id=operation_id)


@shared_task(name="lifecycle.sweep_operations", ignore_result=True)
def sweep_operations() -> dict:
    return {**operation_sweep(), **backup_sweep()}


@shared_task(name="lifecycle.backup_schedule", ignore_result=True)
def backup_schedule() -> dict:
    return backup_schedule_tick()


@shared_task(name="lifecycle.backup_verify", ignore_result=True)
def backup_verify() -> dict:
    return backup_verify_run()


@shared_task(name="lifecycle.backup_remove", acks_late=True, ignore_result=True)
def backup_remove_task(backup_id: str) -> str:
    return backup_remove(backup_id=backup_id)


@shared_task(name="lifecycle.purge_due", ignore_result=True)
def purge_due() -> int:
    return server_purge_due()


@shared_task(name="lifecycle.release_quarantine", ignore_result=True)
def release_quarantine() -> dict:
    return {**quarantine_release(), "ide_tokens_pruned": ide_tokens_prune()}


@shared_task(name="lifecycle.velocity_resync", ignore_result=True)
def velocity_resync_task() -> dict:
    return velocity_resync_run()


@shared_task(name="lifecycle.server_schedules", ignore_result=True)
def server_schedules() -> dict:
    return server_schedule_tick()


@shared_task(name="lifecycle.schedule_announce", ignore_result=True)
def schedule_announce_task(schedule_id: str, due: str) -> str:
    return schedule_announce(schedule_id=schedule_id, due=due)
