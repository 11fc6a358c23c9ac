"""The panel's schedules, account time zones and plan changes: each goes through the same
service as the API (checked by the same rules, audited with the admin's name), and a staff user
with view permissions only changes nothing."""
from __future__ import annotations

from datetime import time

import pytest

from core.clock import db_now
from lifecycle.models import AccountProfile, AuditEvent, Operation, ServerSchedule
from lifecycle.services.schedules import next_occurrence, schedule_create
from tests.admin.test_admin_permissions import (
    SERVERS,
    _offered,
    _server,
    _staff,
    changer,
    viewer,
)
from tests.factories import ContainerInstanceFactory
from tests.support.platform import SYSTEM

pytestmark = pytest.mark.django_db

__all__ = ("changer", "viewer")  # fixtures, imported for this module's tests
SCHEDULES = "/admin/lifecycle/serverschedule/"
PROFILES = "/admin/lifecycle/accountprofile/"
EVERY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@pytest.fixture
def operator(db):
    """Staff who may view, add, change and delete our apps' rows."""
    return _staff("scheduler", "view_", "change_", "add_", "delete_")


def _form(server, **over):
    data = {"instance": str(server.id), "action": "restart", "time_of_day": "04:00",
            "days": EVERY, "announce_minutes": "0", "enabled": "on"}
    data.update(over)
    return data


def test_an_operator_adds_changes_and_removes_a_schedule(operator, platform, alice):
    changer = operator
    server = ContainerInstanceFactory(owner=alice.user)
    resp = changer.post(f"{SCHEDULES}add/", _form(server, days=["sat", "sun"],
                                                   announce_minutes="10"))
    assert resp.status_code == 302, resp.content.decode()[-3000:]
    row = ServerSchedule.objects.get()
    assert (row.action, row.time_of_day, row.weekdays, row.announce_minutes) == \
        ("restart", time(4), 0b1100000, 10)
    assert row.next_run_at == next_occurrence(time_of_day=time(4), weekdays=0b1100000,
                                              zone="UTC", after=db_now())
    created = AuditEvent.objects.get(action="schedule:create")
    assert created.actor_label == "scheduler" and created.actor_kind == "admin"

    # The change page shows it; a change places the next time again.
    page = changer.get(f"{SCHEDULES}{row.pk}/change/").content.decode()
    assert 'value="sat"' in page and "04:00" in page
    resp = changer.post(f"{SCHEDULES}{row.pk}/change/",
                        {"action": "restart", "time_of_day": "22:30", "days": EVERY,
                         "announce_minutes": "0", "enabled": "on"})
    assert resp.status_code == 302, resp.content.decode()[-3000:]
    row.refresh_from_db()
    assert row.time_of_day == time(22, 30) and row.weekdays == 0b1111111
    assert row.next_run_at == next_occurrence(time_of_day=time(22, 30), weekdays=0b1111111,
                                              zone="UTC", after=db_now())
    # Listed with the owner's zone, and on the server's page.
    listing = changer.get(SCHEDULES).content.decode()
    assert "UTC (default)" in listing and "22:30" in listing
    assert "22:30" in changer.get(f"{SERVERS}{server.pk}/change/").content.decode()

    resp = changer.post(f"{SCHEDULES}{row.pk}/delete/", {"post": "yes"})
    assert resp.status_code == 302
    assert not ServerSchedule.objects.exists()
    assert AuditEvent.objects.get(action="schedule:delete").actor_label == "scheduler"


def test_the_panel_refuses_what_the_api_refuses(operator, platform, alice):
    changer = operator
    dev = ContainerInstanceFactory(owner=alice.user, kind="dev", plan="modded")
    game = ContainerInstanceFactory(owner=alice.user)
    schedule_create(actor=SYSTEM, server=game, action="restart", time_of_day=time(4))
    for server, over, text in (
            (dev, {"announce_minutes": "5"}, "Only game servers"),
            (game, {"action": "start", "announce_minutes": "5"}, "Only a restart or a stop"),
            (game, {"days": []}, "This field is required"),
            (game, {"time_of_day": "04:00:30"}, "Hours and minutes only"),
            (game, {}, "already has a restart")):
        resp = changer.post(f"{SCHEDULES}add/", _form(server, **over))
        assert resp.status_code == 200, (over, resp.status_code)
        assert text in resp.content.decode(), (over, text)
    assert ServerSchedule.objects.count() == 1


def test_a_time_zone_set_in_the_panel_moves_the_accounts_schedules(operator, platform, alice):
    changer = operator
    server = ContainerInstanceFactory(owner=alice.user)
    row = schedule_create(actor=SYSTEM, server=server, action="restart", time_of_day=time(4))
    resp = changer.post(f"{PROFILES}add/", {"user": str(alice.user.pk), "time_zone": "Mars/Base"})
    assert resp.status_code == 200 and "not a known time zone" in resp.content.decode()
    resp = changer.post(f"{PROFILES}add/", {"user": str(alice.user.pk),
                                            "time_zone": "Asia/Tokyo"})
    assert resp.status_code == 302, resp.content.decode()[-3000:]
    assert AccountProfile.objects.get(user=alice.user).time_zone == "Asia/Tokyo"
    row.refresh_from_db()
    assert row.next_run_at.hour == 19  # 04:00 in Tokyo
    assert AuditEvent.objects.get(action="profile:time_zone").actor_label == "scheduler"


def test_a_view_only_operator_changes_no_schedule_and_no_plan(viewer, changer, platform, alice):
    server = _server(alice, "sized", "running")
    row = schedule_create(actor=SYSTEM, server=server, action="restart", time_of_day=time(4))
    assert viewer.get(SCHEDULES).status_code == 200
    assert viewer.post(f"{SCHEDULES}add/", _form(server, time_of_day="05:00")).status_code == 403
    assert viewer.post(f"{SCHEDULES}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ServerSchedule.objects.count() == 1
    assert "change_plan" not in _offered(viewer, SERVERS)
    post = {"action": "change_plan", "_selected_action": [str(server.id)], "plan": "modded"}
    viewer.post(SERVERS, post, follow=True)
    assert not Operation.objects.filter(instance=server, kind="resize").exists()

    # An operator who may change servers: the plan is asked for first, then requested.
    assert "change_plan" in _offered(changer, SERVERS)
    form = changer.post(SERVERS, {"action": "change_plan", "_selected_action": [str(server.id)]})
    assert form.status_code == 200 and 'name="plan"' in form.content.decode()
    assert not Operation.objects.filter(instance=server, kind="resize").exists()
    bad = changer.post(SERVERS, {**post, "plan": "vanilla"}, follow=True).content.decode()
    assert "sized:" in bad and "already" in bad
    done = changer.post(SERVERS, post, follow=True).content.decode()
    assert "sized to modded (resize operation" in done
    op = Operation.objects.get(instance=server, kind="resize")
    assert op.requested_by == "changer" and op.params["to"]["plan"] == "modded"
