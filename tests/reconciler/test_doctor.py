"""`manage.py doctor` (issue 16, item 2): a read-only consistency report. Each kind of damage is
planted in the database and must be named; nothing may be changed by looking."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db.models import F
from django.db.models.functions import Now
from django.test import Client

from lifecycle.models import (
    AccountQuota,
    Allocation,
    AuditEvent,
    Backup,
    ContainerInstance,
    Node,
    Operation,
)
from lifecycle.services.servers import server_create
from notifications.models import Notification
from reconciler.doctor import doctor_report
from reconciler.models import Finding
from tests.support.platform import game_body

pytestmark = pytest.mark.django_db


def _server(user, name, status="running"):
    inst = server_create(owner=user, data=game_body(name)).instance
    Operation.objects.filter(instance=inst).update(state="succeeded", active_slot=None)
    ContainerInstance.objects.filter(pk=inst.pk).update(status=status)
    return ContainerInstance.objects.get(pk=inst.pk)


def _doctor(*args):
    """(exit code, output) of the command."""
    from io import StringIO

    out = StringIO()
    try:
        call_command("doctor", *args, stdout=out)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue()


def _snapshot():
    return [list(model.objects.order_by("pk").values_list())
            for model in (ContainerInstance, Allocation, Node, Operation, Backup, Notification,
                          Finding, AccountQuota, AuditEvent)]


def test_a_consistent_platform_is_reported_healthy(platform, alice):
    _server(alice.user, "healthy-a")
    _server(alice.user, "healthy-b", status="stopped")
    report = doctor_report()
    assert report["ok"] and report["problems"] == [], report
    code, out = _doctor()
    assert code == 0 and "nothing wrong" in out


def test_every_kind_of_damage_is_named_and_nothing_is_changed(platform, alice, bob):
    a = _server(alice.user, "victim-a")
    b = _server(alice.user, "victim-b")
    gone = _server(bob.user, "gone-c")
    busy = _server(bob.user, "stuck-d")
    # Allocations: a value claimed by nobody; a purged server's value still claimed; a live
    # server's IP missing from the pools; two live servers on one IP.
    free = Allocation.objects.filter(state="free", pool__kind="port").first()
    Allocation.objects.filter(pk=free.pk).update(state="claimed", instance=None)
    ContainerInstance.objects.filter(pk=gone.pk).update(status="purged", live_slug=None)
    Allocation.objects.filter(instance=a, pool__kind="ip").delete()
    ContainerInstance.objects.filter(pk=b.pk).update(ip=a.ip)
    # Node memory counter off by 512 MB; an account over its memory quota.
    Node.objects.filter(pk=a.node_id).update(allocated_memory_mb=F("allocated_memory_mb") + 512)
    AccountQuota.objects.filter(user=alice.user).update(max_memory_mb=1024)
    # A server left `stopping` with no operation; an operation whose worker vanished; one
    # queued long ago and never taken.
    ContainerInstance.objects.filter(pk=busy.pk).update(status="stopping")
    Operation.objects.create(instance=a, kind="restart", state="running", active_slot=a.id,
                             worker="ghost", lease_expires_at=Now() - timedelta(hours=1))
    old = Operation.objects.create(instance=b, kind="stop", state="queued", active_slot=b.id)
    Operation.objects.filter(pk=old.pk).update(created_at=Now() - timedelta(hours=2))
    # The outbox stuck for an hour; a backup being made by nobody; an open finding.
    note = Notification.objects.create(channel="warning", title="disk almost full",
                                       body="", state="pending")
    Notification.objects.filter(pk=note.pk).update(created_at=Now() - timedelta(hours=1))
    Backup.objects.create(instance=busy, owner=bob.user, kind="manual", state="creating")
    Finding.objects.create(key="k1", finding_type="container_missing", level=2,
                           action="recreate_container", instance=b, subject=str(b.id),
                           details={"slug": b.slug}, last_seen=Now())

    before = _snapshot()
    report = doctor_report()
    assert _snapshot() == before  # looking changes nothing

    assert not report["ok"]
    found = {(p["check"], p["subject"]) for p in report["problems"]}
    expected_checks = {
        "allocation claimed by nobody",
        "allocation of a purged server outside quarantine",
        "server value without its allocation",
        "IP used by two live servers",
        "node memory counter disagrees with its servers",
        "account over its memory quota",
        "server in a transient status with no active operation",
        "operation running with no live worker lease",
        "operation queued and never taken",
        "notifications stuck in the outbox",
        "backup being made with no active operation",
        "reconciler finding: container_missing",
    }
    assert expected_checks <= set(report["counts"]), set(report["counts"]) ^ expected_checks
    assert ("server value without its allocation", "victim-a") in found
    assert ("IP used by two live servers", a.ip) in found
    assert ("server in a transient status with no active operation", "stuck-d") in found
    assert ("reconciler finding: container_missing", "victim-b") in found
    assert ("account over its memory quota", "alice") in found
    # The memory counter problem names the node and both figures.
    node = Node.objects.get(pk=a.node_id)
    [mem] = [p for p in report["problems"]
             if p["check"].startswith("node memory") and p["subject"] == node.name]
    held = sum(ContainerInstance.objects.filter(node=node).exclude(status="purged")
               .values_list("memory_mb", flat=True))
    assert mem["detail"] == (f"allocated_memory_mb {node.allocated_memory_mb}, its servers "
                             f"hold {held} MB")

    code, out = _doctor()
    assert code == 1 and "stuck-d" in out and "operation queued and never taken" in out
    code, out = _doctor("--json")
    assert code == 1
    parsed = json.loads(out)
    assert parsed["ok"] is False and parsed["counts"] == report["counts"]
    assert _snapshot() == before


def test_the_admin_shows_the_same_report(platform, alice):
    inst = _server(alice.user, "shown")
    ContainerInstance.objects.filter(pk=inst.pk).update(status="starting")
    viewer = get_user_model().objects.create_user("viewer", password="x-pass-123",
                                                  is_staff=True)
    from django.contrib.auth.models import Permission
    viewer.user_permissions.set(Permission.objects.filter(codename="view_controllerrun"))
    client = Client()
    client.force_login(viewer)
    resp = client.get("/admin/reconciler/controllerrun/doctor/")
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "server in a transient status with no active operation" in html and "shown" in html
    assert 'id="doctor-problems"' in html
    # Not for staff without the permission, nor for anyone who is not staff.
    plain = get_user_model().objects.create_user("plain", password="x-pass-123", is_staff=True)
    client.force_login(plain)
    assert client.get("/admin/reconciler/controllerrun/doctor/").status_code == 403
    client.force_login(alice.user)
    assert client.get("/admin/reconciler/controllerrun/doctor/").status_code == 302
