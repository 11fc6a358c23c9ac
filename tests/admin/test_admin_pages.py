"""The operator panel: staff only, secrets never shown, bounded queries at 5,000 servers, and
every action audited with the admin's name."""
from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from lifecycle.models import AuditEvent, ContainerInstance, Node, Operation
from lifecycle.services.servers import server_create
from notifications.services import notify_warning
from reconciler.models import Breaker, Finding
from tests.support.platform import game_body

pytestmark = pytest.mark.django_db

SECRET = "sk_live_PlantedSecret4242XyZ"


@pytest.fixture
def admin_client(db):
    user = get_user_model().objects.create_user("op", password="op-pass-123", is_staff=True,
                                                is_superuser=True)
    client = Client()
    client.force_login(user)
    return client


def test_only_staff_get_in(alice):
    client = Client()
    alice.user.set_password("alice-pass-123")
    alice.user.save()
    resp = client.post("/admin/login/", {"username": "alice", "password": "alice-pass-123",
                                         "next": "/admin/"})
    assert resp.status_code == 200 and "staff account" in resp.content.decode()
    client.force_login(alice.user)  # even a logged-in user who is not staff
    resp = client.get("/admin/lifecycle/containerinstance/")
    assert resp.status_code == 302 and "/admin/login/" in resp["Location"]
    assert Client().get("/admin/reconciler/controllerrun/dashboard/").status_code == 302


def _crawl(client):
    """Every changelist and one change page of every registered model, plus the dashboard."""
    from django.contrib import admin

    pages = ["/admin/", reverse("admin:reconciler_dashboard")]
    for model in admin.site._registry:
        meta = model._meta
        pages.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        obj = model.objects.first()
        if obj is not None:
            pages.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_change",
                                 args=[obj.pk]))
    for url in pages:
        resp = client.get(url)
        assert resp.status_code == 200, (url, resp.status_code)
        yield url, resp.content.decode()


def test_a_planted_secret_appears_in_no_admin_page(admin_client, platform, alice):
    inst = server_create(owner=alice.user, data=game_body("secretive")).instance
    ContainerInstance.objects.filter(pk=inst.id).update(
        last_error={"message": f"Bearer {SECRET}", "rcon_password": SECRET,
                    "note": f"key={SECRET}"})
    Operation.objects.filter(instance=inst).update(
        error={"message": f"proxmox said token={SECRET}"},
        log=[{"at": "now", "attempt": 1, "msg": f"api_key: {SECRET}"}])
    notify_warning("leaky", f"password={SECRET}", payload={"token": SECRET}, subject=str(inst.id))
    Finding.objects.create(key="k", finding_type="edge_drift", level=1, action="dns_republish",
                           subject="x", details={"secret": SECRET}, last_seen=inst.created_at)
    Breaker.objects.create(action="dns_republish", state="open", last_failure=f"token {SECRET}")
    seen = 0
    for url, html in _crawl(admin_client):
        seen += 1
        assert SECRET not in html, f"the secret is shown on {url}"
    assert seen > 20


def test_server_list_of_5000_renders_with_bounded_queries(admin_client, platform, alice,
                                                          django_assert_max_num_queries):
    node = Node.objects.first()
    ContainerInstance.objects.bulk_create([
        ContainerInstance(id=uuid.uuid4(), owner=alice.user, name=f"s{i}", slug=f"s{i}",
                          live_slug=f"s{i}", kind="game", variant="vanilla", version="1.21.1",
                          plan="vanilla", memory_mb=2048, cores=2, disk_gb=8, node=node,
                          vmid=10000 + i, ip="10.1.0.9", ports={"game": 30000},
                          status="running" if i % 2 else "stopped")
        for i in range(5000)], batch_size=1000)
    with django_assert_max_num_queries(12):
        resp = admin_client.get("/admin/lifecycle/containerinstance/")
    assert resp.status_code == 200
    assert resp.content.decode().count('class="zlh-badge"') >= 200  # 100 rows x 2 badges
    with django_assert_max_num_queries(12):
        resp = admin_client.get("/admin/lifecycle/containerinstance/?status=running&findings=no"
                                "&q=s1")
    assert resp.status_code == 200


def test_admin_actions_go_through_services_and_are_audited(admin_client, platform, alice):
    inst = server_create(owner=alice.user, data=game_body("steered")).instance
    url = "/admin/lifecycle/containerinstance/"
    resp = admin_client.post(url, {"action": "toggle_maintenance_lock",
                                   "_selected_action": [str(inst.id)]}, follow=True)
    assert "Maintenance lock toggled" in resp.content.decode()
    assert ContainerInstance.objects.get(pk=inst.id).maintenance_lock
    resp = admin_client.post(url, {"action": "suspend", "_selected_action": [str(inst.id)]},
                             follow=True)
    assert ContainerInstance.objects.get(pk=inst.id).suspended
    # An action the state does not allow is refused with the service's own words.
    resp = admin_client.post(url, {"action": "start", "_selected_action": [str(inst.id)]},
                             follow=True)
    assert "Refused: steered: This server is suspended" in resp.content.decode()
    # Purge asks for confirmation first, naming what would be destroyed.
    resp = admin_client.post(url, {"action": "purge_now", "_selected_action": [str(inst.id)]})
    page = resp.content.decode()
    assert "cannot be undone" in page and f"CT {inst.vmid}" in page and "delete it first" in page
    events = AuditEvent.objects.filter(instance=inst, actor_kind="admin")
    assert {e.action for e in events} >= {"flags:set"}
    assert all(e.actor_label == "op" for e in events)


def test_reconciler_dashboard_and_breaker_reset(admin_client):
    Breaker.objects.create(action="velocity_register", state="open", consecutive_failures=3)
    page = admin_client.get(reverse("admin:reconciler_dashboard")).content.decode()
    assert "velocity_register" in page and "reset-velocity_register" in page
    resp = admin_client.post(reverse("admin:reconciler_breaker_reset",
                                     args=["velocity_register"]), follow=True)
    assert "Breaker for velocity_register reset" in resp.content.decode()
    assert Breaker.objects.get().state == "closed"
    assert AuditEvent.objects.get(action="breaker:reset").actor_label == "op"


def test_notification_resend_and_channel_enable_are_logged_with_the_admin(admin_client):
    from django.contrib.admin.models import LogEntry

    from notifications.models import ChannelState, Notification

    row = notify_warning("disk almost full", "pve1 at 91 %")
    resp = admin_client.post("/admin/notifications/notification/",
                             {"action": "resend", "_selected_action": [str(row.pk)]},
                             follow=True)
    assert "queued again" in resp.content.decode()
    assert Notification.objects.filter(title="disk almost full").count() == 2
    ChannelState.objects.create(channel="lifecycle", disabled=True, disabled_reason="404")
    admin_client.post("/admin/notifications/channelstate/",
                      {"action": "enable", "_selected_action": ["lifecycle"]}, follow=True)
    assert not ChannelState.objects.get(channel="lifecycle").disabled
    messages = set(LogEntry.objects.filter(user__username="op").values_list("change_message",
                                                                             flat=True))
    assert {"resent", "re-enabled"} <= messages


def test_the_reconciler_extends_the_server_admin(admin_client, stack, owner):
    """The server admin is the lifecycle app's; the reconciler registers a subclass with its
    findings column and filter, the repair events on a server's page and the dry-run preview."""
    from django.contrib import admin as django_admin

    from lifecycle.admin import ContainerInstanceAdmin
    from reconciler.admin import ReconciledServerAdmin

    registered = django_admin.site._registry[ContainerInstance]
    assert type(registered) is ReconciledServerAdmin
    assert isinstance(registered, ContainerInstanceAdmin)

    flagged = server_create(owner=owner.user, data=game_body("flagged")).instance
    quiet = server_create(owner=owner.user, data=game_body("calm")).instance
    Finding.objects.create(key=f"edge_drift:{flagged.id}", finding_type="edge_drift", level=1,
                           action="dns_republish", instance_id=flagged.id,
                           subject=str(flagged.id), last_seen=flagged.created_at)
    url = reverse("admin:lifecycle_containerinstance_changelist")
    html = admin_client.get(url).content.decode()
    assert "column-findings_count" in html
    with_findings = admin_client.get(url, {"findings": "yes"}).content.decode()
    assert ">flagged<" in with_findings and ">calm<" not in with_findings
    without = admin_client.get(url, {"findings": "no"}).content.decode()
    assert ">calm<" in without and ">flagged<" not in without

    page = admin_client.get(reverse("admin:lifecycle_containerinstance_change",
                                    args=[flagged.id])).content.decode()
    assert "Open findings: edge_drift" in page

    resp = admin_client.post(url, {"action": "reconcile_preview",
                                   "_selected_action": [str(flagged.id), str(quiet.id)]})
    body = resp.content.decode()
    assert resp.status_code == 200
    assert "Reconciler preview for" in body and "flagged" in body and "proxmox" in body
    assert AuditEvent.objects.filter(action="admin:reconcile_preview").count() == 2
