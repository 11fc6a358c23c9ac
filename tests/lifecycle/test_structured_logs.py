"""Structured logs: with LOG_FORMAT=json every line a worker writes is one JSON object, and the
lines written for an operation carry its operation id, server id, kind, attempt and task; the
API binds a request id to its lines and answers it as X-Request-ID. A secret planted where it
would be logged (in Proxmox's error message) appears in no line, JSON or plain."""
from __future__ import annotations

import json
import logging

import pytest
from rest_framework.test import APIClient

from core.logs import JsonFormatter, PlainFormatter, bind
from core.redaction import RedactingFilter
from lifecycle.models import Operation
from lifecycle.services.servers import server_create
from tests.support.platform import game_body
from tests.support.stack import wait_status
from tests.support.workers import start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]

SECRET = "sk_live_" + "Planted4242SecretXyZ"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_provision_logs_json_lines_bound_to_its_operation(stack, worker_env, tmp_path, owner):
    worker = start_worker(worker_env(LOG_FORMAT="json"), tmp_path, concurrency=2)
    try:
        # Proxmox refuses the first create with our secret in its message: the retry logs it.
        stack.pve("POST", "/_sim/faults", json={
            "method": "POST", "path": r"/lxc$", "count": 1, "status": 500,
            "body": {"errors": {"hostname": f"token={SECRET} refused"}, "data": None}})
        result = server_create(owner=owner.user, data=game_body("logged"))
        wait_status(result.instance.id, "running", timeout=90)
        text = worker.log()
    finally:
        worker.stop()
    op = Operation.objects.get(pk=result.operation.id)
    assert op.attempt >= 2  # the fault was hit and retried
    assert SECRET not in text
    records = []
    for line in _lines(text):
        if line.startswith("{"):
            records.append(json.loads(line))  # every logged line parses
    mine = [r for r in records if r.get("operation_id") == str(op.id)]
    assert mine, text[-3000:]
    for record in mine:
        assert record["server_id"] == str(result.instance.id)
        assert record["kind"] == "provision" and record["task"] == "lifecycle.execute_operation"
        assert record["attempt"] in {"1", "2", "3"} and record["task_id"] and record["worker"]
        assert {"ts", "level", "logger", "message"} <= set(record)
    assert {r["attempt"] for r in mine} >= {"1", "2"}
    # The worker is the child process that ran it (forked after import), not the parent.
    parent = f":{worker.pid}"
    assert all(not r["worker"].endswith(parent) for r in mine), {r["worker"] for r in mine}
    assert any("retrying" in r["message"] and "***" in r["message"] for r in mine), mine
    # Lines of other tasks (the notifier, the sweeper) carry their task, not this operation.
    assert all(r.get("operation_id") in (None, str(op.id)) for r in records)


def test_the_api_binds_a_request_id_and_answers_it(stack, owner, caplog):
    api = APIClient()
    resp = api.get("/api/v1/servers", **owner.headers)
    given = resp["X-Request-ID"]
    assert len(given) == 32 and given.isalnum()
    resp = api.get("/api/v1/servers", HTTP_X_REQUEST_ID="proxy-abc.123", **owner.headers)
    assert resp["X-Request-ID"] == "proxy-abc.123"
    for bad in ("x" * 65, "a b", "<script>", f"token={SECRET}"):
        resp = api.get("/api/v1/servers", HTTP_X_REQUEST_ID=bad, **owner.headers)
        assert resp["X-Request-ID"] != bad and len(resp["X-Request-ID"]) == 32
    # A line logged while a request is handled carries its id (a 404 is logged by Django).
    with caplog.at_level(logging.WARNING, logger="django.request"):
        api.get("/api/v1/servers/not-a-server", HTTP_X_REQUEST_ID="req-404", **owner.headers)
    warned = [r for r in caplog.records if r.name == "django.request"]
    assert warned and all(r.zlh.get("request_id") == "req-404" for r in warned)


def test_both_formats_redact_and_carry_the_bound_fields():
    def render(formatter) -> str:
        record = logging.LogRecord("zlh.test", logging.ERROR, __file__, 1,
                                   "failed with password=%s", (SECRET,), None)
        try:
            raise RuntimeError(f"api_key={SECRET}")
        except RuntimeError:
            import sys
            record.exc_info = sys.exc_info()
        from core.logs import ContextFilter
        with bind(operation_id="op-1", server_id="srv-1", attempt=2, unknown="dropped"):
            RedactingFilter().filter(record)
            ContextFilter().filter(record)
        return formatter.format(record)

    line = render(JsonFormatter())
    assert SECRET not in line and "\n" not in line
    data = json.loads(line)
    assert data["operation_id"] == "op-1" and data["attempt"] == "2" and "unknown" not in data
    assert data["message"] == "failed with password=***" and "api_key=***" in data["exc"]
    plain = render(PlainFormatter("%(levelname)s %(message)s"))
    assert SECRET not in plain
    assert plain.splitlines()[0] == ("ERROR failed with password=*** "
                                     "[operation_id=op-1 server_id=srv-1 attempt=2]")
