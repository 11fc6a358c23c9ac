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
from celery.signals import task_postrun, task_prerun
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "zlh.settings")

#: The worker queues: one per kind of work, so a slow kind cannot starve another.
QUEUES = ("lifecycle", "repair", "edge", "notify")

#: How each queue's worker runs, as deployed (deploy/Procfile, deploy/compose.yaml, the systemd
#: units, `make demo`; a test keeps them in step): pool and concurrency per process. A
#: lifecycle task spends its time waiting on Proxmox and the agents (a provision holds its task
#: for minutes), so that queue runs many threads per process: a waiting operation costs a
#: thread, not a process. Each thread has its own database connection, closed after every task
#: there (DB_CONN_MAX_AGE=0), so idle threads hold none. The other queues' tasks are short and
#: few.
WORKER_POOLS: dict[str, tuple[str, int]] = {
    "lifecycle": ("threads", 24),
    "repair": ("prefork", 2),
    "edge": ("prefork", 2),
    "notify": ("prefork", 2),
}
#: Worker processes per host and queue (1 unless said). One Python process runs on one core at
#: a time (the GIL), and in a burst the lifecycle threads' own work (HTTP calls, SQL, parsing:
#: ~160 ms of CPU per provision) fills that core: so the lifecycle queue runs in two processes
#: of 24 threads, 48 operations in flight per host (docs/performance.md, the burst).
WORKER_PROCESSES: dict[str, int] = {"lifecycle": 2}
#: The environment a queue's worker runs with, on top of the deployment's.
WORKER_ENV: dict[str, dict[str, str]] = {"lifecycle": {"DB_CONN_MAX_AGE": "0"}}

#: Every task and the queue it runs on (a test checks both directions against the registry).
TASK_QUEUES: dict[str, str] = {
    "lifecycle.execute_operation": "lifecycle",
    "lifecycle.sweep_operations": "lifecycle",
    "lifecycle.purge_due": "lifecycle",
    "lifecycle.release_quarantine": "lifecycle",
    "lifecycle.backup_remove": "lifecycle",
    "lifecycle.backup_schedule": "lifecycle",
    "lifecycle.backup_verify": "lifecycle",
    "lifecycle.server_schedules": "lifecycle",
    "lifecycle.schedule_announce": "lifecycle",
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

_log_tokens: dict[str, object] = {}


@task_prerun.connect
def _bind_task(task_id=None, task=None, **_kwargs) -> None:
    """Every line a task logs names the task and its id (core/logs.py)."""
    from core.logs import push

    _log_tokens[task_id] = push(task=getattr(task, "name", None), task_id=task_id)


@task_postrun.connect
def _unbind_task(task_id=None, **_kwargs) -> None:
    from core.logs import pop

    token = _log_tokens.pop(task_id, None)
    if token is not None:
        pop(token)
