"""Admin actions check the model permissions: a staff user with view permissions only sees
everything and can change nothing — no state-changing action is offered to them, posting one
anyway is refused with nothing changed and no operation created, the dashboard's breaker reset
answers 403 — while a user with the change permissions can do each of them. API tokens are
listed (by prefix, never by hash) and revoked from the panel, with the admin's name in the
audit trail; a revoked token gets 401 on the API at once."""
from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from lifecycle.models import ApiToken, AuditEvent, ContainerInstance, IdeToken, Operation
from lifecycle.services.ide_tokens import ide_token_issue
from lifecycle.services.servers import server_create
from notifications.models import ChannelState, Notification
from notifications.services import notify_warning
from reconciler.admin import ReconciledServerAdmin
from reconciler.models import Breaker
from tests.support.platform import game_body, make_user

pytestmark = pytest.mark.django_db

APPS = ("lifecycle", "reconciler", "notifications")
SERVERS = "/admin/lifecycle/containerinstance/"

#: For each operation action of the server admin: a status it may be requested from.
OPERATION_ACTIONS = {
    "retry_provisioning": ("failed", "provision"),
    "start": ("stopped", "start"),
    "stop": ("running", "stop"),
    "restart": ("running", "restart"),
    "soft_delete": ("running", "delete"),
    "restore": ("deleted", "restore"),
    "purge_now": ("deleted", "purge"),
    "rotate_agent_credential": ("running", "rotate_credential"),
    "back_up_now": ("running", "backup"),
}
FLAG_ACTIONS = {"toggle_maintenance_lock": "maintenance_lock", "suspend": "suspended",
                "unsuspend": "suspended"}
#: Actions that only read: view permission is enough.
READ_ONLY_ACTIONS = {"reconcile_preview"}


def _action_names(admin_class) -> set[str]:
    return {a if isinstance(a, str) else a.__name__ for a in admin_class.actions}


def _staff(username: str, *codename_prefixes: str) -> Client:
    user = get_user_model().objects.create_user(username, password="pw-123456789",
                                                is_staff=True)
    perms = Permission.objects.filter(content_type__app_label__in=APPS)
    user.user_permissions.set([p for p in perms if p.codename.startswith(codename_prefixes)])
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer(db) -> Client:
    """Staff, with the view permission on every model of our apps and nothing else."""
    return _staff("viewer", "view_")


@pytest.fixture
def changer(db) -> Client:
    """Staff, with the view and change permissions on every model of our apps."""
    return _staff("changer", "view_", "change_")


def _offered(client: Client, url: str) -> set[str]:
    html = client.get(url).content.decode()
    select = re.search(r'<select name="action".*?</select>', html, re.S)
    return set(re.findall(r'<option value="(\w+)"', select.group(0))) if select else set()


def _assert_refused(resp) -> None:
    """Django's refusal of an action the user is not offered: the list again, with "No action
    selected." when the user has other actions, or with no message at all when none."""
    assert resp.status_code == 200
    shown = [str(m.message) for m in resp.context["messages"]]
    assert shown in ([], ["No action selected."]), shown


def _server(owner, name: str, status: str) -> ContainerInstance:
    inst = server_create(owner=owner.user, data=game_body(name)).instance
    Operation.objects.filter(instance=inst).update(state="succeeded", active_slot=None)
    ContainerInstance.objects.filter(pk=inst.pk).update(status=status)
    return ContainerInstance.objects.get(pk=inst.pk)


def _snapshot(inst: ContainerInstance) -> tuple:
    inst.refresh_from_db()
    return (inst.status, inst.desired_state, inst.suspended, inst.maintenance_lock,
            Operation.objects.filter(instance=inst).count(),
            AuditEvent.objects.filter(instance=inst).count())


def test_every_state_changing_server_action_is_covered_here():
    actions = _action_names(ReconciledServerAdmin)
    assert actions == set(OPERATION_ACTIONS) | set(FLAG_ACTIONS) | {
        "republish_edge", "revoke_ide_tokens",
        "change_plan"} | READ_ONLY_ACTIONS  # change_plan: tests/admin/test_admin_schedules.py


def test_a_view_only_operator_is_offered_no_state_changing_action(viewer, changer, platform,
                                                                 alice):
    # Django offers actions only above a non-empty list: one row in each.
    _server(alice, "listed", "running")
    notify_warning("disk almost full", "pve1 at 91 %")
    ChannelState.objects.create(channel="lifecycle", disabled=True, disabled_reason="404")
    Breaker.objects.create(action="dns_republish", state="open", consecutive_failures=3)
    assert _offered(viewer, SERVERS) == READ_ONLY_ACTIONS
    assert _offered(changer, SERVERS) == _action_names(ReconciledServerAdmin)
    for url, actions in (("/admin/notifications/notification/", {"resend"}),
                         ("/admin/notifications/channelstate/", {"enable"}),
                         ("/admin/reconciler/breaker/", {"reset"}),
                         ("/admin/lifecycle/apitoken/", {"revoke"})):
        assert viewer.get(url).status_code == 200, url  # may look
        assert _offered(viewer, url) == set(), url
        assert _offered(changer, url) == actions, url


@pytest.mark.parametrize("action", sorted(OPERATION_ACTIONS))
def test_a_view_only_operator_cannot_request_an_operation(viewer, changer, platform, alice,
                                                          action):
    status, kind = OPERATION_ACTIONS[action]
    inst = _server(alice, "steady", status)
    before = _snapshot(inst)
    post = {"action": action, "_selected_action": [str(inst.id)], "confirm": "yes"}
    resp = viewer.post(SERVERS, post, follow=True)
    _assert_refused(resp)
    assert _snapshot(inst) == before
    assert not Operation.objects.filter(instance=inst, kind=kind, state="queued").exists()
    assert not AuditEvent.objects.filter(actor_label="viewer").exists()
    # The same request from an operator who may change servers creates the operation.
    resp = changer.post(SERVERS, post, follow=True)
    assert "Requested: steady" in resp.content.decode(), resp.content.decode()[-3000:]
    op = Operation.objects.get(instance=inst, kind=kind, state="queued")
    assert op.requested_by == "changer"


@pytest.mark.parametrize("action", sorted(FLAG_ACTIONS))
def test_a_view_only_operator_cannot_set_flags(viewer, changer, platform, alice, action):
    inst = _server(alice, "flagged", "running")
    if action == "unsuspend":
        ContainerInstance.objects.filter(pk=inst.pk).update(suspended=True)
    before = _snapshot(inst)
    post = {"action": action, "_selected_action": [str(inst.id)]}
    resp = viewer.post(SERVERS, post, follow=True)
    _assert_refused(resp)
    assert _snapshot(inst) == before
    changer.post(SERVERS, post, follow=True)
    inst.refresh_from_db()
    field = FLAG_ACTIONS[action]
    assert getattr(inst, field) is (action != "unsuspend")
    assert AuditEvent.objects.get(instance=inst, action="flags:set").actor_label == "changer"


def test_a_view_only_operator_cannot_republish_the_edge(viewer, platform, alice):
    # Refused before any outside call: the edge clients are never reached.
    inst = _server(alice, "published", "running")
    before = _snapshot(inst)
    resp = viewer.post(SERVERS, {"action": "republish_edge",
                                 "_selected_action": [str(inst.id)]}, follow=True)
    _assert_refused(resp)
    assert _snapshot(inst) == before
    assert not AuditEvent.objects.filter(action__startswith="edge").exists()


def test_ide_tokens_are_revoked_only_with_the_change_permission(viewer, changer, platform,
                                                                alice, settings):
    settings.IDE_TOKEN_SECRETS = ["k" * 40]
    inst = server_create(owner=alice.user, data={
        "name": "my-ide", "kind": "dev", "plan": "modded", "runtime": "python",
        "runtime_version": "3.12", "enable_code_server": True}).instance
    ContainerInstance.objects.filter(pk=inst.pk).update(status="running")
    inst.refresh_from_db()
    first, second = (ide_token_issue(user=alice.user, server=inst) for _ in range(2))
    tokens = "/admin/lifecycle/idetoken/"
    assert viewer.get(tokens).status_code == 200 and _offered(viewer, tokens) == set()
    assert _offered(changer, tokens) == {"revoke"}
    for client in (viewer, changer):
        assert str(first.jti) in client.get(tokens).content.decode()
        assert first.token not in client.get(tokens).content.decode()  # never shown

    one = {"action": "revoke", "_selected_action": [str(first.jti)]}
    _assert_refused(viewer.post(tokens, one, follow=True))
    all_of_server = {"action": "revoke_ide_tokens", "_selected_action": [str(inst.id)]}
    _assert_refused(viewer.post(SERVERS, all_of_server, follow=True))
    assert not IdeToken.objects.filter(revoked_at__isnull=False).exists()

    resp = changer.post(tokens, one, follow=True)
    assert "Revoked 1 unexpired token(s)" in resp.content.decode()
    assert IdeToken.objects.get(pk=first.jti).revoked_by == "changer"
    resp = changer.post(SERVERS, all_of_server, follow=True)
    assert "Revoked 1 unexpired IDE token(s)" in resp.content.decode()  # the other one
    assert IdeToken.objects.get(pk=second.jti).revoked_at is not None
    assert AuditEvent.objects.filter(action="ide_tokens_revoked",
                                     actor_label="changer").count() == 2


def test_breakers_are_reset_only_with_the_change_permission(viewer, changer):
    Breaker.objects.create(action="dns_republish", state="open", consecutive_failures=3)
    reset_url = reverse("admin:reconciler_breaker_reset", args=["dns_republish"])
    assert viewer.get(reverse("admin:reconciler_dashboard")).status_code == 200
    assert viewer.post(reset_url).status_code == 403
    resp = viewer.post("/admin/reconciler/breaker/", {"action": "reset",
                                                      "_selected_action": ["dns_republish"]},
                       follow=True)
    _assert_refused(resp)
    assert Breaker.objects.get().state == "open"
    assert not AuditEvent.objects.filter(action="breaker:reset").exists()

    resp = changer.post(reset_url, follow=True)
    assert "Breaker for dns_republish reset" in resp.content.decode()
    assert Breaker.objects.get().state == "closed"
    Breaker.objects.update(state="open", consecutive_failures=3)
    changer.post("/admin/reconciler/breaker/", {"action": "reset",
                                                "_selected_action": ["dns_republish"]})
    assert Breaker.objects.get().state == "closed"
    assert list(AuditEvent.objects.filter(action="breaker:reset")
                .values_list("actor_label", flat=True)) == ["changer", "changer"]


def test_a_staff_user_without_permissions_does_not_see_the_dashboard(db):
    nobody = _staff("nobody")
    assert nobody.get(reverse("admin:reconciler_dashboard")).status_code == 403


def test_notifications_are_resent_and_channels_enabled_only_with_the_change_permission(
        viewer, changer):
    row = notify_warning("disk almost full", "pve1 at 91 %")
    ChannelState.objects.create(channel="lifecycle", disabled=True, disabled_reason="404")
    resend = {"action": "resend", "_selected_action": [str(row.pk)]}
    enable = {"action": "enable", "_selected_action": ["lifecycle"]}
    _assert_refused(viewer.post("/admin/notifications/notification/", resend, follow=True))
    _assert_refused(viewer.post("/admin/notifications/channelstate/", enable, follow=True))
    assert Notification.objects.filter(title="disk almost full").count() == 1
    assert ChannelState.objects.get(channel="lifecycle").disabled

    changer.post("/admin/notifications/notification/", resend, follow=True)
    changer.post("/admin/notifications/channelstate/", enable, follow=True)
    assert Notification.objects.filter(title="disk almost full").count() == 2
    assert not ChannelState.objects.get(channel="lifecycle").disabled


def test_an_api_token_is_revoked_from_the_panel_and_then_refused_by_the_api(viewer, changer):
    portal = make_user("portal-user")
    token = ApiToken.objects.get(user=portal.user)
    api = Client()
    assert api.get("/api/v1/servers", **portal.headers).status_code == 200

    # Listed by prefix; the hash is shown nowhere.
    page = changer.get("/admin/lifecycle/apitoken/").content.decode()
    assert token.prefix in page and token.key_hash not in page
    detail = changer.get(reverse("admin:lifecycle_apitoken_change", args=[token.pk]))
    assert detail.status_code == 200 and token.key_hash not in detail.content.decode()

    revoke = {"action": "revoke", "_selected_action": [str(token.pk)]}
    resp = viewer.post("/admin/lifecycle/apitoken/", revoke, follow=True)
    _assert_refused(resp)
    token.refresh_from_db()
    assert token.revoked_at is None
    assert api.get("/api/v1/servers", **portal.headers).status_code == 200

    resp = changer.post("/admin/lifecycle/apitoken/", revoke, follow=True)
    assert f"Revoked: {token.prefix}" in resp.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None
    event = AuditEvent.objects.get(action="apitoken:revoke")
    assert (event.actor_label, event.actor_kind, event.data["prefix"]) == \
        ("changer", "admin", token.prefix)
    resp = api.get("/api/v1/servers", **portal.headers)
    assert resp.status_code == 401, resp.content
    # Revoking again changes nothing and says so.
    resp = changer.post("/admin/lifecycle/apitoken/", revoke, follow=True)
    assert "Already revoked" in resp.content.decode()
    assert AuditEvent.objects.filter(action="apitoken:revoke").count() == 1


def test_the_dashboard_offers_the_breaker_reset_only_to_who_may_reset(viewer, changer):
    Breaker.objects.create(action="dns_republish", state="open", consecutive_failures=3)
    dashboard = reverse("admin:reconciler_dashboard")
    assert 'id="reset-dns_republish"' not in viewer.get(dashboard).content.decode()
    assert 'id="reset-dns_republish"' in changer.get(dashboard).content.decode()


def _beat_staff(username: str, *codenames: str) -> Client:
    user = get_user_model().objects.create_user(username, password="pw-123456789",
                                                is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        content_type__app_label="django_celery_beat", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("action", ["enable_tasks", "toggle_tasks", "run_tasks"])
def test_periodic_task_actions_need_the_change_permission(db, action):
    """django-celery-beat's own actions check nothing; ours do."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(name="upkeep-test", task="lifecycle.sweep",
                                       interval=every, enabled=False)
    url = "/admin/django_celery_beat/periodictask/"
    viewer = _beat_staff("beat-viewer", "view_periodictask")
    assert action not in _offered(viewer, url)
    resp = viewer.post(url, {"action": action, "_selected_action": [str(task.pk)]},
                       follow=True)
    _assert_refused(resp)
    task.refresh_from_db()
    assert task.enabled is False

    changer = _beat_staff("beat-changer", "view_periodictask", "change_periodictask")
    assert action in _offered(changer, url)
    if action != "run_tasks":  # running sends a message to the broker; offered is enough
        changer.post(url, {"action": action, "_selected_action": [str(task.pk)]})
        task.refresh_from_db()
        assert task.enabled is True
