"""deploy/observability: the alert rules and the scrape configuration validate (promtool, from
Debian's prometheus package, installed by deploy/test-deps.sh), the rules and the Grafana
dashboard name only metrics /metrics exposes, and every rule fires from its condition: the test
makes the condition real (in the database, the broker or the settings), scrapes /metrics
before and after, and hands the two scrapes to `promtool test rules` as the history of every
series, expecting exactly that alert and no other."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.db.models import F
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from lifecycle.choices import OperationKind, OperationState
from lifecycle.models import Node
from notifications.models import Notification
from reconciler.models import ControllerRun
from tests.factories import ContainerInstanceFactory, ControllerRunFactory, OperationFactory
from tests.support import broker

pytestmark = pytest.mark.django_db

HERE = Path(__file__).resolve().parents[2] / "deploy" / "observability"
RULES = HERE / "zlh-alerts.yml"
TOKEN = "metrics-" + "r" * 32
PROMTOOL = shutil.which("promtool")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool is missing: deploy/test-deps.sh installs Debian's prometheus"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def _scrape() -> str:
    resp = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert resp.status_code == 200
    return resp.content.decode()


def _samples(text: str) -> dict[str, float]:
    """{'name{a="b",…}': value} of every sample."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


@pytest.fixture
def healthy(platform, settings):
    """A fleet with nothing wrong: a cycle just completed, Redis up, nodes with room."""
    settings.METRICS_TOKEN = TOKEN
    ContainerInstanceFactory.create_batch(2)
    ControllerRunFactory()
    return platform


def test_the_rules_and_the_scrape_config_validate():
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout
    result = _promtool("check", "config", "--syntax-only", str(HERE / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_and_dashboard_name_only_metrics_that_exist(healthy):
    # Every family appears once the fleet has a little of everything.
    OperationFactory(instance=ContainerInstanceFactory(), kind=OperationKind.PROVISION)
    text = _scrape()
    exposed = {s.split("{")[0] for s in _samples(text)}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gaugehistogram": ("_bucket", "_gcount", "_gsum")}
    for family in text_string_to_metric_families(text):
        exposed |= {family.name, *(family.name + s for s in suffixes.get(family.type, ()))}
    named_in_rules = {n for rule in _rules() for n in re.findall(r"\bzlh_\w+", rule["expr"])}
    dashboard = json.loads((HERE / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named_in_dashboard = {n for e in exprs for n in re.findall(r"\bzlh_\w+", e)}
    assert named_in_rules and named_in_dashboard
    assert named_in_rules <= exposed, named_in_rules - exposed
    assert named_in_dashboard <= exposed, named_in_dashboard - exposed
    assert len(dashboard["panels"]) >= 12 and dashboard["uid"] == "zlh-control-plane"


# --- each rule from its condition --------------------------------------------------------------
def _queue(settings):
    broker.client().rpush("lifecycle", *[b"{}"] * 150)
    return {"queue": "lifecycle"}


def _slow_cycle(settings):
    run = ControllerRunFactory()
    ControllerRun.objects.filter(pk=run.pk).update(finished_at=F("started_at")
                                                   + timedelta(seconds=95))
    return {}


def _full_node(settings):
    Node.objects.filter(name="pve2").update(allocated_memory_mb=F("memory_mb") * 95 / 100)
    return {"node": "pve2"}


def _stuck_outbox(settings):
    n = Notification.objects.create(channel="critical", title="disk full")
    Notification.objects.filter(pk=n.pk).update(created_at=timezone.now() - timedelta(minutes=20))
    return {"channel": "critical"}


def _failed_provisions(settings):
    for _ in range(3):
        OperationFactory(instance=ContainerInstanceFactory(), kind=OperationKind.PROVISION,
                         state=OperationState.FAILED)
    return {}


def _no_cycles(settings):
    long_ago = timezone.now() - timedelta(minutes=10)
    ControllerRun.objects.update(started_at=long_ago, finished_at=long_ago + timedelta(seconds=5))
    return {}


def _broker_down(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:9/0"
    return {}


CONDITIONS = {
    "ZlhQueueBackingUp": _queue,
    "ZlhReconcilerCycleOverrunning": _slow_cycle,
    "ZlhNodeAlmostFull": _full_node,
    "ZlhNotificationOutboxStuck": _stuck_outbox,
    "ZlhProvisioningFailing": _failed_provisions,
    "ZlhReconcilerNotRunning": _no_cycles,
    "ZlhBrokerDown": _broker_down,
    "ZlhMetricsDown": None,  # Prometheus' own `up`: the target stops answering
}


def test_every_rule_has_a_condition_here():
    assert {rule["alert"] for rule in _rules()} == set(CONDITIONS)


@pytest.mark.parametrize("alert", sorted(CONDITIONS))
def test_each_rule_fires_from_its_condition_and_no_other(alert, healthy, settings, tmp_path):
    before = _samples(_scrape())
    make = CONDITIONS[alert]
    labels = make(settings) if make else {"job": "zlh"}
    after = _samples(_scrape())
    series = []
    for name in sorted(set(before) | set(after)):
        old = before.get(name)
        new = after.get(name)
        values = (f"{old:g}x29 " if old is not None else "_x29 ") + \
            (f"{new:g}x30" if new is not None else "_x30")
        series.append({"series": name, "values": values})
    series.append({"series": 'up{job="zlh"}', "values": "1x29 0x30" if make is None
                   else "1x59"})
    # The rules without their annotations (templated text, checked by `check rules`): promtool
    # compares annotations too, and the expected alerts say labels only.
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    severity = next(r["labels"]["severity"] for r in _rules() if r["alert"] == alert)
    checks = [{"eval_time": "55m", "alertname": name,
               "exp_alerts": ([{"exp_labels": {**labels, "severity": severity}}]
                              if name == alert else [])}
              for name in sorted(CONDITIONS)]
    # Before the condition (at 25 m) nothing fires: the fleet was healthy.
    checks += [{"eval_time": "25m", "alertname": name, "exp_alerts": []}
               for name in sorted(CONDITIONS)]
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}]}))
    result = _promtool("test", "rules", str(tmp_path / "test.yml"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
