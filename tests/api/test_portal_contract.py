"""What a portal needs beyond the lifecycle: the catalog, how players connect, where the IDE is,
and conditional GETs (ETag / If-None-Match) so polling costs no body while nothing changed."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from lifecycle.catalog import DEV_RUNTIMES, GAME_VERSIONS, PLANS
from lifecycle.models import ContainerInstance
from tests.support.platform import game_body

pytestmark = pytest.mark.django_db


def dev_body(name: str, **over):
    body = {"name": name, "kind": "dev", "plan": "modded", "runtime": "dotnet",
            "runtime_version": "8", "enable_code_server": True}
    body.update(over)
    return body


def create(api, user, body):
    resp = api.post("/api/v1/servers", body, format="json", **user.headers)
    assert resp.status_code == 202, resp.content
    return resp.json()


# --- the catalog ----------------------------------------------------------------------------
def test_the_catalog_lists_what_can_be_ordered_from_the_catalog_tables(api, db):
    resp = api.get("/api/v1/catalog")  # public: a portal shows it before sign-in
    assert resp.status_code == 200
    body = resp.json()
    assert [p["name"] for p in body["plans"]] == list(PLANS)
    vanilla = body["plans"][0]
    assert (vanilla["memory_mb"], vanilla["cores"], vanilla["disk_gb"]) == (2048, 2, 8)
    assert vanilla["backups"] == {"interval_hours": 24, "keep_last": 2, "keep_daily": 7,
                                  "keep_weekly": 4}
    kinds = {k["name"]: k["plans"] for k in body["kinds"]}
    assert kinds == {"game": ["vanilla", "modded", "heavy"], "dev": ["modded", "heavy"]}
    assert {v["name"]: v["versions"] for v in body["variants"]} == {
        k: list(v) for k, v in GAME_VERSIONS.items()}
    runtimes = {r["name"]: r for r in body["runtimes"]}
    assert runtimes.keys() == DEV_RUNTIMES.keys()
    assert runtimes["dotnet"] == {"name": "dotnet", "label": ".NET", "versions": ["8", "9"]}


def test_the_catalog_follows_the_dev_minimum_setting(api, db, settings):
    settings.DEV_MIN_MEMORY_MB = 8192
    kinds = {k["name"]: k["plans"] for k in api.get("/api/v1/catalog").json()["kinds"]}
    assert kinds["dev"] == ["heavy"]


def test_the_catalog_is_cacheable_and_revalidates_with_a_304(api, db):
    first = api.get("/api/v1/catalog")
    etag = first["ETag"]
    assert etag.startswith('"') and "public" in first["Cache-Control"]
    again = api.get("/api/v1/catalog", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == etag
    assert api.get("/api/v1/catalog", HTTP_IF_NONE_MATCH='"stale"').status_code == 200


def test_a_dev_container_on_a_plan_below_the_minimum_is_refused_with_the_plans_it_may_use(
        api, platform, alice):
    resp = api.post("/api/v1/servers", dev_body("small-ide", plan="vanilla"), format="json",
                    **alice.headers)
    assert resp.status_code == 400
    assert resp.json()["fields"]["plan"] == [
        "The vanilla plan (2048 MB) is too small for a dev container; choose one of: modded, "
        "heavy."]
    assert not ContainerInstance.objects.filter(name="small-ide").exists()


# --- how to connect -------------------------------------------------------------------------
def test_a_game_server_says_what_players_type(api, platform, alice, settings):
    settings.EDGE_ZONE = "play.example.net"
    server = create(api, alice, game_body("castle"))
    assert server["address"] == "castle.play.example.net" and server["ide_url"] is None
    detail = api.get(f"/api/v1/servers/{server['id']}", **alice.headers).json()
    assert detail["address"] == "castle.play.example.net"


def test_a_dev_container_with_code_server_has_an_ide_url(api, platform, alice, settings):
    settings.IDE_URL_TEMPLATE = "https://dev-{vmid}.ide.example.net/"
    server = create(api, alice, dev_body("my-ide"))
    assert server["ide_url"] == f"https://dev-{server['vmid']}.ide.example.net/"
    assert server["address"] is None
    plain = create(api, alice, dev_body("no-ide", enable_code_server=False))
    assert plain["ide_url"] is None


def test_a_deleted_server_has_no_address(api, platform, alice):
    server = create(api, alice, game_body("gone"))
    ContainerInstance.objects.filter(pk=server["id"]).update(status="deleted")
    assert api.get(f"/api/v1/servers/{server['id']}", **alice.headers).json()["address"] is None


# --- conditional GET ------------------------------------------------------------------------
def test_a_server_detail_answers_304_until_it_changes(api, platform, alice):
    server = create(api, alice, game_body("polled"))
    url = f"/api/v1/servers/{server['id']}"
    first = api.get(url, **alice.headers)
    etag = first["ETag"]
    assert first["Cache-Control"] == "private, no-cache"
    assert "Authorization" in first["Vary"]
    unchanged = api.get(url, HTTP_IF_NONE_MATCH=etag, **alice.headers)
    assert unchanged.status_code == 304 and unchanged.content == b""
    ContainerInstance.objects.filter(pk=server["id"]).update(status="running")
    changed = api.get(url, HTTP_IF_NONE_MATCH=etag, **alice.headers)
    assert changed.status_code == 200 and changed.json()["status"] == "running"
    assert changed["ETag"] != etag


def test_a_list_answers_304_until_a_server_changes_and_costs_the_same_queries(
        api, platform, alice):
    for name in ("one-a", "two-b", "three-c"):
        create(api, alice, game_body(name))
    first = api.get("/api/v1/servers", **alice.headers)
    etag = first["ETag"]
    with CaptureQueriesContext(connection) as full:
        api.get("/api/v1/servers", **alice.headers)
    with CaptureQueriesContext(connection) as revalidated:
        resp = api.get("/api/v1/servers", HTTP_IF_NONE_MATCH=etag, **alice.headers)
    assert resp.status_code == 304 and resp.content == b""
    assert len(revalidated) == len(full) <= 4
    ContainerInstance.objects.filter(name="two-b").update(status="stopped")
    assert api.get("/api/v1/servers", HTTP_IF_NONE_MATCH=etag,
                   **alice.headers).status_code == 200


def test_another_accounts_etag_reveals_nothing(api, platform, alice, bob):
    server = create(api, alice, game_body("private"))
    etag = api.get(f"/api/v1/servers/{server['id']}", **alice.headers)["ETag"]
    resp = api.get(f"/api/v1/servers/{server['id']}", HTTP_IF_NONE_MATCH=etag, **bob.headers)
    assert resp.status_code == 404
