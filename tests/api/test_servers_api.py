"""The portal API over Django's test client: contract, validation, errors, ownership."""
from __future__ import annotations

import json
import uuid

import pytest

from lifecycle.api.throttling import CreateThrottle
from lifecycle.models import ApiToken, ContainerInstance, Node, Operation
from lifecycle.services.accounts import quota_set
from tests.support.platform import SYSTEM, game_body

pytestmark = pytest.mark.django_db

SERVER_FIELDS = {"id", "name", "slug", "kind", "variant", "version", "plan", "status",
                 "desired_state", "node", "vmid", "ip", "ports", "created_at", "operation"}


def post(api, user, body, key=None, **extra):
    headers = dict(user.headers)
    if key:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    return api.post("/api/v1/servers", body, format="json", **headers, **extra)


def assert_error(resp, status, code):
    assert resp.status_code == status, resp.content
    assert resp["Content-Type"].startswith("application/json")
    body = resp.json()
    assert body["code"] == code and body["message"], body
    return body


def test_create_answers_202_with_the_server_and_its_operation(api, platform, alice):
    resp = post(api, alice, game_body("alpha", variant="fabric", version="1.21.1"), key="k1")
    assert resp.status_code == 202
    body = resp.json()
    assert SERVER_FIELDS <= set(body)
    assert body["status"] == "pending" and body["desired_state"] == "running"
    assert body["node"] in {"pve1", "pve2"} and body["vmid"] == 5000
    assert body["ports"]["game"] >= 30000
    assert body["operation"]["kind"] == "provision" and body["operation"]["state"] == "queued"
    assert resp["Location"] == f"/api/v1/servers/{body['id']}"

    again = post(api, alice, game_body("alpha", variant="fabric", version="1.21.1"), key="k1")
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == body["id"]
    body2 = assert_error(post(api, alice, game_body("alpha"), key="k1"), 422,
                         "idempotency_key_reused")
    assert "Idempotency-Key" in body2["fields"]


def test_dev_container_gets_an_ide_port(api, platform, alice):
    resp = post(api, alice, {"name": "my-ide", "kind": "dev", "plan": "modded",
                             "runtime": "python", "runtime_version": "3.12",
                             "enable_code_server": True})
    assert resp.status_code == 202, resp.content
    assert set(resp.json()["ports"]) == {"ide"}
    assert resp.json()["enable_code_server"] is True


@pytest.mark.parametrize("body,field", [
    (game_body("Upper"), "name"),
    (game_body("ab"), "name"),
    (game_body("x" * 33), "name"),
    (game_body("-lead"), "name"),
    (game_body("trail-"), "name"),
    (game_body("admin"), "name"),
    (game_body("dev-123"), "name"),
    (game_body("a--b"), "name"),
    (game_body("spa ce"), "name"),
    (game_body("ok-name", kind="vm"), "kind"),
    (game_body("ok-name", variant="forge"), "variant"),
    (game_body("ok-name", version="0.1"), "version"),
    (game_body("ok-name", plan="huge"), "plan"),
    (game_body("ok-name", runtime="python"), "runtime"),
    (game_body("ok-name", unknown=1), "unknown"),
    ({"name": "ok-name", "kind": "dev", "plan": "modded", "variant": "paper"}, "variant"),
    ({"name": "ok-name", "kind": "dev", "plan": "modded", "runtime": "cobol",
      "runtime_version": "1"}, "runtime"),
    ({"name": "ok-name", "kind": "dev", "plan": "modded", "runtime": "node",
      "runtime_version": "4"}, "runtime_version"),
    ({"kind": "game"}, "name"),
    (game_body("ok-name", enable_code_server="yes please"), "enable_code_server"),
    (game_body(123), "name"),
])
def test_bad_input_is_400_with_the_field_named(api, platform, alice, body, field):
    resp = post(api, alice, body)
    err = assert_error(resp, 400, "invalid")
    assert field in err["fields"], err
    assert all(isinstance(m, str) and m for m in err["fields"][field])
    assert ContainerInstance.objects.count() == 0


def test_malformed_requests_get_json_errors(api, platform, alice):
    h = alice.headers
    assert_error(api.post("/api/v1/servers", "{not json", content_type="application/json", **h),
                 400, "parse_error")
    assert_error(api.post("/api/v1/servers", "[1, 2]", content_type="application/json", **h),
                 400, "invalid")
    assert_error(api.post("/api/v1/servers", "name=x", content_type="text/plain", **h),
                 415, "unsupported_media_type")
    big = json.dumps(game_body("big", padding="x" * 20_000))
    assert_error(api.post("/api/v1/servers", big, content_type="application/json", **h),
                 413, "payload_too_large")
    assert_error(post(api, alice, game_body("alpha"), key="k" * 200), 400, "invalid")
    assert_error(post(api, alice, game_body("alpha"), key="has space"), 400, "invalid")
    assert_error(api.put("/api/v1/servers", {}, format="json", **h), 405, "method_not_allowed")
    assert ContainerInstance.objects.count() == 0


def test_quota_name_and_capacity_errors(api, platform, alice, bob):
    quota_set(user=alice.user, max_servers=1, actor=SYSTEM)
    assert post(api, alice, game_body("alpha")).status_code == 202
    assert_error(post(api, alice, game_body("beta")), 409, "quota_exceeded")
    assert_error(post(api, bob, game_body("alpha")), 409, "name_taken")
    Node.objects.update(enabled=False)
    body = assert_error(post(api, bob, game_body("gamma")), 503, "capacity_exhausted")
    assert "try again later" in body["message"]


def test_list_is_paginated_and_shows_only_own_servers(api, platform, alice, bob, staff):
    for i in range(3):
        post(api, alice, game_body(f"alice-{i}"))
    post(api, bob, game_body("bob-0"))
    page = api.get("/api/v1/servers?page_size=2", **alice.headers).json()
    assert set(page) == {"count", "next", "previous", "results"}
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert all(s["name"].startswith("alice-") for s in page["results"])
    assert page["results"][0]["operation"]["kind"] == "provision"
    assert api.get("/api/v1/servers", **staff.headers).json()["count"] == 4


def test_list_query_count_does_not_grow_with_servers(api, platform, alice,
                                                      django_assert_max_num_queries):
    for i in range(30):
        post(api, alice, game_body(f"s-{i}"))
    with django_assert_max_num_queries(6):
        resp = api.get("/api/v1/servers?page_size=30", **alice.headers)
    assert len(resp.json()["results"]) == 30


def test_status_operation_and_quota_endpoints(api, platform, alice):
    created = post(api, alice, game_body("alpha")).json()
    status = api.get(f"/api/v1/servers/{created['id']}/status", **alice.headers)
    assert status.status_code == 200
    data = status.json()
    assert data["status"] == "pending" and data["desired_state"] == "running"
    assert data["power"]["state"] == "unknown" and data["operation"]["kind"] == "provision"
    op = api.get(f"/api/v1/operations/{created['operation']['id']}", **alice.headers).json()
    assert op["server"] == created["id"] and op["state"] == "queued"
    quota = api.get("/api/v1/me/quota", **alice.headers).json()
    assert quota["used_servers"] == 1 and quota["used_memory_mb"] == 2048
    assert quota["available_servers"] == quota["max_servers"] - 1


def test_auth_matrix(api, platform, alice, bob, staff):
    created = post(api, alice, game_body("alpha")).json()
    sid, oid = created["id"], created["operation"]["id"]
    urls = ["/api/v1/servers", f"/api/v1/servers/{sid}", f"/api/v1/servers/{sid}/status",
            f"/api/v1/operations/{oid}", "/api/v1/me/quota", "/api/v1/nodes"]
    for url in urls:
        resp = api.get(url)
        assert_error(resp, 401, "not_authenticated")
        assert resp["WWW-Authenticate"].startswith("Bearer")
        assert_error(api.get(url, HTTP_AUTHORIZATION="Bearer nope"), 401,
                     "authentication_failed")
    assert_error(api.post("/api/v1/servers", game_body("x1x"), format="json"), 401,
                 "not_authenticated")
    # Another user's objects do not exist for bob.
    for url in urls[1:4]:
        assert_error(api.get(url, **bob.headers), 404, "not_found")
        assert api.get(url, **alice.headers).status_code == 200
        assert api.get(url, **staff.headers).status_code == 200
    assert_error(api.get(f"/api/v1/servers/{uuid.uuid4()}", **alice.headers), 404, "not_found")
    assert_error(api.get("/api/v1/servers/not-a-uuid", **alice.headers), 404, "not_found")
    # Staff-only endpoints.
    assert_error(api.get("/api/v1/nodes", **alice.headers), 403, "permission_denied")
    nodes = api.get("/api/v1/nodes", **staff.headers).json()
    assert {n["name"] for n in nodes} == {"pve1", "pve2"}
    assert sum(n["servers"] for n in nodes) == 1
    # A revoked token stops working at once.
    ApiToken.objects.filter(user=alice.user).update(revoked_at="2026-01-01T00:00:00Z")
    assert_error(api.get("/api/v1/servers", **alice.headers), 401, "authentication_failed")


def test_tokens_are_stored_hashed(alice):
    token = ApiToken.objects.get(user=alice.user)
    assert alice.token not in (token.key_hash, token.prefix)
    assert len(token.key_hash) == 64 and alice.token.startswith(token.prefix)


def test_create_is_throttled_with_a_json_429(api, platform, alice, monkeypatch):
    monkeypatch.setattr(CreateThrottle, "THROTTLE_RATES", {"create": "2/min"})
    assert post(api, alice, game_body("t-one")).status_code == 202
    assert post(api, alice, game_body("t-two")).status_code == 202
    resp = post(api, alice, game_body("t-three"))
    assert_error(resp, 429, "throttled")
    assert int(resp["Retry-After"]) >= 1
    assert ContainerInstance.objects.count() == 2
    assert Operation.objects.count() == 2


def test_health_schema_and_docs(api, db):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok",
                                                                  "redis": "ok"}
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert {"/api/v1/servers", "/api/v1/servers/{id}", "/api/v1/servers/{id}/status",
            "/api/v1/operations/{id}", "/api/v1/me/quota"} <= set(paths)
    assert api.get("/api/docs/").status_code == 200


def test_readyz_reports_an_unreachable_redis(api, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.REDIS_SOCKET_TIMEOUT = 0.5
    ready = api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "failing"
