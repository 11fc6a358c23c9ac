"""Outside calls counted where they are made, in many processes at once: two workers (one
prefork with two children, one with threads) provision servers with METRICS_DIR set, and
/metrics adds up every process's counts (prometheus_client's multi-process mode) to exactly the
number of calls the Proxmox stand-in received. Labels stay bounded (no VMID, node name or token
in them)."""
from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import endpoint_class, outcome_class
from lifecycle.services.servers import server_create
from tests.support.platform import game_body
from tests.support.stack import wait_status
from tests.support.workers import start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]

TOKEN = "metrics-" + "c" * 32


def _samples(text: str) -> list[tuple[str, dict, float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples]


def test_every_process_counts_into_one_total(stack, worker_env, tmp_path, owner, settings):
    metrics_dir = tmp_path / "metrics"
    env = worker_env(METRICS_DIR=str(metrics_dir))
    workers = [start_worker(env, tmp_path, name="prefork", concurrency=2),
               start_worker(env, tmp_path, name="threads", concurrency=4, pool="threads")]
    try:
        stack.pve("DELETE", "/_sim/calls")
        ids = [server_create(owner=owner.user, data=game_body(f"counted-{i}")).instance.id
               for i in range(6)]
        for server_id in ids:
            wait_status(server_id, "running", timeout=120)
    finally:
        for worker in workers:
            worker.stop()
    calls = stack.pve("GET", "/_sim/calls?last=100000")["calls"]
    pve_calls = [c for c in calls if c[1].startswith("/api2/")]
    files = sorted(p.name for p in metrics_dir.iterdir())
    assert len({name.rsplit("_", 1)[-1] for name in files}) >= 2, files  # several processes

    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_DIR = str(metrics_dir)
    resp = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 200
    samples = _samples(resp.content.decode())
    counted = [(labels, value) for name, labels, value in samples
               if name == "zlh_outside_calls_total" and labels["system"] == "proxmox"]
    assert sum(v for _, v in counted) == len(pve_calls)
    timed = [v for name, labels, v in samples
             if name == "zlh_outside_call_seconds_count" and labels["system"] == "proxmox"]
    assert timed == [len(pve_calls)]
    endpoints = {labels["endpoint"] for labels, _ in counted}
    assert "GET /api2/json/nodes/{}/lxc/{}/status/current" in endpoints
    assert "POST /api2/json/nodes/{}/lxc" in endpoints
    assert any(labels["system"] == "agent" and value > 0 for name, labels, value in samples
               if name == "zlh_outside_calls_total")
    # No VMID or node name in any label.
    vmids = {str(c[1].split("/lxc/")[1].split("/")[0]) for c in pve_calls if "/lxc/" in c[1]
             and c[1].split("/lxc/")[1][:1].isdigit()}
    assert vmids and not any(v in labels["endpoint"] for labels, _ in counted for v in vmids)
    assert not any("pve1" in labels["endpoint"] for labels, _ in counted)


def test_endpoint_and_outcome_classes_are_bounded():
    assert endpoint_class("get", "/api2/json/nodes/pve1/lxc/5001/config?x=1") == \
        "GET /api2/json/nodes/{}/lxc/{}/config"
    assert endpoint_class("POST", "/api/v10/webhooks/123456/" + "T" * 68) == \
        "POST /api/v10/webhooks/{}/{}"
    assert endpoint_class("GET", "/client/v4/zones/" + "a" * 32 + "/dns_records") == \
        "GET /client/v4/zones/{}/dns_records"
    assert endpoint_class("GET", "/api/v10/x" + "9" * 40) == "GET /api/v10/{}"
    assert outcome_class(204) == "2xx" and outcome_class(503) == "5xx"
    assert outcome_class(None, TimeoutError()) == "timeout"
    assert outcome_class(None, ConnectionError()) == "error"
