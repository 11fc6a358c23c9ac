"""Celery tasks of the lifecycle app: thin, take ids, call a service."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="lifecycle.execute_operation", acks_late=True, ignore_result=True)
def execute_operation(operation_id: str) -> None:
    from .services.operations import operation_execute

    operation_execute(operation_id=operation_id)
