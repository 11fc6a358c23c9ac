"""Per-server schedules: local times in the owner's time zone, the API and its refusals, and
the tick that runs them (at most once per time, skipped while busy, never piling up, announced
in game first), with the real worker, beat and the devstack's agent."""
from __future__ import annotations

from datetime import datetime, time, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db.models.functions import Now
from rest_framework.test import APIClient

from core.clock import db_now
from lifecycle.choices import InstanceStatus, Kind, OperationKind, OperationState
from lifecycle.models import AuditEvent, ContainerInstance, Operation, ServerSchedule
from lifecycle.services.audit import Actor
from lifecycle.services.schedules import (
    announcement_text,
    next_occurrence,
    profile_set_time_zone,
    schedule_create,
    server_schedule_tick,
)
from lifecycle.services.servers import server_create
from tests.factories import ContainerInstanceFactory, OperationFactory
from tests.support.platform import game_body, make_user
from tests.support.procs import run_parallel
from tests.support.stack import wait_operation, wait_status
from tests.support.waiting import wait_until

UTC = dt_timezone.utc
OWNER = Actor.system("tests")
EVERY_DAY = 0b1111111


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- local times ---------------------------------------------------------------------------

def test_the_next_time_is_the_local_time_in_the_zone():
    # 2026-12-03 is a Thursday; Berlin is UTC+1 in winter, New York UTC-5.
    four = time(4, 0)
    assert next_occurrence(time_of_day=four, weekdays=EVERY_DAY, zone="Europe/Berlin",
                           after=at(2026, 12, 3, 1, 0)) == at(2026, 12, 3, 3, 0)
    assert next_occurrence(time_of_day=four, weekdays=EVERY_DAY, zone="Europe/Berlin",
                           after=at(2026, 12, 3, 3, 0)) == at(2026, 12, 4, 3, 0)  # strictly after
    assert next_occurrence(time_of_day=four, weekdays=EVERY_DAY, zone="America/New_York",
                           after=at(2026, 12, 3, 1, 0)) == at(2026, 12, 3, 9, 0)
    # Only on Mondays (bit 0): Thursday -> next Monday; and Thursday itself a week on.
    assert next_occurrence(time_of_day=four, weekdays=0b1, zone="UTC",
                           after=at(2026, 12, 3, 5, 0)) == at(2026, 12, 7, 4, 0)
    assert next_occurrence(time_of_day=four, weekdays=0b1000, zone="UTC",
                           after=at(2026, 12, 3, 5, 0)) == at(2026, 12, 10, 4, 0)
    # Summer: Berlin is UTC+2.
    assert next_occurrence(time_of_day=four, weekdays=EVERY_DAY, zone="Europe/Berlin",
                           after=at(2026, 7, 1, 0, 0)) == at(2026, 7, 1, 2, 0)
    with pytest.raises(ValueError):
        next_occurrence(time_of_day=four, weekdays=0, zone="UTC", after=at(2026, 7, 1))


def test_clock_changes_neither_skip_a_day_nor_run_twice():
    half_two = time(2, 30)
    # 2026-03-29, Berlin: 02:00 -> 03:00. 02:30 does not exist: it runs at 03:30 local.
    gap = next_occurrence(time_of_day=half_two, weekdays=EVERY_DAY, zone="Europe/Berlin",
                          after=at(2026, 3, 28, 23, 0))
    assert gap == at(2026, 3, 29, 1, 30)
    # 2026-10-25, Berlin: 03:00 -> 02:00. 02:30 happens twice: it runs the first time only.
    first = next_occurrence(time_of_day=half_two, weekdays=EVERY_DAY, zone="Europe/Berlin",
                            after=at(2026, 10, 24, 23, 0))
    assert first == at(2026, 10, 25, 0, 30)
    after_first = next_occurrence(time_of_day=half_two, weekdays=EVERY_DAY,
                                  zone="Europe/Berlin", after=first)
    assert after_first == at(2026, 10, 26, 1, 30)  # the next day, not the second 02:30


# --- the API -------------------------------------------------------------------------------

def _url(server, schedule=None):
    base = f"/api/v1/servers/{server.id}/schedules"
    return f"{base}/{schedule}" if schedule else base


@pytest.mark.django_db
def test_the_owner_manages_schedules_in_their_time_zone(platform, alice):
    api = APIClient()
    server = ContainerInstanceFactory(owner=alice.user)
    resp = api.get("/api/v1/me/profile", **alice.headers)
    assert resp.status_code == 200 and resp.json() == {"time_zone": "UTC"}

    resp = api.post(_url(server), {"action": "restart", "time": "04:00", "days": ["mon", "thu"],
                                   "announce_minutes": 5}, format="json", **alice.headers)
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert resp["Location"] == _url(server, body["id"])
    assert {k: body[k] for k in ("action", "time", "days", "time_zone", "announce_minutes",
                                 "enabled", "last_result")} == {
        "action": "restart", "time": "04:00", "days": ["mon", "thu"], "time_zone": "UTC",
        "announce_minutes": 5, "enabled": True, "last_result": ""}
    now = db_now()
    expected = next_occurrence(time_of_day=time(4), weekdays=0b1001, zone="UTC", after=now)
    assert datetime.fromisoformat(body["next_run_at"].replace("Z", "+00:00")) == expected

    # Moving to Berlin moves the schedule with it (04:00 there is 03:00 or 02:00 UTC).
    resp = api.patch("/api/v1/me/profile", {"time_zone": "Europe/Berlin"}, format="json",
                     **alice.headers)
    assert resp.status_code == 200 and resp.json() == {"time_zone": "Europe/Berlin"}
    row = ServerSchedule.objects.get(pk=body["id"])
    assert row.next_run_at == next_occurrence(time_of_day=time(4), weekdays=0b1001,
                                              zone="Europe/Berlin", after=db_now())
    assert row.next_run_at.hour in (2, 3)
    got = api.get(_url(server, body["id"]), **alice.headers)
    assert got.status_code == 200 and got.json()["time_zone"] == "Europe/Berlin"
    assert got.has_header("ETag")
    assert api.get(_url(server, body["id"]), HTTP_IF_NONE_MATCH=got["ETag"],
                   **alice.headers).status_code == 304

    # Disable, then enable at another time; then remove.
    resp = api.patch(_url(server, body["id"]), {"enabled": False}, format="json",
                     **alice.headers)
    assert resp.status_code == 200 and resp.json()["next_run_at"] is None
    resp = api.patch(_url(server, body["id"]), {"enabled": True, "time": "23:15",
                                                "days": ["sun"]}, format="json", **alice.headers)
    assert resp.status_code == 200
    assert resp.json()["time"] == "23:15" and resp.json()["days"] == ["sun"]
    assert resp.json()["next_run_at"] is not None
    listed = api.get(_url(server), **alice.headers).json()
    assert [s["id"] for s in listed] == [body["id"]]
    assert api.delete(_url(server, body["id"]), **alice.headers).status_code == 204
    assert not ServerSchedule.objects.exists()
    actions = list(AuditEvent.objects.filter(instance_id=server.id).order_by("id")
                   .values_list("action", flat=True))
    assert actions == ["schedule:create", "schedule:update", "schedule:update",
                       "schedule:delete"]
    assert AuditEvent.objects.filter(action="profile:time_zone",
                                     data__to="Europe/Berlin", data__schedules_moved=1).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("body,field,text", [
    ({"action": "restart", "time": "4:00"}, "time", "match"),
    ({"action": "restart", "time": "24:00"}, "time", "match"),
    ({"action": "restart", "time": "04:00:30"}, "time", ""),
    ({"action": "reboot", "time": "04:00"}, "action", "valid choice"),
    ({"action": "restart", "time": "04:00", "days": []}, "days", ""),
    ({"action": "restart", "time": "04:00", "days": ["monday"]}, "days", "use mon, tue"),
    ({"action": "restart", "time": "04:00", "announce_minutes": 61}, "announce_minutes", "60"),
    ({"action": "restart", "time": "04:00", "announce_minutes": "5"}, "announce_minutes",
     "whole number"),
    ({"action": "start", "time": "04:00", "announce_minutes": 5}, "announce_minutes",
     "Only a restart or a stop"),
    ({"action": "restart", "time": "04:00", "every": "day"}, "every", "Unknown field"),
    ({"time": "04:00"}, "action", "required"),
])
def test_bad_schedules_are_refused_saying_what_is_wrong(platform, alice, body, field, text):
    server = ContainerInstanceFactory(owner=alice.user)
    resp = APIClient().post(_url(server), body, format="json", **alice.headers)
    assert resp.status_code == 400, resp.content
    assert text in " ".join(resp.json()["fields"][field])
    assert not ServerSchedule.objects.exists()


@pytest.mark.django_db
def test_refusals_that_depend_on_the_server_and_the_account(platform, alice, bob, settings):
    api = APIClient()
    server = ContainerInstanceFactory(owner=alice.user)
    dev = ContainerInstanceFactory(owner=alice.user, kind=Kind.DEV, plan="modded")
    resp = api.post(_url(dev), {"action": "restart", "time": "04:00", "announce_minutes": 5},
                    format="json", **alice.headers)
    assert resp.status_code == 400
    assert "Only game servers" in resp.json()["fields"]["announce_minutes"][0]
    assert api.post(_url(dev), {"action": "restart", "time": "04:00"}, format="json",
                    **alice.headers).status_code == 201

    first = api.post(_url(server), {"action": "restart", "time": "04:00"}, format="json",
                     **alice.headers)
    assert first.status_code == 201
    again = api.post(_url(server), {"action": "restart", "time": "04:00", "days": ["sun"]},
                     format="json", **alice.headers)
    assert again.status_code == 400 and "already has a restart at 04:00" in \
        again.json()["message"]

    # Another account sees nothing of it, and cannot add any.
    assert api.get(_url(server), **bob.headers).status_code == 404
    assert api.get(_url(server, first.json()["id"]), **bob.headers).status_code == 404
    assert api.patch(_url(server, first.json()["id"]), {"enabled": False}, format="json",
                     **bob.headers).status_code == 404
    assert api.delete(_url(server, first.json()["id"]), **bob.headers).status_code == 404
    assert api.post(_url(server), {"action": "stop", "time": "01:00"}, format="json",
                    **bob.headers).status_code == 404
    # A schedule is reached through its own server only.
    assert api.get(_url(dev, first.json()["id"]), **alice.headers).status_code == 404
    assert api.get(_url(server)).status_code == 401

    settings.SERVER_SCHEDULES_MAX = 2
    api.post(_url(server), {"action": "stop", "time": "01:00"}, format="json", **alice.headers)
    resp = api.post(_url(server), {"action": "start", "time": "02:00"}, format="json",
                    **alice.headers)
    assert resp.status_code == 400 and "at most 2 schedules" in resp.json()["message"]

    deleted = ContainerInstanceFactory(owner=alice.user, status=InstanceStatus.DELETED)
    resp = api.post(_url(deleted), {"action": "start", "time": "02:00"}, format="json",
                    **alice.headers)
    assert resp.status_code == 409 and "deleted" in resp.json()["message"]

    for zone in ("Mars/Olympus", "", "../../etc/passwd"):
        resp = api.patch("/api/v1/me/profile", {"time_zone": zone}, format="json",
                         **alice.headers)
        assert resp.status_code == 400, zone
    assert api.get("/api/v1/me/profile", **alice.headers).json() == {"time_zone": "UTC"}


# --- the tick --------------------------------------------------------------------------------

def _due(schedule, seconds_ago: float = 5) -> None:
    ServerSchedule.objects.filter(pk=schedule.pk).update(
        next_run_at=db_now() - timedelta(seconds=seconds_ago))


def _restarts(server) -> list[Operation]:
    return list(Operation.objects.filter(instance=server, kind=OperationKind.RESTART))


@pytest.mark.django_db(transaction=True)
def test_a_due_time_requests_its_action_once_and_moves_on(platform, alice):
    server = ContainerInstanceFactory(owner=alice.user)
    schedule = schedule_create(actor=OWNER, server=server, action="restart",
                               time_of_day=time(4, 0))
    assert server_schedule_tick()["requested"] == 0  # not due yet
    _due(schedule)
    counts = server_schedule_tick()
    assert counts["due"] == 1 and counts["requested"] == 1
    [op] = _restarts(server)
    assert op.requested_by == f"schedule {schedule.id}" and op.state == OperationState.QUEUED
    assert op.params == {"schedule": str(schedule.id)}
    schedule.refresh_from_db()
    assert schedule.last_result == "requested" and schedule.last_operation_id == op.id
    assert schedule.next_run_at > db_now()
    assert schedule.next_run_at == next_occurrence(time_of_day=time(4), weekdays=EVERY_DAY,
                                                   zone="UTC", after=schedule.last_run_at)
    assert server_schedule_tick()["due"] == 0  # the same time never again
    assert len(_restarts(server)) == 1
    assert AuditEvent.objects.filter(action="request:restart", instance_id=server.id,
                                     actor_label=f"schedule {schedule.id}").count() == 1


@pytest.mark.django_db(transaction=True)
def test_busy_stopped_late_and_deleted_servers_skip_their_time(platform, alice, settings):
    busy = ContainerInstanceFactory(owner=alice.user)
    OperationFactory(instance=busy, kind=OperationKind.BACKUP, state=OperationState.RUNNING)
    stopped = ContainerInstanceFactory(owner=alice.user, status=InstanceStatus.STOPPED)
    late = ContainerInstanceFactory(owner=alice.user)
    gone = ContainerInstanceFactory(owner=alice.user)
    schedules = {name: schedule_create(actor=OWNER, server=server, action="restart",
                                       time_of_day=time(4, 0))
                 for name, server in (("busy", busy), ("stopped", stopped), ("late", late),
                                      ("gone", gone))}
    for name, schedule in schedules.items():
        # `late`: three days of missed times (beat was down): one decision, not three restarts.
        _due(schedule, seconds_ago=3 * 86400 if name == "late" else 5)
    ContainerInstance.objects.filter(pk=gone.pk).update(status=InstanceStatus.DELETED)

    counts = server_schedule_tick()
    assert (counts["due"], counts["skipped_busy"], counts["skipped_state"], counts["missed"],
            counts["requested"]) == (3, 1, 1, 1, 0)
    assert not Operation.objects.filter(kind=OperationKind.RESTART).exists()
    for name, result in (("busy", "skipped_busy"), ("stopped", "skipped_state"),
                         ("late", "missed")):
        row = ServerSchedule.objects.get(pk=schedules[name].pk)
        assert row.last_result == result, name
        assert row.next_run_at > db_now(), name  # the next time stands
    assert "operation" in ServerSchedule.objects.get(pk=schedules["busy"].pk).last_message
    assert "stopped" in ServerSchedule.objects.get(pk=schedules["stopped"].pk).last_message
    # The deleted server's schedule waits, untouched; restored, its old time is missed, once.
    gone_row = ServerSchedule.objects.get(pk=schedules["gone"].pk)
    assert gone_row.last_result == "" and gone_row.next_run_at < db_now()
    ContainerInstance.objects.filter(pk=gone.pk).update(status=InstanceStatus.RUNNING)
    settings.SERVER_SCHEDULE_MISFIRE_SECONDS = 1
    assert server_schedule_tick()["missed"] == 1
    assert server_schedule_tick()["due"] == 0


@pytest.mark.django_db(transaction=True)
def test_parallel_ticks_request_each_time_exactly_once(platform, alice):
    """Six processes of four threads each decide the same 40 due times, with the tick's named
    lock bypassed, so only the row lock and the re-check keep the times single; then again
    through the tick itself. One restart per server per time, whatever the interleaving."""
    servers = ContainerInstanceFactory.create_batch(40, owner=alice.user)
    for server in servers:
        _due(schedule_create(actor=OWNER, server=server, action="restart",
                             time_of_day=time(4, 0)))
    results = run_parallel("tests.support.workloads.run_schedule_ticks",
                           [{"rounds": 3, "bypass_lock": True, "threads": 4}] * 6, timeout=240)
    # Each time decided once: a second decision would show as a `skipped_busy` (the first
    # restart holds the server's operation slot) even where the slot kept the restart single.
    decided = {key: sum(r.get(key, 0) for r in results)
               for key in ("requested", "skipped_busy", "skipped_state", "missed")}
    assert decided == {"requested": 40, "skipped_busy": 0, "skipped_state": 0, "missed": 0}
    for server in servers:
        assert len(_restarts(server)) == 1
    # The next time, through the tick (named lock included), from several processes at once.
    Operation.objects.filter(kind=OperationKind.RESTART).update(
        state=OperationState.SUCCEEDED, active_slot=None, finished_at=Now())
    for schedule in ServerSchedule.objects.all():
        _due(schedule)
    results = run_parallel("tests.support.workloads.run_schedule_ticks",
                           [{"rounds": 5, "threads": 2}] * 4, timeout=240)
    assert sum(r.get("requested", 0) for r in results) == 40
    assert sum(r.get("skipped_busy", 0) for r in results) == 0
    for server in servers:
        assert len(_restarts(server)) == 2


# --- with the real worker, agent and beat ----------------------------------------------------

@pytest.fixture
def running(stack, worker, owner):
    return wait_status(server_create(owner=owner.user, data=game_body("timed")).instance.id,
                       "running")


def test_a_schedule_announces_in_game_then_restarts_the_server(stack, running, owner):
    schedule = schedule_create(actor=OWNER, server=running, action="restart",
                               time_of_day=time(4, 0), announce_minutes=5)
    # Three minutes to go: announced now, with the minutes that are left, and only once.
    ServerSchedule.objects.filter(pk=schedule.pk).update(
        next_run_at=db_now() + timedelta(minutes=3, seconds=-10))
    assert server_schedule_tick()["announced"] == 1
    wait_until(lambda: stack.agent(running.vmid)["commands"], timeout=30, interval=0.2,
               what="the announcement")
    assert stack.agent(running.vmid)["commands"] == [announcement_text("restart", 3)]
    assert server_schedule_tick()["announced"] == 0
    assert AuditEvent.objects.filter(action="console_command", instance_id=running.id,
                                     actor_label=f"schedule {schedule.id}").count() == 1

    _due(schedule)
    assert server_schedule_tick()["requested"] == 1
    [op] = _restarts(running)
    wait_operation(op.id, timeout=90)
    assert ContainerInstance.objects.get(pk=running.pk).status == InstanceStatus.RUNNING
    assert stack.agent(running.vmid)["commands"] == ["say [ZeroLagHub] Scheduled restart in 3 "
                                                     "minutes."]


def test_an_agent_that_does_not_answer_does_not_hold_the_restart_back(stack, running, owner):
    schedule = schedule_create(actor=OWNER, server=running, action="restart",
                               time_of_day=time(4, 0), announce_minutes=1)
    stack.agents("POST", f"/_sim/agents/{running.vmid}/hang")
    ServerSchedule.objects.filter(pk=schedule.pk).update(
        next_run_at=db_now() + timedelta(seconds=30))
    assert server_schedule_tick()["announced"] == 1
    _due(schedule)
    assert server_schedule_tick()["requested"] == 1  # the tick never waited for the agent


def test_beat_runs_the_schedules(stack, worker_env, tmp_path, running, owner):
    from tests.support.workers import start_beat

    schedule = schedule_create(actor=OWNER, server=running, action="stop",
                               time_of_day=time(4, 0))
    _due(schedule)
    beat = start_beat(worker_env(ZLH_SERVER_SCHEDULE_INTERVAL_SECONDS="1"), tmp_path)
    try:
        wait_until(lambda: ServerSchedule.objects.filter(pk=schedule.pk,
                                                         last_result="requested").exists(),
                   timeout=60, interval=0.5, what="beat's tick")
    finally:
        beat.stop()
    wait_status(running.id, "stopped", timeout=90)
    schedule.refresh_from_db()
    assert schedule.next_run_at > db_now()
    assert Operation.objects.filter(instance=running, kind=OperationKind.STOP).count() == 1


@pytest.mark.django_db
def test_staff_and_the_admin_use_the_owners_time_zone(platform, alice, staff):
    profile_set_time_zone(actor=OWNER, user=alice.user, time_zone="Asia/Tokyo")
    server = ContainerInstanceFactory(owner=alice.user)
    resp = APIClient().post(_url(server), {"action": "restart", "time": "04:00"},
                            format="json", **staff.headers)
    assert resp.status_code == 201 and resp.json()["time_zone"] == "Asia/Tokyo"
    row = ServerSchedule.objects.get()
    assert row.next_run_at.hour == 19  # 04:00 in Tokyo (UTC+9, no DST)
    assert AuditEvent.objects.get(action="schedule:create").actor_label == "operator"


@pytest.mark.django_db(transaction=True)
def test_a_fleet_due_at_once_is_decided_in_batches_oldest_first(platform, alice, settings,
                                                               monkeypatch):
    from lifecycle.services import schedules

    monkeypatch.setattr(schedules, "TICK_BATCH", 3)
    servers = ContainerInstanceFactory.create_batch(7, owner=alice.user)
    rows = [schedule_create(actor=OWNER, server=s, action="restart", time_of_day=time(4))
            for s in servers]
    for i, row in enumerate(rows):
        _due(row, seconds_ago=60 - i)  # rows[0] has waited longest
    # A tick out of time stops after a batch; the next goes on where it stopped.
    settings.ZLH_SERVER_SCHEDULE_INTERVAL_SECONDS = 0
    assert server_schedule_tick()["requested"] == 3
    first = {r.instance_id for r in rows[:3]}
    assert {op.instance_id for op in Operation.objects.filter(kind="restart")} == first
    assert server_schedule_tick()["requested"] == 3
    assert server_schedule_tick()["requested"] == 1
    # With time to spare, one tick reads batch after batch until none is due.
    Operation.objects.filter(kind=OperationKind.RESTART).update(
        state=OperationState.SUCCEEDED, active_slot=None, finished_at=Now())
    for row in rows:
        _due(row)
    settings.ZLH_SERVER_SCHEDULE_INTERVAL_SECONDS = 30
    counts = server_schedule_tick()
    assert counts["due"] == 7 and counts["requested"] == 7


@pytest.mark.django_db(transaction=True)
def test_a_tick_killed_mid_decision_leaves_the_time_due_and_it_runs_once(platform, alice,
                                                                        tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys

    from tests.support.procs import REPO, child_env

    server = ContainerInstanceFactory(owner=alice.user)
    schedule = schedule_create(actor=OWNER, server=server, action="restart",
                               time_of_day=time(4))
    _due(schedule)
    marker = tmp_path / "requested"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.child",
         "tests.support.workloads.schedule_tick_then_hang"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
        env=child_env(), text=True)
    try:
        child.stdin.write(json.dumps({"marker": str(marker)}) + "\nGO\n")
        child.stdin.flush()
        wait_until(marker.exists, timeout=60, interval=0.1, what="the child's request")
        # Its restart is requested but not committed; another tick meanwhile finds the named
        # lock held and does nothing.
        assert server_schedule_tick().get("skipped_tick") == 1
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    # The decision died with its transaction: nothing requested, the time still due.
    assert _restarts(server) == []
    schedule.refresh_from_db()
    assert schedule.last_result == "" and schedule.next_run_at < db_now()
    wait_until(lambda: server_schedule_tick().get("requested") == 1, timeout=30, interval=0.5,
               what="the next tick (once MariaDB has dropped the dead connection's locks)")
    assert len(_restarts(server)) == 1
    assert server_schedule_tick()["due"] == 0
