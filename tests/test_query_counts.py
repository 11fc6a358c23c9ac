"""Query-count baselines for every admin changelist and every list endpoint of the portal API.

Each page is requested once to warm caches, then again while its queries are counted; the count
must equal the baseline in `tests/query_counts/<app_label>.json` exactly. Every page is seeded
with several related rows, so an N+1 (a query per row) changes the count and fails here. A
change that is intended (a new column, a dropped select_related made good elsewhere) is
recorded by regenerating the baselines:

    .venv/bin/python -m pytest tests/test_query_counts.py --update-query-counts

Admin entries are keyed `<app_label>.<model_name>` of the registered model (the server admin is
registered by reconciler/admin.py, its entry is still `lifecycle.containerinstance`); every
registered changelist must have one, so a newly registered admin cannot go unmeasured.
"""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone as dt_timezone
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from rest_framework.test import APIClient

from lifecycle.choices import InstanceStatus, OperationKind, OperationState
from lifecycle.models import Adoption, Backup, IdeToken, NodeTaskSlot
from lifecycle.services.accounts import api_token_create
from lifecycle.services.audit import Actor
from tests.factories import (
    AccountQuotaFactory,
    AlertStateFactory,
    AllocationFactory,
    ApiTokenFactory,
    BreakerFactory,
    ChannelStateFactory,
    ControllerLeaseFactory,
    ControllerRunFactory,
    FindingFactory,
    NodeFactory,
    NotificationFactory,
    OperationFactory,
    UserFactory,
    pools_for,
    seed_server,
)

BASELINE_DIR = Path(__file__).parent / "query_counts"
REGENERATE = ".venv/bin/python -m pytest tests/test_query_counts.py --update-query-counts"
ADMIN, API = "admin_changelist", "api"
#: Rows each changelist must show, so that a query per row would show in the count.
MIN_ROWS = 2
SERVERS_PER_USER = 5

SYSTEM = Actor.system("tests")


def model_key(model) -> str:
    return f"{model._meta.app_label}.{model._meta.model_name}"


REGISTERED = sorted(admin.site._registry, key=model_key)


# --- the baseline files --------------------------------------------------------------------------
class Baselines:
    """tests/query_counts/<app>.json: {"admin_changelist": {key: n}, "api": {key: n}}."""

    def __init__(self, directory: Path, *, update: bool) -> None:
        self.directory = directory
        self.update = update
        self.data: dict[str, dict[str, dict[str, int]]] = {}
        for path in sorted(directory.glob("*.json")):
            self.data[path.stem] = json.loads(path.read_text())
        self.measured: dict[tuple[str, str, str], int] = {}

    def expected(self, app: str, section: str, key: str) -> int | None:
        return self.data.get(app, {}).get(section, {}).get(key)

    def keys(self, section: str) -> set[str]:
        return {key for sections in self.data.values() for key in sections.get(section, {})}

    def record(self, app: str, section: str, key: str, count: int) -> None:
        self.measured[(app, section, key)] = count

    def write(self) -> None:
        merged: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
        for app, sections in self.data.items():
            for section, entries in sections.items():
                merged[app][section] = dict(entries)
        for (app, section, key), count in self.measured.items():
            merged[app].setdefault(section, {})[key] = count
        # Changelists no longer registered are dropped.
        registered = {model_key(m) for m in admin.site._registry}
        for sections in merged.values():
            if ADMIN in sections:
                sections[ADMIN] = {k: v for k, v in sections[ADMIN].items() if k in registered}
        self.directory.mkdir(parents=True, exist_ok=True)
        for app, sections in merged.items():
            sections = {s: dict(sorted(e.items())) for s, e in sorted(sections.items()) if e}
            path = self.directory / f"{app}.json"
            if sections:
                path.write_text(json.dumps(sections, indent=2) + "\n")
            elif path.exists():
                path.unlink()


@pytest.fixture(scope="session")
def baselines(request):
    store = Baselines(BASELINE_DIR, update=request.config.getoption("--update-query-counts"))
    yield store
    if store.update and store.measured:
        store.write()


def check(baselines: Baselines, app: str, section: str, key: str,
          ctx: CaptureQueriesContext) -> None:
    actual = len(ctx.captured_queries)
    if baselines.update:
        baselines.record(app, section, key, actual)
        return
    page = f"{section} {key!r}"
    where = f"tests/query_counts/{app}.json [{section!r}][{key!r}]"
    expected = baselines.expected(app, section, key)
    queries = "\n".join(f"  {i + 1:3}. {q['sql'][:300]}"
                        for i, q in enumerate(ctx.captured_queries))
    if expected is None:
        pytest.fail(f"{page}: no query-count baseline at {where}; it ran {actual} queries now.\n"
                    f"Record it with:\n  {REGENERATE}\nQueries:\n{queries}", pytrace=False)
    if actual != expected:
        pytest.fail(
            f"{page}: expected {expected} queries (baseline {where}), got {actual} "
            f"({actual - expected:+d}).\nA growing count with more rows is an N+1. If the change "
            f"is intended, regenerate the baselines with:\n  {REGENERATE}\nQueries:\n{queries}",
            pytrace=False)


# --- seeding -------------------------------------------------------------------------------------
@pytest.fixture
def admin_user(db):
    """pytest-django's admin_client logs this superuser in (force_login). Overridden so that no
    password is hashed (PBKDF2 costs ~0.3 s per test); the pages are the same."""
    return UserFactory(username="admin", superuser=True)


# --- seeding: the rows every page shows ----------------------------------------------------------
@pytest.fixture
def seeded(db, admin_user) -> dict[str, Any]:
    """Users with API tokens, two nodes with pools, SERVERS_PER_USER servers for each of two
    users (each with allocations, operations, findings, repairs, audit rows, notifications),
    and rows for every other registered admin."""
    alice_token, alice_raw = api_token_create(username="alice", actor=SYSTEM)
    staff_token, staff_raw = api_token_create(username="operator", staff=True, actor=SYSTEM)
    alice, staff = alice_token.user, staff_token.user
    bob = UserFactory(username="bob")
    AccountQuotaFactory(user=bob)
    ApiTokenFactory.create_batch(2, user=bob)

    nodes = [NodeFactory(name="pve-q1"), NodeFactory(name="pve-q2")]
    for node in nodes:
        pools = pools_for(node)
        for i in range(3):
            AllocationFactory(pool=pools["ip"], value=int(1e9) + node.pk * 1000 + i)
            AllocationFactory(pool=pools["port"], value=31000 + i)
    statuses = [InstanceStatus.RUNNING, InstanceStatus.STOPPED, InstanceStatus.RUNNING,
                InstanceStatus.FAILED, InstanceStatus.DELETED]
    servers = []
    for owner in (alice, bob):
        for i in range(SERVERS_PER_USER):
            seeded_server = seed_server(owner=owner, node=nodes[i % 2], status=statuses[i],
                                        operations=2, findings=2, repairs=2, audit=2,
                                        notifications=2)
            servers.append(seeded_server.server)
    # Some servers are busy: an active operation holds their slot.
    for server in servers[:2]:
        OperationFactory(instance=server, kind=OperationKind.RESTART,
                         state=OperationState.QUEUED)
    FindingFactory.create_batch(2, instance=None, finding_type="orphan_container",
                                action="destroy_orphan")
    ControllerRunFactory.create_batch(3)
    for action in ("sync_status", "start_container", "edge_republish"):
        BreakerFactory(action=action)
    ControllerLeaseFactory(name="reconciler")
    ControllerLeaseFactory(name="spare")
    for channel in ("critical", "warning", "info", "lifecycle"):
        ChannelStateFactory(channel=channel)
    AlertStateFactory.create_batch(3)
    NotificationFactory.create_batch(3, channel="critical")
    for name in ("operators", "support", "auditors"):
        Group.objects.create(name=name)
    # Backups: three of each of alice's first server (one being made, one ready, one failed)
    # and one ready of every other server.
    for i, server in enumerate(servers):
        states = ["creating", "ready", "failed"] if i == 0 else ["ready"]
        for j, state in enumerate(states):
            Backup.objects.create(
                instance=server, owner=server.owner, kind="manual", state=state,
                node=server.node.name, storage="pbs", vmid=server.vmid,
                volid=f"pbs:backup/vzdump-lxc-{server.vmid}-2026_01_0{j + 1}-00_00_00.tar.zst"
                if state == "ready" else None,
                size_bytes=64 * 1024**2 if state == "ready" else None)
    # Node task places: two held, one free.
    for i, holder in enumerate(("op-a", "op-b", "")):
        NodeTaskSlot.objects.create(node="pve1", kind="create", slot=i, holder=holder)
    # Adoptions: the journal of three servers taken over.
    for i, server in enumerate(servers[:3]):
        Adoption.objects.create(instance=server, vmid=server.vmid, node=server.node.name,
                                state="done" if i else "tagged", original_tags="old-api",
                                edge=[{"source": "cloudflare", "kind": "mark"}])
    # IDE tokens: three issued, one revoked.
    from datetime import timedelta

    from django.utils import timezone
    for i, server in enumerate(servers[:3]):
        IdeToken.objects.create(instance=server, user=server.owner, created_at=timezone.now(),
                                expires_at=timezone.now() + timedelta(minutes=5),
                                revoked_at=timezone.now() if i == 0 else None,
                                revoked_by="operator" if i == 0 else "")
    # Schedules: three on alice's first server, one on each other server; two time zones set.
    from datetime import time as dt_time

    from lifecycle.services.schedules import profile_set_time_zone, schedule_create
    profile_set_time_zone(actor=SYSTEM, user=alice, time_zone="Europe/Berlin")
    profile_set_time_zone(actor=SYSTEM, user=bob, time_zone="America/New_York")
    for i, server in enumerate(s for s in servers if s.status != InstanceStatus.DELETED):
        for hour in ((4, 5, 6) if i == 0 else (3,)):
            schedule_create(actor=SYSTEM, server=server, action="restart",
                            time_of_day=dt_time(hour, 0))
    _seed_beat()
    return {"alice": alice, "alice_token": alice_raw, "staff": staff, "staff_token": staff_raw,
            "bob": bob, "servers": servers, "nodes": nodes,
            "alice_server": str(servers[0].id)}


def _seed_beat() -> None:
    intervals = [IntervalSchedule.objects.get_or_create(every=s, period="seconds")[0]
                 for s in (7, 11, 13)]
    crontabs = [CrontabSchedule.objects.create(minute=str(m), hour="*") for m in (1, 2, 3)]
    solars = [SolarSchedule.objects.create(event="sunrise", latitude=50 + i, longitude=10)
              for i in range(3)]
    when = datetime(2030, 1, 1, tzinfo=dt_timezone.utc)
    clocked = [ClockedSchedule.objects.create(clocked_time=when) for _ in range(3)]
    for i, schedule in enumerate(intervals + crontabs + solars + clocked):
        kind = {IntervalSchedule: "interval", CrontabSchedule: "crontab",
                SolarSchedule: "solar", ClockedSchedule: "clocked"}[type(schedule)]
        PeriodicTask.objects.create(name=f"tests: task {i}", task="tests.noop",
                                    one_off=kind == "clocked", **{kind: schedule})


# --- the admin -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", REGISTERED, ids=model_key)
def test_admin_changelist_query_count(model, seeded, admin_client, baselines):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    warm = admin_client.get(url)
    assert warm.status_code == 200, warm.content[:500]
    rows = len(warm.context["cl"].result_list)
    assert rows >= MIN_ROWS, (
        f"{model_key(model)}: the changelist shows {rows} rows; seed at least {MIN_ROWS} in "
        "the `seeded` fixture so that an N+1 would show")

    with CaptureQueriesContext(connection) as ctx:
        resp = admin_client.get(url)
    assert resp.status_code == 200
    check(baselines, model._meta.app_label, ADMIN, model_key(model), ctx)


def test_every_registered_changelist_has_a_baseline(baselines):
    if baselines.update:
        pytest.skip("updating the baselines")
    registered = {model_key(m) for m in admin.site._registry}
    recorded = baselines.keys(ADMIN)
    missing, stale = sorted(registered - recorded), sorted(recorded - registered)
    assert not missing and not stale, (
        f"admin changelists without a query-count baseline: {missing}; baselines of admins no "
        f"longer registered: {stale}. Regenerate with:\n  {REGENERATE}")
    for model in admin.site._registry:  # each sits in its own app's file
        assert baselines.expected(model._meta.app_label, ADMIN, model_key(model)) is not None


def test_baselines_are_well_formed():
    for path in sorted(BASELINE_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        assert set(data) <= {ADMIN, API}, path
        for section, entries in data.items():
            assert entries, f"{path}: empty section {section}"
            for key, count in entries.items():
                assert isinstance(count, int) and count > 0, (path, key)
                if section == ADMIN:
                    assert key.startswith(path.stem + "."), (path, key)


# --- the portal API ------------------------------------------------------------------------------
API_PAGES = [
    # (key, path, who, rows in the answer: results of a page, or entries of a list)
    ("GET /api/v1/servers as user", "/api/v1/servers", "alice", SERVERS_PER_USER),
    ("GET /api/v1/servers as staff", "/api/v1/servers", "staff", 2 * SERVERS_PER_USER),
    ("GET /api/v1/nodes as staff", "/api/v1/nodes", "staff", 2),
    ("GET /api/v1/me/quota as user", "/api/v1/me/quota", "alice", None),
    ("GET /api/v1/servers/{id}/backups as user", "/api/v1/servers/{alice_server}/backups",
     "alice", 3),
    ("GET /api/v1/servers/{id}/schedules as user", "/api/v1/servers/{alice_server}/schedules",
     "alice", 3),
]


@pytest.mark.parametrize("key,path,who,rows", API_PAGES, ids=[p[0] for p in API_PAGES])
def test_api_list_query_count(key, path, who, rows, seeded, baselines):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {seeded[who + '_token']}")
    path = path.format(alice_server=seeded["alice_server"])
    warm = api.get(path)
    assert warm.status_code == 200, warm.content[:500]
    body = warm.json()
    if rows is not None:
        listed = body["results"] if isinstance(body, dict) else body
        assert len(listed) == rows, body
    else:
        assert body["used_servers"] == SERVERS_PER_USER, body

    with CaptureQueriesContext(connection) as ctx:
        resp = api.get(path)
    assert resp.status_code == 200
    assert resp.json() == body
    check(baselines, "lifecycle", API, key, ctx)
