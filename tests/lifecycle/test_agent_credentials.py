"""A credential per container (issue 14, item 1), on the real stack: real workers, MariaDB,
Redis and the devstack's agents over HTTP.

The threat: a dev tenant binds the agent port in its own container and records what the
control plane sends there. What it records must open no other container, and nothing but the
right credential opens an agent."""
from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
import requests
from django.db import connection
from rest_framework.test import APIClient

from core.agent_tokens import control_token, heartbeat_token
from lifecycle.models import AgentCredential, AuditEvent, ContainerInstance, Operation
from lifecycle.services.agent_credentials import agent_secrets
from lifecycle.services.servers import server_create
from notifications.models import Notification
from reconciler.services import run_cycle
from tests.support.platform import game_body
from tests.support.stack import wait_operation, wait_status
from tests.support.workers import start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]


def running(owner, name):
    return wait_status(server_create(owner=owner.user, data=game_body(name)).instance.id,
                       "running")


def agent_call(stack, vmid, method, path, token=None, **kw):
    url = stack.endpoints["agents"]["url"].format(vmid=vmid) + path
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.request(method, url, headers=headers, timeout=10, **kw)


def bearer_of(header):
    return header.split(" ", 1)[1] if header and " " in header else header


def test_an_impostor_in_one_container_learns_nothing_that_opens_another(stack, worker, owner):
    a, b = running(owner, "alpha"), running(owner, "bravo")
    sa, sb = agent_secrets(instance_id=a.id), agent_secrets(instance_id=b.id)
    # A tenant's listener takes the agent port of container A.
    stack.agents("POST", f"/_sim/agents/{a.vmid}/impostor")
    run_cycle(dry_run=True)  # the reconciler asks every agent for its status
    stop = APIClient().post(f"/api/v1/servers/{a.id}/stop", **owner.headers)
    assert stop.status_code == 202
    wait_status(a.id, "stopped")

    seen = stack.agents("GET", f"/_sim/agents/{a.vmid}/impostor")["requests"]
    assert {(r["method"], r["path"].rsplit("/", 1)[-1]) for r in seen} >= {
        ("GET", "status"), ("POST", "stop")}
    headers = {r["headers"].get("Authorization") for r in seen}
    assert headers and None not in headers
    for header in headers:
        # Whatever it recorded, B's real agent refuses it.
        for method, path in (("GET", "/status"), ("POST", "/game/stop"),
                             ("POST", "/credential")):
            resp = agent_call(stack, b.vmid, method, path, bearer_of(header),
                              json={"secret": "x" * 43, "version": 9, "serverId": str(b.id),
                                    "heartbeat": {}} if path == "/credential" else None)
            assert resp.status_code == 401, (method, path, resp.status_code)
        # And it never saw a secret, B's tokens, or the old shared token.
        assert bearer_of(header) == sa.control
    everything = json.dumps(seen)
    for secret in (sa.current, sb.current, sb.control, heartbeat_token(sb.current, b.id),
                   heartbeat_token(sa.current, a.id), stack.env["AGENT_LEGACY_TOKEN"]):
        assert secret not in everything
    # B's agent still takes B's own token.
    assert agent_call(stack, b.vmid, "GET", "/status", sb.control).status_code == 200


def test_an_agent_refuses_every_credential_but_its_own(stack, worker, owner):
    a, b = running(owner, "own"), running(owner, "other")
    sa, sb = agent_secrets(instance_id=a.id), agent_secrets(instance_id=b.id)
    assert agent_call(stack, a.vmid, "GET", "/status", sa.control).json()[
        "credentialVersion"] == sa.version == 1
    refused = [None, "", "wrong", sb.control, control_token(sb.current, a.id),
               heartbeat_token(sa.current, a.id), sa.current, stack.env["AGENT_LEGACY_TOKEN"]]
    for token in refused:
        for method, path in (("GET", "/status"), ("POST", "/game/stop"),
                             ("POST", "/provision")):
            resp = agent_call(stack, a.vmid, method, path, token, json={"kind": "game"})
            assert resp.status_code == 401, (token, method, path, resp.status_code)
    # Enrolment is closed once the agent holds a credential: no second "first use".
    resp = agent_call(stack, a.vmid, "POST", "/credential", None,
                      json={"secret": "y" * 43, "version": 1, "serverId": str(a.id),
                            "heartbeat": {"url": "http://127.0.0.1:9/", "intervalSeconds": 1}})
    assert resp.status_code == 401
    assert stack.agent(a.vmid)["state"] == "running"  # nothing was stopped


def test_the_database_holds_no_secret_in_clear(stack, worker, owner):
    inst = running(owner, "vault")
    creds = agent_secrets(instance_id=inst.id)
    needles = {creds.current, creds.control, heartbeat_token(creds.current, inst.id)}
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM lifecycle_agentcredential")
        rows = cursor.fetchall()
    assert len(rows) == 1
    for row in rows:
        for column in row:
            for needle in needles:
                assert needle not in str(column)
    texts = [json.dumps(list(Operation.objects.values("log", "params", "error"))),
             json.dumps(list(AuditEvent.objects.values_list("data", flat=True))),
             json.dumps(list(Notification.objects.values("title", "body", "fields")))]
    for text in texts:
        for needle in needles:
            assert needle not in text
    # What is stored decrypts to what the agent holds (it answers the token made from it).
    assert AgentCredential.objects.get(pk=inst.id).enrolled_at is not None


def _rotate_via_api(staff, inst):
    resp = APIClient().post(f"/api/v1/servers/{inst.id}/rotate-credential", **staff.headers)
    assert resp.status_code == 202, resp.content
    assert resp.json()["kind"] == "rotate_credential"
    return wait_operation(resp.json()["id"])


def test_rotation_through_the_api_ends_the_old_credential(stack, worker_env, tmp_path, owner,
                                                         staff):
    proc = start_worker(worker_env(AGENT_CREDENTIAL_OVERLAP_SECONDS="2"), tmp_path)
    try:
        inst = running(owner, "rotated")
        old = agent_secrets(instance_id=inst.id)
        # Only staff may ask.
        assert APIClient().post(f"/api/v1/servers/{inst.id}/rotate-credential",
                                **owner.headers).status_code == 403
        op = _rotate_via_api(staff, inst)
        new = agent_secrets(instance_id=inst.id)
        assert new.version == old.version + 1 and new.current != old.current
        assert ContainerInstance.objects.get(pk=inst.id).status == "running"  # untouched
        assert "agent holds credential v2" in json.dumps(op.log)
        assert stack.agent(inst.vmid)["credentialVersion"] == 2
        assert agent_call(stack, inst.vmid, "GET", "/status", old.control).status_code == 401
        assert agent_call(stack, inst.vmid, "GET", "/status", new.control).status_code == 200
        # Heartbeats signed with the old secret count during the overlap only.
        url = f"/api/v1/agents/{inst.id}/heartbeat"
        body = {"sequence": 1, "state": "running"}

        def heartbeat(secret):
            return APIClient().post(url, body, format="json", HTTP_AUTHORIZATION="Bearer "
                                    + heartbeat_token(secret, inst.id)).status_code

        assert heartbeat(old.current) == 202
        wait_until_past = AgentCredential.objects.get(pk=inst.id).previous_valid_until
        assert wait_until_past is not None
        from tests.support.waiting import wait_until
        wait_until(lambda: heartbeat(old.current) == 401, timeout=10, interval=0.5,
                   what="the old credential's overlap to end")
        assert heartbeat(new.current) == 202
        # Everything still works with the new one: a stop goes through.
        assert APIClient().post(f"/api/v1/servers/{inst.id}/stop",
                                **owner.headers).status_code == 202
        wait_status(inst.id, "stopped")
        assert stack.agent(inst.vmid)["saves"] >= 1
    finally:
        proc.stop()


def test_rotation_from_the_admin_and_of_a_stopped_server(stack, worker, owner, admin_client):
    inst = running(owner, "rotor")
    APIClient().post(f"/api/v1/servers/{inst.id}/stop", **owner.headers)
    wait_status(inst.id, "stopped")
    resp = admin_client.post("/admin/lifecycle/containerinstance/",
                             {"action": "rotate_agent_credential",
                              "_selected_action": [str(inst.id)]}, follow=True)
    assert "Requested: rotor (rotate_credential operation" in resp.content.decode()
    op = Operation.objects.filter(instance=inst, kind="rotate_credential").get()
    op = wait_operation(op.id)
    assert "gets the new credential at the next start" in json.dumps(op.log)
    assert agent_secrets(instance_id=inst.id).version == 2
    assert ContainerInstance.objects.get(pk=inst.id).status == "stopped"
    assert AuditEvent.objects.filter(instance=inst, action="request:rotate_credential",
                                     actor_kind="admin").exists()
    # The next start delivers it, authenticated by the version the agent still holds.
    assert APIClient().post(f"/api/v1/servers/{inst.id}/start",
                            **owner.headers).status_code == 202
    wait_status(inst.id, "running")
    assert stack.agent(inst.vmid)["credentialVersion"] == 2
    assert AgentCredential.objects.get(pk=inst.id).enrolled_at is not None


def test_restore_enrols_a_new_version(stack, worker, owner):
    inst = running(owner, "phoenix")
    api = APIClient()
    assert api.delete(f"/api/v1/servers/{inst.id}", **owner.headers).status_code == 202
    wait_status(inst.id, "deleted")
    before = agent_secrets(instance_id=inst.id)
    assert api.post(f"/api/v1/servers/{inst.id}/restore", **owner.headers).status_code == 202
    wait_status(inst.id, "running")
    after = agent_secrets(instance_id=inst.id)
    assert after.version == before.version + 1 and after.current != before.current
    assert stack.agent(inst.vmid)["credentialVersion"] == after.version
    assert agent_call(stack, inst.vmid, "GET", "/status", before.control).status_code == 401


def test_an_agent_holding_an_unknown_credential_fails_readably_once(stack, worker, owner):
    inst = running(owner, "tampered")
    creds = agent_secrets(instance_id=inst.id)
    # Someone with the current token gave the agent a credential we do not know.
    resp = agent_call(stack, inst.vmid, "POST", "/credential", creds.control,
                      json={"secret": "z" * 43, "version": 7, "serverId": str(inst.id),
                            "heartbeat": {"url": "http://127.0.0.1:9/", "intervalSeconds": 1}})
    assert resp.status_code == 200
    op = APIClient().post(f"/api/v1/servers/{inst.id}/restart", **owner.headers).json()
    op = wait_operation(op["id"], states=("failed",))
    assert op.error["kind"] == "credential_mismatch"
    assert "holds a credential we do not know" in op.error["message"]
    warnings = Notification.objects.filter(channel="warning", title__startswith="Restart")
    assert warnings.count() == 1


def _legacy_server(stack, worker_env, tmp_path, owner, name, until):
    """A server whose agent is an old one (no /credential, the shared token only)."""
    created = server_create(owner=owner.user, data=game_body(name)).instance
    stack.agents("POST", f"/_sim/agents/{created.vmid}/legacy", json={"on": True})
    proc = start_worker(worker_env(AGENT_LEGACY_TOKEN_UNTIL=until), tmp_path)
    return created, proc


def test_a_legacy_agent_is_driven_with_the_shared_token_until_the_date(stack, worker_env,
                                                                      tmp_path, owner,
                                                                      settings):
    until = (date.today() + timedelta(days=2)).isoformat()
    settings.AGENT_LEGACY_TOKEN_UNTIL = until
    inst, proc = _legacy_server(stack, worker_env, tmp_path, owner, "oldtimer", until)
    try:
        wait_status(inst.id, "running")
        cred = AgentCredential.objects.get(pk=inst.id)
        assert cred.legacy_since is not None and cred.enrolled_at is None
        assert stack.agent(inst.vmid)["credentialVersion"] is None
        assert AuditEvent.objects.filter(instance=inst, action="agent_credential:legacy").exists()
        # Stop goes through with the shared token too (asked to save first).
        APIClient().post(f"/api/v1/servers/{inst.id}/stop", **owner.headers)
        wait_status(inst.id, "stopped")
        assert stack.agent(inst.vmid)["saves"] == 1
        # The agent is upgraded: the next start enrols it and the marker goes away.
        stack.agents("POST", f"/_sim/agents/{inst.vmid}/legacy", json={"on": False})
        APIClient().post(f"/api/v1/servers/{inst.id}/start", **owner.headers)
        wait_status(inst.id, "running")
        cred.refresh_from_db()
        assert cred.legacy_since is None and cred.enrolled_at is not None
        assert stack.agent(inst.vmid)["credentialVersion"] == cred.version
    finally:
        proc.stop()


def test_a_legacy_agent_is_refused_after_the_date(stack, worker_env, tmp_path, owner):
    until = (date.today() - timedelta(days=1)).isoformat()
    inst, proc = _legacy_server(stack, worker_env, tmp_path, owner, "tooold", until)
    try:
        failed = wait_status(inst.id, "failed")
        assert failed.last_error["kind"] == "legacy_agent"
        assert "too old to take a credential" in failed.last_error["message"]
        assert AgentCredential.objects.get(pk=inst.id).legacy_since is None
        assert Notification.objects.filter(channel="warning",
                                           title__startswith="Provisioning tooold").count() == 1
    finally:
        proc.stop()
