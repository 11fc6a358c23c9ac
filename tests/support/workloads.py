"""Workloads run inside child processes (see procs.run_parallel). Plain functions, JSON in/out."""
from __future__ import annotations

import threading
from typing import Any


def create_servers(*, token: str, requests: list[dict[str, Any]], threads: int = 1,
                   ) -> list[dict[str, Any]]:
    """POST /api/v1/servers for each {"body", "key"} through the full API stack, using
    `threads` threads (each with its own DB connection) released together by a barrier."""
    from django.db import connection
    from rest_framework.test import APIClient

    results: list[dict[str, Any] | None] = [None] * len(requests)
    barrier = threading.Barrier(threads)

    def run(indices: list[int]) -> None:
        client = APIClient()
        try:
            barrier.wait(timeout=60)
            for i in indices:
                req = requests[i]
                headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
                if req.get("key"):
                    headers["HTTP_IDEMPOTENCY_KEY"] = req["key"]
                resp = client.post("/api/v1/servers", req["body"], format="json", **headers)
                body = resp.json()
                results[i] = {
                    "status": resp.status_code,
                    "id": body.get("id"),
                    "operation": (body.get("operation") or {}).get("id"),
                    "code": body.get("code"),
                    "replayed": resp.headers.get("Idempotent-Replayed") == "true",
                }
        finally:
            connection.close()

    chunks = [list(range(t, len(requests), threads)) for t in range(threads)]
    workers = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)
    if any(w.is_alive() for w in workers):
        raise RuntimeError("a request thread did not finish within 600 s")
    return results


def raise_notifications(*, count: int) -> dict[str, Any]:
    """notify_lifecycle `count` times, each in its own transaction; report the slowest call."""
    import time

    from django.db import connection, transaction

    from notifications.services import notify_lifecycle

    slowest = 0.0
    for i in range(count):
        started = time.monotonic()
        with transaction.atomic():
            notify_lifecycle(f"raised without Redis {i}")
        slowest = max(slowest, time.monotonic() - started)
    connection.close()
    return {"raised": count, "slowest": slowest}


def run_schedule_ticks(*, rounds: int, bypass_lock: bool = False, threads: int = 1,
                       ) -> dict[str, int]:
    """Run the schedule tick `rounds` times from `threads` threads. With bypass_lock the tick's
    named lock is skipped (every due schedule is decided directly), so only the row lock and the
    re-check stand between concurrent decisions of one time."""
    from django.db import connection

    from lifecycle.models import ServerSchedule
    from lifecycle.services import schedules

    totals: dict[str, int] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def run() -> None:
        try:
            barrier.wait(timeout=60)
            for _ in range(rounds):
                if bypass_lock:
                    due = list(ServerSchedule.objects.filter(enabled=True)
                               .values_list("id", flat=True))
                    results = [schedules._run_one(sid) for sid in due]
                    counts = {r: results.count(r) for r in set(results) if r}
                else:
                    counts = schedules.server_schedule_tick()
                with lock:
                    for key, value in counts.items():
                        totals[key] = totals.get(key, 0) + value
        finally:
            connection.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return totals


def schedule_tick_then_hang(*, marker: str) -> None:
    """Run the schedule tick, but stop for good right after the first action was requested,
    inside the decision's transaction (the parent kills this process there)."""
    import time
    from pathlib import Path

    from lifecycle.services import schedules

    real = schedules.server_request

    def request_then_hang(**kwargs):
        op = real(**kwargs)
        Path(marker).write_text(str(op.id))
        time.sleep(600)
        return op

    schedules.server_request = request_then_hang
    schedules.server_schedule_tick()
