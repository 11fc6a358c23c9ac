"""The beat schedule (one table in settings) and the task routes (one table in zlh/celery.py),
run by a real beat process."""
from __future__ import annotations

import importlib

import pytest
from django.apps import apps
from django.conf import settings
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from lifecycle.services.servers import server_create
from tests.support import broker
from tests.support.platform import game_body
from tests.support.stack import wait_status
from tests.support.workers import start_beat, start_worker
from zlh.celery import QUEUES, TASK_QUEUES
from zlh.celery import app as celery_app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]

SCHEDULE_MIGRATIONS = ("lifecycle.migrations.0003_periodic_tasks",
                       "notifications.migrations.0002_flush_schedule",
                       "reconciler.migrations.0002_cycle_schedule")


def _registered() -> set[str]:
    celery_app.loader.import_default_modules()
    return {name for name in celery_app.tasks if not name.startswith("celery.")}


def test_every_task_has_a_route_and_every_route_a_task():
    assert set(TASK_QUEUES) == _registered()
    assert set(TASK_QUEUES.values()) <= set(QUEUES)
    for task, queue in TASK_QUEUES.items():  # what a send by name is routed to
        assert celery_app.amqp.router.route({}, task)["queue"].name == queue


def test_every_schedule_entry_names_a_routed_task_and_expires():
    assert settings.CELERY_BEAT_SCHEDULE
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert entry["task"] in TASK_QUEUES, name
        every = entry["schedule"].total_seconds()
        assert 0 < entry["options"]["expire_seconds"] <= every, name


def test_beat_installs_the_schedule_over_what_the_old_migrations_made():
    """The landed data migrations made rows once; beat's table is the one source now: it
    updates those rows in place (same names) and adds any new entry, no duplicates."""
    for module in SCHEDULE_MIGRATIONS:  # the test database is flushed between tests
        importlib.import_module(module).create(apps, None)
    migrated = set(PeriodicTask.objects.values_list("name", flat=True))
    assert migrated <= set(settings.CELERY_BEAT_SCHEDULE)
    DatabaseScheduler(app=celery_app, lazy=True).setup_schedule()
    rows = {t.name: t for t in PeriodicTask.objects.exclude(name__startswith="celery.")}
    assert set(rows) == set(settings.CELERY_BEAT_SCHEDULE)
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        row = rows[name]
        assert row.task == entry["task"]
        assert row.interval.every == entry["schedule"].total_seconds()
        assert row.expire_seconds == entry["options"]["expire_seconds"]
        assert row.enabled


def test_beat_recovers_work_lost_with_a_wiped_redis(stack, worker_env, owner, tmp_path):
    result = server_create(owner=owner.user, data=game_body("beat-sweep"))
    broker.client().flushall()  # the create's message is gone
    worker = start_worker(worker_env(), tmp_path, name="beatw")
    # Tick every second for the test (production: every 30 s).
    beat = start_beat(worker_env(ZLH_SWEEP_INTERVAL_SECONDS="1"), tmp_path)
    try:
        wait_status(result.instance.id, "running", timeout=60)  # no help from the test
    finally:
        beat.stop()
        worker.stop()
    assert "lifecycle.sweep_operations" in beat.log()
    assert PeriodicTask.objects.get(name="lifecycle: sweep operations").interval.every == 1
