"""The heartbeat receiver, `POST /api/v1/agents/{server_id}/heartbeat` (issue 14, item 2):
authenticated by the server's own heartbeat token only, garbage refused whole, sequence
regressions ignored, one write per half interval, the crash log tail clipped and redacted."""
from __future__ import annotations

import json
import uuid

import pytest
from rest_framework.test import APIClient

from core.agent_tokens import control_token, heartbeat_token
from lifecycle.models import AgentHeartbeat
from lifecycle.services.agent_credentials import agent_credential_ensure, agent_secrets
from lifecycle.services.servers import server_create
from tests.support.platform import game_body

pytestmark = pytest.mark.django_db


def server(owner, name):
    inst = server_create(owner=owner.user, data=game_body(name)).instance
    agent_credential_ensure(instance_id=inst.id)
    return inst, agent_secrets(instance_id=inst.id)


def beat(seq, **over):
    body = {"sequence": seq, "state": "running", "provisioningComplete": True, "ready": True,
            "crashCount": 0, "lastCrash": None, "memoryUsedMb": 1024, "memoryLimitMb": 4096,
            "diskUsedMb": 2048, "diskLimitMb": 8192, "playersOnline": 3,
            "agentVersion": "1.4.0"}
    body.update(over)
    return body


def post(server_id, body, token=None, *, raw=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else json.dumps(body)
    return APIClient().generic("POST", f"/api/v1/agents/{server_id}/heartbeat", data,
                               content_type="application/json", **headers)


@pytest.fixture
def fast(settings):
    settings.AGENT_HEARTBEAT_INTERVAL_SECONDS = 0  # no rate limit unless a test sets one
    return settings


def test_a_heartbeat_with_the_servers_token_is_written(platform, alice, fast):
    inst, creds = server(alice, "beating")
    resp = post(inst.id, beat(1), heartbeat_token(creds.current, inst.id))
    assert resp.status_code == 202 and resp.json()["written"] is True, resp.content
    row = AgentHeartbeat.objects.get(server=inst)
    assert (row.sequence, row.state, row.ready, row.players_online, row.memory_used_mb,
            row.agent_version, row.credential_version) == (1, "running", True, 3, 1024,
                                                           "1.4.0", creds.version)


def test_wrong_missing_or_another_servers_token_is_refused_alike(platform, alice, fast):
    inst, creds = server(alice, "mine")
    other, other_creds = server(alice, "other")
    wrong = [None, "", "nonsense", heartbeat_token(other_creds.current, other.id),
             heartbeat_token(other_creds.current, inst.id),  # B's secret, A's id
             control_token(creds.current, inst.id),  # the other direction's token
             creds.current]  # the secret itself is no token
    for token in wrong:
        resp = post(inst.id, beat(1), token)
        assert resp.status_code == 401, (token, resp.content)
        assert resp["WWW-Authenticate"] == 'Bearer realm="agent"'
    # A server that does not exist (or an id that is no id) answers exactly the same.
    missing = post(uuid.uuid4(), beat(1), heartbeat_token(creds.current, inst.id))
    junk = post("not-a-server", beat(1), "x")
    assert missing.status_code == junk.status_code == 401
    assert missing.json() == junk.json() == post(inst.id, beat(1), "x").json()
    # Portal tokens do not open it either.
    resp = APIClient().post(f"/api/v1/agents/{inst.id}/heartbeat", beat(1), format="json",
                            **alice.headers)
    assert resp.status_code == 401
    assert not AgentHeartbeat.objects.exists()


@pytest.mark.parametrize("raw", [
    "not json at all",
    json.dumps([1, 2, 3]),
    json.dumps(beat("7")),                       # a number as a string
    json.dumps(beat(-1)),
    json.dumps(beat(1, state=["running"])),
    json.dumps(beat(1, state="Running; DROP TABLE")),
    json.dumps(beat(1, ready="yes")),
    json.dumps(beat(1, memoryUsedMb=2**40)),
    json.dumps(beat(1, lastCrash={"classification": "oom", "exitCode": "137"})),
    json.dumps({"state": "running"}),            # no sequence
])
def test_garbage_is_refused_whole_and_nothing_is_written(platform, alice, fast, raw):
    inst, creds = server(alice, "garbage")
    token = heartbeat_token(creds.current, inst.id)
    assert post(inst.id, None, token).status_code == 400  # an empty body too
    resp = post(inst.id, None, token, raw=raw)
    assert resp.status_code == 400, resp.content
    assert resp.json()["code"] in ("invalid", "parse_error") and resp.json()["message"]
    assert not AgentHeartbeat.objects.exists()


def test_a_garbage_heartbeat_leaves_the_last_good_one(platform, alice, fast):
    inst, creds = server(alice, "keeps")
    token = heartbeat_token(creds.current, inst.id)
    assert post(inst.id, beat(5), token).status_code == 202
    assert post(inst.id, beat(6, crashCount=-3), token).status_code == 400
    assert AgentHeartbeat.objects.get(server=inst).sequence == 5


def test_a_sequence_regression_is_ignored(platform, alice, fast):
    inst, creds = server(alice, "ordered")
    token = heartbeat_token(creds.current, inst.id)
    assert post(inst.id, beat(10, state="running"), token).json()["written"]
    for seq in (10, 9, 1):
        resp = post(inst.id, beat(seq, state="crashed"), token)
        assert resp.status_code == 202 and resp.json() == {
            "written": False, "reason": "stale_sequence", "intervalSeconds": 0}
    row = AgentHeartbeat.objects.get(server=inst)
    assert (row.sequence, row.state) == (10, "running")
    assert post(inst.id, beat(11, state="crashed"), token).json()["written"]
    assert AgentHeartbeat.objects.get(server=inst).state == "crashed"


def test_heartbeats_sooner_than_half_the_interval_are_accepted_not_written(platform, alice,
                                                                           settings):
    settings.AGENT_HEARTBEAT_INTERVAL_SECONDS = 30
    inst, creds = server(alice, "chatty")
    token = heartbeat_token(creds.current, inst.id)
    assert post(inst.id, beat(1), token).json()["written"]
    for seq in range(2, 7):
        resp = post(inst.id, beat(seq, playersOnline=seq), token)
        assert resp.status_code == 202
        assert resp.json() == {"written": False, "reason": "too_soon", "intervalSeconds": 30}
    row = AgentHeartbeat.objects.get(server=inst)
    assert (row.sequence, row.players_online) == (1, 3)
    # Half an interval later (by the database's clock) the next one is written.
    AgentHeartbeat.objects.filter(server=inst).update(
        received_at=row.received_at.replace(year=row.received_at.year - 1))
    assert post(inst.id, beat(7), token).json()["written"]


def test_the_crash_log_tail_is_clipped_and_redacted(platform, alice, fast):
    inst, creds = server(alice, "crashy")
    token = heartbeat_token(creds.current, inst.id)
    # A body over the API's cap is refused before it is read (413).
    huge = beat(1, lastCrash={"classification": "oom", "logTail": "x" * 20_000})
    assert post(inst.id, huge, token).status_code == 413
    tail = ("x" * 10_000 + "\nDB_PASSWORD=hunter2-secret-value\n"
            "Bearer abcdefghijklmnopqrstuvwxyz0123\njava.lang.OutOfMemoryError: Java heap space")
    resp = post(inst.id, beat(1, state="crashed", crashCount=4, lastCrash={
        "classification": "oom", "exitCode": 137, "at": 1_800_000_000.5, "logTail": tail}),
        token)
    assert resp.status_code == 202, resp.content
    crash = AgentHeartbeat.objects.get(server=inst).last_crash
    assert crash["classification"] == "oom" and crash["exit_code"] == 137
    assert len(crash["log_tail"].encode()) <= 4096
    assert crash["log_tail"].endswith("OutOfMemoryError: Java heap space")
    assert "hunter2" not in crash["log_tail"] and "abcdefghijklmnop" not in crash["log_tail"]


def test_memory_pressure_is_counted_in_a_streak(platform, alice, fast):
    inst, creds = server(alice, "hungry")
    token = heartbeat_token(creds.current, inst.id)
    for seq, used in enumerate((3900, 3950, 4000), start=1):  # of 4096: above 90 %
        post(inst.id, beat(seq, memoryUsedMb=used), token)
    assert AgentHeartbeat.objects.get(server=inst).memory_high_streak == 3
    post(inst.id, beat(4, memoryUsedMb=1000), token)
    assert AgentHeartbeat.objects.get(server=inst).memory_high_streak == 0
