"""ServerSchedule: an owner's standing order for a server ("restart every day at 04:00")."""
from __future__ import annotations

import uuid

from django.db import models

from ..choices import ScheduleAction, ScheduleResult

__all__ = ("ServerSchedule",)

#: Bit `d` of `weekdays` is set when the schedule runs on weekday `d` (Monday 0 … Sunday 6).
EVERY_DAY = 0b1111111


class ServerSchedule(models.Model):
    """At `time_of_day` in the owner's time zone, on the days in `weekdays`, the schedule asks
    for `action` like the owner would (the same request service, so the same refusals). Beat's
    tick (`services.schedules.server_schedule_tick`) reads `next_run_at`, the next time it is
    due in UTC, written with the database's clock; requesting the action and moving
    `next_run_at` on happen in one transaction, so each time runs at most once, and times that
    passed while nothing ran collapse into one decision (never a pile of restarts)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    instance = models.ForeignKey("lifecycle.ContainerInstance", on_delete=models.CASCADE,
                                 related_name="schedules")
    action = models.CharField(max_length=16, choices=ScheduleAction.choices)
    #: Local wall-clock time (hours and minutes) in the owner's time zone.
    time_of_day = models.TimeField()
    weekdays = models.PositiveSmallIntegerField(default=EVERY_DAY)
    #: Game servers: tell the players in game this many minutes before (0: no announcement).
    announce_minutes = models.PositiveSmallIntegerField(default=0)
    enabled = models.BooleanField(default=True)
    #: When it is next due (UTC); NULL while disabled.
    next_run_at = models.DateTimeField(null=True, blank=True)
    #: The `next_run_at` whose announcement was sent (at most one per time).
    announced_for = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_result = models.CharField(max_length=16, choices=ScheduleResult.choices, blank=True)
    last_message = models.CharField(max_length=300, blank=True)
    last_operation = models.ForeignKey("lifecycle.Operation", on_delete=models.SET_NULL,
                                       null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("time_of_day", "action")
        constraints = [
            models.UniqueConstraint(fields=("instance", "action", "time_of_day"),
                                    name="schedule_unique_per_time"),
        ]
        indexes = [
            models.Index(fields=("enabled", "next_run_at"), name="schedule_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} at {self.time_of_day:%H:%M} ({self.instance_id})"
