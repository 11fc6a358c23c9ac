"""Browser-IDE tokens: issued to a dev container's owner only, short-lived, single-purpose,
verified by the IDE proxy (the devstack's stand-in, over real HTTP, with PyJWT and the shared
key alone), revocable by the operator, rate-limited, and never stored or logged."""
from __future__ import annotations

import logging
import uuid

import jwt
import pytest
import requests

from core.redaction import redact_text
from lifecycle.api.throttling import IdeTokenThrottle
from lifecycle.models import AuditEvent, ContainerInstance, IdeToken
from lifecycle.services.audit import Actor
from lifecycle.services.ide_tokens import ide_tokens_revoke
from lifecycle.services.servers import server_create
from tests.support.platform import game_body, make_user

SECRET = "k" * 40
DEV = {"name": "my-ide", "kind": "dev", "plan": "modded", "runtime": "python",
       "runtime_version": "3.12", "enable_code_server": True}


def dev_server(owner, *, status="running", **over):
    inst = server_create(owner=owner.user, data={**DEV, **over}).instance
    ContainerInstance.objects.filter(pk=inst.pk).update(status=status)
    inst.refresh_from_db()
    return inst


def issue(api, user, server_id):
    return api.post(f"/api/v1/servers/{server_id}/ide-token", **user.headers)


@pytest.fixture
def ide(settings):
    settings.IDE_TOKEN_SECRETS = [SECRET]
    settings.IDE_PROXY_TOKEN = "proxy-" + "p" * 30
    settings.IDE_URL_TEMPLATE = "https://dev-{vmid}.ide.example.net/"
    settings.IDE_TOKEN_TTL_SECONDS = 300
    return settings


# --- issuing ----------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_owner_gets_a_short_lived_token_bound_to_the_container(api, platform, alice, ide):
    server = dev_server(alice)
    resp = issue(api, alice, server.id)
    assert resp.status_code == 201, resp.content
    assert resp["Cache-Control"] == "no-store"
    body = resp.json()
    assert body["url"] == (f"https://dev-{server.vmid}.ide.example.net/"
                           f"?zlh_ide_token={body['token']}")
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"], audience="zlh-ide",
                        issuer="zlh")
    assert claims["sub"] == str(server.id) and claims["vmid"] == server.vmid
    assert claims["exp"] - claims["iat"] == 300
    row = IdeToken.objects.get(pk=body["jti"])
    assert str(row.id) == claims["jti"] and row.user_id == alice.user.pk
    assert int(row.expires_at.timestamp()) == claims["exp"]
    with pytest.raises(jwt.InvalidAudienceError):  # single purpose: not an API credential
        jwt.decode(body["token"], SECRET, algorithms=["HS256"], audience="zlh-api")
    # the token is not an API token either
    assert api.get("/api/v1/servers",
                   HTTP_AUTHORIZATION=f"Bearer {body['token']}").status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize("case,status,code,text", [
    ("game", 409, "invalid_state", "only dev containers created with enable_code_server"),
    ("no_code_server", 409, "invalid_state", "only dev containers created with"),
    ("stopped", 409, "invalid_state", "start it first"),
    ("suspended", 409, "invalid_state", "suspended"),
])
def test_servers_without_a_reachable_ide_are_refused_saying_why(api, platform, alice, ide, case,
                                                               status, code, text):
    if case == "game":
        server = server_create(owner=alice.user, data=game_body("castle")).instance
        ContainerInstance.objects.filter(pk=server.pk).update(status="running")
    elif case == "no_code_server":
        server = dev_server(alice, enable_code_server=False)
    elif case == "stopped":
        server = dev_server(alice, status="stopped")
    else:
        server = dev_server(alice)
        ContainerInstance.objects.filter(pk=server.pk).update(suspended=True)
    resp = issue(api, alice, server.id)
    assert resp.status_code == status and resp.json()["code"] == code
    assert text in resp.json()["message"]
    assert not IdeToken.objects.exists()


@pytest.mark.django_db
def test_only_the_owner_may_have_one(api, platform, alice, bob, staff, ide):
    server = dev_server(alice)
    assert issue(api, bob, server.id).status_code == 404  # as if it did not exist
    resp = issue(api, staff, server.id)  # staff see it, but an IDE is its owner's alone
    assert resp.status_code == 403 and "owner" in resp.json()["message"]
    assert api.post(f"/api/v1/servers/{server.id}/ide-token").status_code == 401
    assert issue(api, alice, uuid.uuid4()).status_code == 404
    assert not IdeToken.objects.exists()


@pytest.mark.django_db
def test_without_keys_the_ide_is_unavailable_not_broken(api, platform, alice, ide):
    ide.IDE_TOKEN_SECRETS = []
    resp = issue(api, alice, dev_server(alice).id)
    assert resp.status_code == 503 and resp.json()["code"] == "unavailable"
    assert "IDE_TOKEN_SECRETS" in resp.json()["message"]


@pytest.mark.django_db
def test_issuing_is_rate_limited(api, platform, alice, ide, monkeypatch):
    monkeypatch.setattr(IdeTokenThrottle, "THROTTLE_RATES", {"ide_token": "2/min"})
    server = dev_server(alice)
    assert [issue(api, alice, server.id).status_code for _ in range(3)] == [201, 201, 429]
    assert IdeToken.objects.count() == 2


@pytest.mark.django_db
def test_the_token_is_never_stored_logged_or_audited(api, platform, alice, ide, caplog):
    server = dev_server(alice)
    with caplog.at_level(logging.DEBUG):
        token = issue(api, alice, server.id).json()["token"]
    assert caplog.records, "issuing logs a line (with the jti, not the token)"
    for record in caplog.records:
        assert token not in record.getMessage()
    event = AuditEvent.objects.get(action="ide_token_issued", instance_id=server.id)
    assert token not in str(event.data) and event.data["jti"]
    row = IdeToken.objects.get()
    assert token not in str(row.__dict__)
    assert token not in redact_text(f"GET /dev-1/?zlh_ide_token={token} failed")
    assert token not in redact_text(f"opening {token}")


# --- the revoked list the IDE proxy reads ----------------------------------------------------
@pytest.mark.django_db
def test_the_revoked_list_is_for_the_ide_proxy_only(api, platform, alice, ide):
    server = dev_server(alice)
    first, second = (issue(api, alice, server.id).json()["jti"] for _ in range(2))
    assert ide_tokens_revoke(actor=Actor.system("test"), tokens=[first]) == 1
    assert ide_tokens_revoke(actor=Actor.system("test"), tokens=[first]) == 0  # once
    url = "/api/v1/ide/revoked"
    assert api.get(url).status_code == 401
    assert api.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert api.get(url, **alice.headers).status_code == 401  # a user's token opens nothing here
    resp = api.get(url, HTTP_AUTHORIZATION=f"Bearer {ide.IDE_PROXY_TOKEN}")
    assert resp.status_code == 200
    assert [e["jti"] for e in resp.json()["revoked"]] == [first]
    assert second not in resp.content.decode()
    assert AuditEvent.objects.filter(action="ide_tokens_revoked", instance_id=server.id).exists()


# --- through the IDE proxy (the devstack's stand-in, real HTTP) ------------------------------
def _open(url: str) -> tuple[requests.Session, requests.Response]:
    http = requests.Session()
    return http, http.get(url, timeout=10)


def test_the_ide_proxy_opens_the_url_once_and_keeps_a_session(api, stack):
    owner = make_user("ide-owner")
    server = dev_server(owner)
    body = issue(api, owner, server.id).json()
    assert body["url"].startswith(stack.endpoints["ide"]["sim"])
    http, resp = _open(body["url"])
    assert resp.status_code == 200 and f"CT {server.vmid}" in resp.text
    assert resp.history[0].status_code == 303  # exchanged for a session, token dropped
    assert "zlh_ide_token" not in resp.url
    assert http.get(resp.url, timeout=10).status_code == 200  # the session goes on
    _, again = _open(body["url"])
    assert again.status_code == 401 and "already used" in again.text
    assert requests.get(resp.url, timeout=10).status_code == 401  # no session, no IDE


def test_the_ide_proxy_refuses_forged_expired_and_misdirected_tokens(api, stack, settings):
    owner = make_user("ide-owner")
    server, other = dev_server(owner), dev_server(owner, name="other-ide")
    good = issue(api, owner, server.id).json()
    misdirected = good["url"].replace(f"/dev-{server.vmid}/", f"/dev-{other.vmid}/")
    assert _open(misdirected)[1].status_code == 401
    forged = jwt.encode({**jwt.decode(good["token"], options={"verify_signature": False})},
                        "not-the-key-" * 4, algorithm="HS256")
    assert _open(good["url"].replace(good["token"], forged))[1].status_code == 401
    settings.IDE_TOKEN_TTL_SECONDS = -30  # issued already past its expiry (beyond the leeway)
    expired = issue(api, owner, server.id).json()
    resp = _open(expired["url"])[1]
    assert resp.status_code == 401 and "expired" in resp.text.lower()
    reasons = {e["reason"] for e in stack.sim("ide", "GET", "/_sim/ide/events")["events"]
               if e["what"] == "refused"}
    assert reasons == {"InvalidTokenError", "InvalidSignatureError", "ExpiredSignatureError"}


def test_a_revoked_token_is_refused_and_its_session_ends(api, stack, live_server):
    stack.sim("ide", "POST", "/_sim/ide/config",
              json={"revocations_url": f"{live_server.url}/api/v1/ide/revoked", "refresh_s": 0})
    owner = make_user("ide-owner")
    server = dev_server(owner)
    opened = issue(api, owner, server.id).json()
    unused = issue(api, owner, server.id).json()
    http, resp = _open(opened["url"])
    assert resp.status_code == 200
    ide_tokens_revoke(actor=Actor.system("operator"), server=server)
    assert http.get(resp.url, timeout=10).status_code == 401  # the session ends at once
    assert _open(unused["url"])[1].status_code == 401
    fresh = issue(api, owner, server.id).json()  # revoking is per token, not a ban
    assert _open(fresh["url"])[1].status_code == 200
    sim = stack.sim("ide", "GET", "/_sim/ide/events")
    assert sim["read_failures"] == 0
    assert [e["what"] for e in sim["events"]] == ["opened", "session_ended", "refused", "opened"]
    assert all(opened["token"] not in str(e) for e in sim["events"])
