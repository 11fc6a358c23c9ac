"""The beat schedule from the data migration, run by a real beat process."""
from __future__ import annotations

import importlib

import pytest
from django.apps import apps
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from lifecycle.services.servers import server_create
from tests.support import broker
from tests.support.platform import game_body
from tests.support.workers import start_worker
from zlh.celery import app as celery_app

from tests.support.stack import wait_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]

schedule_migration = importlib.import_module("lifecycle.migrations.0003_periodic_tasks")


def test_schedule_names_registered_tasks():
    schedule_migration.create(apps, None)  # the test database is flushed between tests
    tasks = {t.name: t for t in PeriodicTask.objects.all()}
    assert {"lifecycle: sweep operations", "lifecycle: purge due servers",
            "lifecycle: release quarantine"} <= set(tasks)
    celery_app.loader.import_default_modules()
    for task in tasks.values():  # also other apps' entries, if their migration rows are here
        assert task.task in celery_app.tasks, task.task
        assert task.expire_seconds
        assert task.queue == celery_app.amqp.router.route({}, task.task)["queue"].name


def test_beat_recovers_work_lost_with_a_wiped_redis(stack, worker_env, owner, tmp_path):
    from tests.support.workers import start_beat

    schedule_migration.create(apps, None)
    # Tick every second for the test (production: every 30 s).
    IntervalSchedule.objects.filter(periodictask__name="lifecycle: sweep operations").update(
        every=1)
    result = server_create(owner=owner.user, data=game_body("beat-sweep"))
    broker.client().flushall()  # the create's message is gone
    worker = start_worker(worker_env(), tmp_path, name="beatw")
    beat = start_beat(worker_env(), tmp_path)
    try:
        wait_status(result.instance.id, "running", timeout=60)  # no help from the test
    finally:
        beat.stop()
        worker.stop()
    assert "lifecycle.sweep_operations" in beat.log()
