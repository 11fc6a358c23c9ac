"""The Celery application: queues, routes and delivery settings of DESIGN §9.

Tasks are thin (ids in, a service call out); the database row is always the receipt, so
at-least-once delivery is made safe by claiming that row, never by Celery's task id.
"""
from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "zlh.settings")

app = Celery("zlh")
app.config_from_object("django.conf:settings", namespace="CELERY")

QUEUES = ("lifecycle", "repair", "edge", "notify")
app.conf.task_queues = tuple(Queue(name) for name in QUEUES)
app.conf.task_routes = {
    "lifecycle.velocity_resync": {"queue": "edge"},
    "lifecycle.*": {"queue": "lifecycle"},
    "reconciler.repair.*": {"queue": "repair"},
    "reconciler.*": {"queue": "repair"},
    "edge.*": {"queue": "edge"},
    "notifications.*": {"queue": "notify"},
}
app.autodiscover_tasks()
