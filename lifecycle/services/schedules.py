"""Per-server schedules: "restart every day at 04:00", in the owner's time zone (run by beat).

A schedule is the owner's standing order; at its time it asks for its action through the same
request service as the owner would (`server_request`), so it gets the same refusals: while
another operation is in progress the time is skipped (`skipped_busy`) and the next one stands;
a restart of a stopped server is skipped (`skipped_state`). It never queues behind, never
retries later and never runs twice for one time.

Times: `time_of_day` is wall-clock time in the owner's time zone (their profile, else
ACCOUNT_DEFAULT_TIME_ZONE). `next_run_at` is the next such time in UTC. A local time that does
not exist on a day (the hour skipped when clocks go forward) runs at the same offset after the
change (02:30 becomes 03:30); one that happens twice (clocks going back) runs the first time
only. Changing the time zone moves every schedule of the account.

One tick at a time (a MariaDB named lock, independent of Redis). For each due schedule one
transaction locks its row, checks it is still due, asks for the action and moves `next_run_at`
past now: each time runs at most once whichever ticks overlap, and a worker killed mid-way
leaves the schedule due for the next tick. A time that passed more than
SERVER_SCHEDULE_MISFIRE_SECONDS before a tick saw it (beat was down) is recorded as `missed`
and not run late; all the times missed in a row make one such record, never a pile of restarts.

Announcements: a game server's schedule with `announce_minutes` tells the players in game
(`say …` through the console) that many minutes before; sent once per time, by a task of its
own, so an agent that does not answer delays nothing else. It is a courtesy: when it cannot be
delivered the action still runs at its time.
"""
from __future__ import annotations

import logging
import math
from datetime import datetime, time, timedelta
from datetime import timezone as dt_timezone
from functools import lru_cache
from time import monotonic as time_monotonic
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q

from core.clock import db_now
from core.db import named_lock, retry_on_lock_conflict

from ..choices import LIVE_STATUSES, InstanceStatus, Kind, ScheduleAction, ScheduleResult
from ..errors import InvalidRequest, InvalidState, LifecycleError, OperationInProgress
from ..models import AccountProfile, ContainerInstance, ServerSchedule
from ..models.schedules import EVERY_DAY
from .actions import server_request
from .audit import Actor, audit_record
from .console import server_console

logger = logging.getLogger(__name__)

LOCK_NAME = "zlh_server_schedules"
ANNOUNCE_TASK = "lifecycle.schedule_announce"
ANNOUNCE_MAX_MINUTES = 60
#: Due schedules read at a time (a tick reads batches until none is due or its interval is up).
TICK_BATCH = 500
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: The actions whose time players may be warned of (a start has nobody to warn).
ANNOUNCEABLE = frozenset({ScheduleAction.RESTART, ScheduleAction.STOP})
_FIELDS = ("action", "time_of_day", "weekdays", "announce_minutes", "enabled")


# --- time zones and times ------------------------------------------------------------------

@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def time_zone_errors(name: Any) -> list[str]:
    """Why `name` is not a time zone we accept (empty: it is)."""
    if not isinstance(name, str) or not name:
        return ["Give an IANA time zone name, e.g. 'Europe/Berlin' or 'UTC'."]
    if name not in _zone_names():
        return [f"'{name[:64]}' is not a known time zone; use an IANA name such as "
                "'Europe/Berlin', 'America/New_York' or 'UTC'."]
    return []


def time_zone_of(user_id: Any) -> str:
    """The account's time zone name (its profile's, else the default)."""
    name = (AccountProfile.objects.filter(user_id=user_id)
            .values_list("time_zone", flat=True).first())
    return name or settings.ACCOUNT_DEFAULT_TIME_ZONE


def next_occurrence(*, time_of_day: time, weekdays: int, zone: str,
                    after: datetime) -> datetime:
    """The first time strictly after `after` (aware) that is `time_of_day` on one of
    `weekdays` in `zone`, in UTC. A local time in a DST gap maps forward by the gap (fold 0:
    the offset before the change); an ambiguous one maps to its first occurrence."""
    if not weekdays & EVERY_DAY:
        raise ValueError("a schedule needs at least one weekday")
    tz = ZoneInfo(zone)
    local_day = after.astimezone(tz).date()
    for offset in range(8):  # today through the same weekday next week
        day = local_day + timedelta(days=offset)
        if not weekdays & (1 << day.weekday()):
            continue
        candidate = datetime.combine(day, time_of_day.replace(second=0, microsecond=0),
                                     tzinfo=tz).astimezone(dt_timezone.utc)
        if candidate > after:
            return candidate
    raise AssertionError("unreachable: a weekday in every 8 days")


def weekdays_from_names(names: list[str]) -> int:
    return sum(1 << DAY_NAMES.index(name) for name in set(names))


def weekdays_to_names(mask: int) -> list[str]:
    return [name for i, name in enumerate(DAY_NAMES) if mask & (1 << i)]


# --- requests (API and admin) --------------------------------------------------------------

def schedule_problems(server: ContainerInstance, values: dict[str, Any]) -> dict[str, list[str]]:
    """What is wrong with a schedule of `server` with `values` (keyed by the API's field
    names; empty: nothing)."""
    fields: dict[str, list[str]] = {}
    if values["action"] not in ScheduleAction.values:
        fields["action"] = [f"One of: {', '.join(ScheduleAction.values)}."]
    t = values["time_of_day"]
    if not isinstance(t, time) or t.second or t.microsecond or t.tzinfo is not None:
        fields["time"] = ["A local time in hours and minutes, e.g. '04:00'."]
    if not isinstance(values["weekdays"], int) or not 0 < values["weekdays"] <= EVERY_DAY:
        fields["days"] = ["At least one day of the week."]
    minutes = values["announce_minutes"]
    if not isinstance(minutes, int) or not 0 <= minutes <= ANNOUNCE_MAX_MINUTES:
        fields["announce_minutes"] = [f"From 0 to {ANNOUNCE_MAX_MINUTES}."]
    elif minutes and server.kind != Kind.GAME:
        fields["announce_minutes"] = ["Only game servers have players to announce to; use 0."]
    elif minutes and values["action"] not in ANNOUNCEABLE:
        fields["announce_minutes"] = ["Only a restart or a stop is announced; use 0."]
    return fields


def _validate(server: ContainerInstance, values: dict[str, Any]) -> None:
    fields = schedule_problems(server, values)
    if fields:
        raise InvalidRequest("This schedule is not valid; see fields.", fields=fields)


def _describe(schedule: ServerSchedule) -> dict[str, Any]:
    return {"schedule": str(schedule.id), "action": schedule.action,
            "time": schedule.time_of_day.strftime("%H:%M"),
            "days": weekdays_to_names(schedule.weekdays),
            "announce_minutes": schedule.announce_minutes, "enabled": schedule.enabled,
            "next_run_at": schedule.next_run_at.isoformat() if schedule.next_run_at else None}


def _place(schedule: ServerSchedule, *, zone: str, now: datetime) -> None:
    """Set the schedule's next time after `now` in `zone` (none while disabled)."""
    schedule.next_run_at = next_occurrence(
        time_of_day=schedule.time_of_day, weekdays=schedule.weekdays, zone=zone,
        after=now) if schedule.enabled else None


def _save(schedule: ServerSchedule, *, actor: Actor, action: str) -> None:
    """Save (the same action at the same time twice is a clear refusal) and audit."""
    try:
        with transaction.atomic():
            schedule.save()
    except IntegrityError as exc:
        raise InvalidRequest(
            f"This server already has a {schedule.action} at {schedule.time_of_day:%H:%M}; "
            "change that schedule's days instead.",
            fields={"time": ["Already scheduled."]}) from exc
    audit_record(actor=actor, instance_id=schedule.instance_id, action=action,
                 data=_describe(schedule))


@retry_on_lock_conflict
def schedule_create(*, actor: Actor, server: ContainerInstance, action: str, time_of_day: time,
                    weekdays: int = EVERY_DAY, announce_minutes: int = 0,
                    enabled: bool = True) -> ServerSchedule:
    """Add a schedule to a server (at most SERVER_SCHEDULES_MAX per server)."""
    values = {"action": action, "time_of_day": time_of_day, "weekdays": weekdays,
              "announce_minutes": announce_minutes, "enabled": enabled}
    _validate(server, values)
    with transaction.atomic():
        # The server's row serialises its schedule count.
        inst = ContainerInstance.objects.select_for_update().get(pk=server.pk)
        if inst.status not in LIVE_STATUSES:
            raise InvalidState(f"The server is {inst.status}; it cannot be scheduled.")
        if ServerSchedule.objects.filter(instance_id=inst.pk).count() \
                >= settings.SERVER_SCHEDULES_MAX:
            raise InvalidRequest(
                f"A server has at most {settings.SERVER_SCHEDULES_MAX} schedules; change or "
                "remove one first.")
        schedule = ServerSchedule(instance=inst, **values)
        _place(schedule, zone=time_zone_of(inst.owner_id), now=db_now())
        _save(schedule, actor=actor, action="schedule:create")
    return schedule


@retry_on_lock_conflict
def schedule_update(*, actor: Actor, schedule_id: Any, **changes: Any) -> ServerSchedule:
    """Change a schedule; its next time is placed again from now."""
    unknown = set(changes) - set(_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown schedule fields: {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        schedule = (ServerSchedule.objects.select_for_update().select_related("instance")
                    .get(pk=schedule_id))
        for name, value in changes.items():
            setattr(schedule, name, value)
        _validate(schedule.instance, {name: getattr(schedule, name) for name in _FIELDS})
        _place(schedule, zone=time_zone_of(schedule.instance.owner_id), now=db_now())
        schedule.announced_for = None
        _save(schedule, actor=actor, action="schedule:update")
    return schedule


@transaction.atomic
def schedule_delete(*, actor: Actor, schedule_id: Any) -> None:
    schedule = ServerSchedule.objects.select_for_update().get(pk=schedule_id)
    audit_record(actor=actor, instance_id=schedule.instance_id, action="schedule:delete",
                 data=_describe(schedule))
    schedule.delete()


@retry_on_lock_conflict
def profile_set_time_zone(*, actor: Actor, user: Any, time_zone: str) -> AccountProfile:
    """Set the account's time zone; every schedule of the account moves to it at once."""
    problems = time_zone_errors(time_zone)
    if problems:
        raise InvalidRequest("Unknown time zone.", fields={"time_zone": problems})
    with transaction.atomic():
        profile, _ = AccountProfile.objects.select_for_update().get_or_create(
            user=user, defaults={"time_zone": time_zone})
        before = profile.time_zone
        if profile.time_zone != time_zone:
            profile.time_zone = time_zone
            profile.save(update_fields=("time_zone", "updated_at"))
        now = db_now()
        moved = 0
        for schedule in ServerSchedule.objects.select_for_update().filter(
                instance__owner=user, enabled=True):
            _place(schedule, zone=time_zone, now=now)
            schedule.announced_for = None
            schedule.save(update_fields=("next_run_at", "announced_for", "updated_at"))
            moved += 1
        audit_record(actor=actor, action="profile:time_zone",
                     data={"user": user.get_username(), "from": before, "to": time_zone,
                           "schedules_moved": moved})
    return profile


# --- the tick (beat) -----------------------------------------------------------------------

def server_schedule_tick() -> dict[str, int]:
    """Send the announcements that are due, then run the schedules that are due."""
    counts = {"due": 0, **{result: 0 for result in ScheduleResult.values}, "announced": 0}
    if not settings.SERVER_SCHEDULES_ENABLED:
        return counts
    with named_lock(LOCK_NAME) as held:
        if not held:
            counts["skipped_tick"] = 1
            return counts
        now = db_now()
        counts["announced"] = _announce_due(now)
        # Batches of the longest-due first, until none is due or the tick has used its
        # interval (the next tick goes on: a fleet all at 04:00 is decided in order).
        started = time_monotonic()
        while True:
            due = list(ServerSchedule.objects.filter(
                enabled=True, next_run_at__lte=now, instance__status__in=LIVE_STATUSES)
                .order_by("next_run_at").values_list("id", flat=True)[:TICK_BATCH])
            counts["due"] += len(due)
            for schedule_id in due:
                result = _run_one(schedule_id)
                if result:
                    counts[result] += 1
            if len(due) < TICK_BATCH or \
                    time_monotonic() - started > settings.ZLH_SERVER_SCHEDULE_INTERVAL_SECONDS:
                break
    if counts["due"] or counts["announced"]:
        logger.info("server schedules: %s", counts)
    return counts


@retry_on_lock_conflict
def _run_one(schedule_id: Any) -> str | None:
    """Decide one due time of one schedule: request its action, skip it, or record it as
    missed; then place the next time. One transaction: at most once per time."""
    with transaction.atomic():
        now = db_now()
        schedule = (ServerSchedule.objects.select_for_update().select_related("instance")
                    .filter(pk=schedule_id, enabled=True, next_run_at__lte=now).first())
        if schedule is None:  # changed, disabled or done meanwhile
            return None
        server = schedule.instance
        late = (now - schedule.next_run_at).total_seconds()
        operation = None
        if late > settings.SERVER_SCHEDULE_MISFIRE_SECONDS:
            result = ScheduleResult.MISSED
            message = (f"Due at {schedule.next_run_at:%Y-%m-%d %H:%M} UTC; nothing ran until "
                       f"{now:%Y-%m-%d %H:%M} UTC, too late to {schedule.action} now.")
        else:
            try:
                with transaction.atomic():  # a refusal leaves nothing behind
                    operation = server_request(
                        instance_id=server.pk, kind=schedule.action,
                        actor=Actor.system(f"schedule {schedule.id}"),
                        params={"schedule": str(schedule.id)})
                result = ScheduleResult.REQUESTED
                message = f"{schedule.action} requested (operation {operation.id})."
            except OperationInProgress as exc:
                result, message = ScheduleResult.SKIPPED_BUSY, exc.message
            except LifecycleError as exc:
                result, message = ScheduleResult.SKIPPED_STATE, exc.message
        schedule.last_run_at = now
        schedule.last_result = result
        schedule.last_message = message[:300]
        if operation is not None:
            schedule.last_operation = operation
        _place(schedule, zone=time_zone_of(server.owner_id), now=now)
        schedule.save(update_fields=("last_run_at", "last_result", "last_message",
                                     "last_operation", "next_run_at", "updated_at"))
    logger.debug("schedule %s of server %s: %s (%s)", schedule.id, server.pk, result, message)
    return result


def _announce_due(now: datetime) -> int:
    """Claim the announcements that are due (each time once) and send each in its own task."""
    horizon = now + timedelta(minutes=ANNOUNCE_MAX_MINUTES)
    rows = list(ServerSchedule.objects.filter(
        enabled=True, announce_minutes__gt=0, next_run_at__gt=now, next_run_at__lte=horizon,
        instance__status=InstanceStatus.RUNNING, instance__kind=Kind.GAME)
        .filter(Q(announced_for__isnull=True) | ~Q(announced_for=F("next_run_at")))
        .values_list("id", "next_run_at", "announce_minutes"))
    sent = 0
    for schedule_id, due, minutes in rows:
        if due - timedelta(minutes=minutes) > now:
            continue
        claimed = (ServerSchedule.objects.filter(pk=schedule_id, next_run_at=due)
                   .filter(Q(announced_for__isnull=True) | ~Q(announced_for=due))
                   .update(announced_for=due))
        if claimed:
            _announce_enqueue(schedule_id, due)
            sent += 1
    return sent


def _announce_enqueue(schedule_id: Any, due: datetime) -> None:
    try:
        current_app.send_task(ANNOUNCE_TASK, args=[str(schedule_id), due.isoformat()])
    except Exception:  # broker down: an announcement is a courtesy; the action still runs
        logger.warning("could not enqueue the announcement of schedule %s", schedule_id,
                       exc_info=True)


def announcement_text(action: str, minutes: int) -> str:
    what = "restart" if action == ScheduleAction.RESTART else "stop"
    unit = "minute" if minutes == 1 else "minutes"
    return f"say [ZeroLagHub] Scheduled {what} in {minutes} {unit}."


def schedule_announce(*, schedule_id: Any, due: str) -> str:
    """Tell the players of a schedule's server about its coming time (the task's body)."""
    schedule = (ServerSchedule.objects.select_related("instance")
                .filter(pk=schedule_id, enabled=True).first())
    due_at = datetime.fromisoformat(due)
    if schedule is None or schedule.next_run_at != due_at:
        return "changed"  # disabled, moved or removed since it was claimed
    remaining = (due_at - db_now()).total_seconds()
    if remaining <= 0:
        return "too_late"
    minutes = max(1, math.ceil(remaining / 60))
    try:
        server_console(actor=Actor.system(f"schedule {schedule.id}"), server=schedule.instance,
                       command=announcement_text(schedule.action, minutes))
    except LifecycleError as exc:
        logger.info("announcement of schedule %s not delivered: %s", schedule.id, exc.message)
        return "not_delivered"
    return "announced"
