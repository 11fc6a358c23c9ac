"""The lifecycle app's beat schedule (django-celery-beat rows), created once by migration.

Each entry expires after one interval, so a backlog after an outage does not replay old ticks.
"""
from django.db import migrations

SCHEDULE = (
    # (name, task, every seconds)
    ("lifecycle: sweep operations", "lifecycle.sweep_operations", 30),
    ("lifecycle: purge due servers", "lifecycle.purge_due", 300),
    ("lifecycle: release quarantine", "lifecycle.release_quarantine", 600),
)


def create(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, every in SCHEDULE:
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period="seconds")
        PeriodicTask.objects.update_or_create(
            name=name,
            defaults={"task": task, "interval": interval, "queue": "lifecycle",
                      "expire_seconds": every, "enabled": True},
        )


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[name for name, _, _ in SCHEDULE]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("lifecycle", "0002_operation_runner_fields"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]
