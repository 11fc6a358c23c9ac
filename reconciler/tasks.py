"""Celery tasks of the reconciler (queue `repair`)."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="reconciler.run_cycle", ignore_result=True)
def run_cycle() -> dict:
    from .services import run_cycle as cycle

    return cycle()


@shared_task(name="reconciler.repair", acks_late=True, ignore_result=True)
def run_repair(repair_id: int) -> str:
    from .services import repair_run

    return repair_run(repair_id=repair_id)
