"""The Celery application: its queues, which queue each task runs on, delivery settings.

This is the only place in Python where a queue name is written: every task is routed by its
name (services send tasks by name too, so they never import tasks). The beat schedule is
`CELERY_BEAT_SCHEDULE` in settings; the DatabaseScheduler syncs it into django-celery-beat's
tables whenever beat starts. Tasks are thin (ids in, a service call out); the database row is
always the receipt, so at-least-once delivery is made safe by claiming that row, never by
Celery's task id.
"""
from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "zlh.settings")

#: The worker queues: one per kind of work, so a slow kind cannot starve another.
QUEUES = ("lifecycle", "repair", "edge", "notify")

#: Every task and the queue it runs on (a test checks both directions against the registry).
TASK_QUEUES: dict[str, str] = {
    "lifecycle.execute_operation": "lifecycle",
    "lifecycle.sweep_operations": "lifecycle",
    "lifecycle.purge_due": "lifecycle",
    "lifecycle.release_quarantine": "lifecycle",
    "lifecycle.backup_remove": "lifecycle",
    "lifecycle.backup_schedule": "lifecycle",
    "lifecycle.backup_verify": "lifecycle",
    "lifecycle.velocity_resync": "edge",
    "reconciler.run_cycle": "repair",
    "reconciler.repair": "repair",
    "notifications.send_channel": "notify",
    "notifications.flush": "notify",
}

app = Celery("zlh")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = tuple(Queue(name) for name in QUEUES)
app.conf.task_routes = {task: {"queue": queue} for task, queue in TASK_QUEUES.items()}
app.autodiscover_tasks()
