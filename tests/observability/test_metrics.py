"""GET /metrics: protected, in Prometheus' text format, counted from the database so every
process gives the same totals, with a fixed number of queries whatever the fleet's size; and
scraped over HTTP from the running API after real operations, its counts moving with them."""
from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from lifecycle.choices import WAITING_FOR_READY, OperationKind, OperationState
from lifecycle.services.servers import server_create
from tests.factories import (
    BreakerFactory,
    ContainerInstanceFactory,
    ControllerRunFactory,
    FindingFactory,
    NotificationFactory,
    OperationFactory,
    RepairEventFactory,
)
from tests.support.platform import game_body
from tests.support.stack import wait_status

TOKEN = "metrics-" + "x" * 32


def _scrape(client: Client) -> dict[str, dict[tuple, float]]:
    resp = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 200, resp.content[:300]
    assert resp["Content-Type"].startswith("text/plain; version=")
    return _parse(resp.content.decode())


def _parse(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _value(metrics, name, **labels) -> float:
    return metrics.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


@pytest.mark.django_db
def test_metrics_are_off_without_a_token_and_refused_without_it(settings):
    client = Client()
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404
    settings.METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 401
    for wrong in (f"Bearer {TOKEN}x", TOKEN, f"bearer {TOKEN[:-1]}", "Basic abc"):
        resp = client.get("/metrics", HTTP_AUTHORIZATION=wrong)
        assert resp.status_code == 401 and TOKEN not in resp.content.decode()
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


@pytest.mark.django_db
def test_the_fleet_in_numbers(platform, alice, settings):
    settings.METRICS_TOKEN = TOKEN
    running = ContainerInstanceFactory.create_batch(3, owner=alice.user)
    stopped = ContainerInstanceFactory(owner=alice.user, status="stopped")
    dev = ContainerInstanceFactory(owner=alice.user, kind="dev", plan="modded")
    now = timezone.now()
    for i, server in enumerate(running):
        OperationFactory(instance=server, kind=OperationKind.PROVISION, attempt=1 + i,
                         created_at=now, started_at=now + timedelta(seconds=2),
                         finished_at=now + timedelta(seconds=2 + 40 * (i + 1)))
    OperationFactory(instance=stopped, kind=OperationKind.STOP, state=OperationState.FAILED,
                     attempt=1, started_at=now, finished_at=now + timedelta(seconds=3))
    OperationFactory(instance=running[0], kind=OperationKind.RESTART,
                     state=OperationState.QUEUED)
    # Waiting without a worker: one for its game, one for a node's place.
    OperationFactory(instance=running[1], kind=OperationKind.RESTART,
                     state=OperationState.QUEUED, waiting_for=WAITING_FOR_READY)
    OperationFactory(instance=dev, kind=OperationKind.PROVISION,
                     state=OperationState.QUEUED, waiting_for="pve1/create")
    FindingFactory.create_batch(2, instance=running[1])
    RepairEventFactory(instance=running[1], state="failed")
    BreakerFactory(action="start_container", state="open")
    ControllerRunFactory(started_at=now - timedelta(seconds=30))
    NotificationFactory.create_batch(2, channel="warning", state="pending")
    sent = NotificationFactory(channel="lifecycle")
    type(sent).objects.filter(pk=sent.pk).update(sent_at=sent.created_at + timedelta(seconds=3))

    metrics = _scrape(Client())
    assert _value(metrics, "zlh_servers", status="running", kind="game") == 3
    assert _value(metrics, "zlh_servers", status="stopped", kind="game") == 1
    assert _value(metrics, "zlh_servers", status="running", kind="dev") == 1
    assert _value(metrics, "zlh_operations_total", kind="provision", outcome="succeeded") == 3
    assert _value(metrics, "zlh_operations_total", kind="stop", outcome="failed") == 1
    assert _value(metrics, "zlh_operation_retries_total", kind="provision") == 0 + 1 + 2
    assert _value(metrics, "zlh_operations_in_flight", kind="restart", state="queued") == 2
    assert _value(metrics, "zlh_operations_waiting", kind="restart", waiting_for="ready") == 1
    assert _value(metrics, "zlh_operations_waiting", kind="provision",
                  waiting_for="place") == 1
    # Run times 40, 80, 120 s: the cumulative buckets and the sum say so.
    assert _value(metrics, "zlh_operation_run_seconds_bucket", kind="provision", le="60.0") == 1
    assert _value(metrics, "zlh_operation_run_seconds_bucket", kind="provision", le="120.0") == 3
    assert _value(metrics, "zlh_operation_run_seconds_count", kind="provision") == 3
    assert _value(metrics, "zlh_operation_run_seconds_sum", kind="provision") == \
        pytest.approx(240, abs=0.01)
    assert _value(metrics, "zlh_findings_open", type="status_drift") == 2
    assert _value(metrics, "zlh_repairs_total", action="sync_status", outcome="failed") == 1
    assert _value(metrics, "zlh_breaker_open", action="start_container", state="open") == 1
    # Mine and the repair's own run.
    assert _value(metrics, "zlh_reconciler_cycles_total", outcome="completed") == 2
    assert _value(metrics, "zlh_reconciler_last_cycle_age_seconds") >= 0
    assert _value(metrics, "zlh_reconciler_cycle_seconds_bucket", le="60.0") == 2
    assert _value(metrics, "zlh_reconciler_cycle_seconds_count") == 2
    assert _value(metrics, "zlh_notifications_total", channel="warning", state="pending") == 2
    assert _value(metrics, "zlh_notifications_oldest_pending_seconds", channel="warning") >= 0
    assert _value(metrics, "zlh_notification_delivery_seconds_bucket", channel="lifecycle",
                  le="1.0") == 0
    assert _value(metrics, "zlh_notification_delivery_seconds_bucket", channel="lifecycle",
                  le="5.0") == 1
    assert _value(metrics, "zlh_broker_up") == 1
    assert _value(metrics, "zlh_queue_depth", queue="lifecycle") >= 0
    for node in ("pve1", "pve2"):
        assert _value(metrics, "zlh_node_memory_mb", node=node, kind="capacity") == 4_000_000
        assert _value(metrics, "zlh_node_free_ips", node=node) > 0
    # Running servers whose agents never sent a heartbeat: only in the +Inf bucket.
    assert _value(metrics, "zlh_agent_heartbeat_age_seconds_bucket", le="+Inf") == 4
    assert _value(metrics, "zlh_agent_heartbeat_age_seconds_bucket", le="30.0") == 0
    # No server id in any label: label values are bounded sets.
    ids = {str(s.id) for s in running}
    assert not any(v in ids for samples in metrics.values() for labels in samples
                   for _k, v in labels)


@pytest.mark.django_db
def test_a_scrape_costs_the_same_queries_at_any_fleet_size(platform, alice, settings):
    settings.METRICS_TOKEN = TOKEN
    client = Client()

    def scrape_queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            _scrape(client)
        return len(ctx.captured_queries)

    for server in ContainerInstanceFactory.create_batch(3, owner=alice.user):
        OperationFactory(instance=server, kind=OperationKind.PROVISION)
    small = scrape_queries()
    for server in ContainerInstanceFactory.create_batch(40, owner=alice.user):
        OperationFactory(instance=server, kind=OperationKind.PROVISION)
        FindingFactory(instance=server)
        NotificationFactory(subject=str(server.id))
    assert scrape_queries() == small <= 25


def test_the_running_api_counts_what_the_workers_did(stack, worker, owner, live_server,
                                                     settings):
    settings.METRICS_TOKEN = TOKEN

    def scrape():
        resp = requests.get(f"{live_server.url}/metrics", timeout=10,
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 200
        return _parse(resp.text)

    before = scrape()
    for name in ("metered-a", "metered-b"):
        wait_status(server_create(owner=owner.user, data=game_body(name)).instance.id,
                    "running", timeout=90)
    for _ in range(3):
        requests.get(f"{live_server.url}/api/v1/servers", timeout=10,
                     headers={"Authorization": f"Bearer {owner.token}"})
    after = scrape()
    # The request side: by URL pattern name, never the path.
    listed = {"view": "server-list", "method": "GET", "status": "2xx"}
    assert _value(after, "zlh_http_requests_total", **listed) >= \
        _value(before, "zlh_http_requests_total", **listed) + 3
    assert _value(after, "zlh_http_request_seconds_count", view="server-list") >= 3
    assert not any(label == "view" and "/" in value for samples in after.values()
                   for labels in samples for label, value in labels)
    key = {"kind": "provision", "outcome": "succeeded"}
    assert _value(after, "zlh_operations_total", **key) == \
        _value(before, "zlh_operations_total", **key) + 2
    assert _value(after, "zlh_operation_run_seconds_count", kind="provision") == \
        _value(before, "zlh_operation_run_seconds_count", kind="provision") + 2
    assert _value(after, "zlh_servers", status="running", kind="game") == \
        _value(before, "zlh_servers", status="running", kind="game") + 2
    assert _value(after, "zlh_node_servers", node="pve1") + \
        _value(after, "zlh_node_servers", node="pve2") >= 2
