"""A server's log and console through its agent: the real worker provisions a real server on
the devstack, and the API reads the stand-in agent's log and sends it commands over HTTP, with
the server's own agent credential."""
from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from lifecycle.api.throttling import ConsoleThrottle
from lifecycle.models import AuditEvent, ContainerInstance
from lifecycle.services.console import console_command_errors
from lifecycle.services.servers import server_create
from tests.support.platform import game_body, make_user
from tests.support.stack import wait_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]


@pytest.fixture
def running(stack, worker, owner):
    inst = wait_status(server_create(owner=owner.user, data=game_body("talky")).instance.id,
                       "running")
    return inst


def console(api, user, server, command):
    return api.post(f"/api/v1/servers/{server.id}/console", {"command": command},
                    format="json", **user.headers)


def test_the_owner_reads_the_log_and_sends_a_command(stack, running, owner):
    api = APIClient()
    resp = api.get(f"/api/v1/servers/{running.id}/logs?tail=5", **owner.headers)
    assert resp.status_code == 200, resp.content
    lines = resp.json()["lines"]
    assert 1 <= len(lines) <= 5 and 'Done! For help, type "help"' in lines[-1]

    resp = console(api, owner, running, "/say hello players")
    assert resp.status_code == 200, resp.content
    assert resp.json()["output"][-1].endswith("[Server] hello players")
    assert stack.agent(running.vmid)["commands"] == ["say hello players"]
    events = AuditEvent.objects.filter(instance_id=running.id)
    assert events.filter(action="server_logs_read", data__tail=5).exists()
    assert events.get(action="console_command").data == {"command": "say hello players"}


def test_what_the_game_prints_comes_back_cleaned_and_redacted(stack, running, owner):
    api = APIClient()
    secret = "sk_live_" + "a1B2c3D4e5F6g7H8"
    resp = console(api, owner, running, f"say \x1b[31mred\x1b[0m {secret}")
    assert resp.status_code == 400  # the command itself: control characters refused
    resp = console(api, owner, running, f"say password={secret}")
    assert resp.status_code == 200
    printed = resp.json()["output"][-1]
    assert secret not in printed and "***" in printed
    logs = api.get(f"/api/v1/servers/{running.id}/logs", **owner.headers).json()["lines"]
    assert not any(secret in line for line in logs)
    audited = AuditEvent.objects.get(action="console_command", instance_id=running.id)
    assert secret not in str(audited.data)


@pytest.mark.parametrize("command,text", [
    ("stop", "POST …/stop"),
    ("/minecraft:stop", "POST …/stop"),
    ("RESTART now", "POST …/restart"),
    ("save-off", "backups"),
    ("reload confirm", "restart"),
    ("x" * 257, "At most 256 characters"),
    ("say a\nstop", "one line"),
    ("   ", "Give a command"),
])
def test_denied_and_malformed_commands_are_refused_before_the_agent(command, text):
    [problem] = console_command_errors(command)
    assert text in problem


def test_a_stop_through_the_console_never_reaches_the_agent(stack, running, owner):
    api = APIClient()
    resp = console(api, owner, running, "stop")
    assert resp.status_code == 400 and "POST …/stop" in resp.json()["fields"]["command"][0]
    assert stack.agent(running.vmid)["commands"] == []
    assert stack.agent(running.vmid)["state"] == "running"
    assert not AuditEvent.objects.filter(action="console_command").exists()


def test_who_and_when(stack, running, owner):
    api = APIClient()
    stranger = make_user("stranger")
    assert console(api, stranger, running, "list").status_code == 404
    assert api.get(f"/api/v1/servers/{running.id}/logs", **stranger.headers).status_code == 404
    assert api.get(f"/api/v1/servers/{running.id}/logs").status_code == 401
    for tail in ("0", "1001", "abc", "-3"):
        resp = api.get(f"/api/v1/servers/{running.id}/logs?tail={tail}", **owner.headers)
        assert resp.status_code == 400 and "1 to 1000" in resp.json()["message"], tail

    dev = server_create(owner=owner.user, data={
        "name": "no-console", "kind": "dev", "plan": "modded", "runtime": "go",
        "runtime_version": "1.23"}).instance
    ContainerInstance.objects.filter(pk=dev.pk).update(status="running")
    resp = console(api, owner, dev, "list")
    assert resp.status_code == 409 and "Only game servers" in resp.json()["message"]

    ContainerInstance.objects.filter(pk=running.pk).update(status="stopped")
    resp = console(api, owner, running, "list")
    assert resp.status_code == 409 and "start it first" in resp.json()["message"]


def test_the_console_is_rate_limited_per_user(stack, running, monkeypatch):
    monkeypatch.setattr(ConsoleThrottle, "THROTTLE_RATES", {"console": "2/min"})
    loud = make_user(f"loud-{uuid.uuid4().hex[:8]}")  # counted even where it finds nothing
    assert [console(APIClient(), loud, running, "list").status_code
            for _ in range(3)] == [404, 404, 429]


def test_an_agent_that_does_not_answer_is_a_503_and_nothing_is_done(stack, running, owner):
    api = APIClient()
    stack.agents("POST", f"/_sim/agents/{running.vmid}/hang")
    resp = console(api, owner, running, "list")
    assert resp.status_code == 503 and resp.json()["code"] == "agent_unavailable"
    resp = api.get(f"/api/v1/servers/{running.id}/logs", **owner.headers)
    assert resp.status_code == 503
