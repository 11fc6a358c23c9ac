#!/usr/bin/env python
"""What the operator's views cost at fleet size: the panel's Fleet overview and a Prometheus
scrape of /metrics, with N servers (default 1,000 and 10,000) and their history (operations,
findings, cycles, notifications). Prints, per size, the queries and the median time of each.

    .venv/bin/python bench/fleet_views.py [--sizes 1000,10000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta

from harness import throwaway_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with throwaway_database("fleetbench"):
        return run(args)


def run(args: argparse.Namespace) -> int:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from lifecycle.models import Operation
    from notifications.models import Notification
    from reconciler.models import ControllerRun, Finding
    from tests.support.platform import bulk_servers, make_user, seed_platform

    settings.METRICS_TOKEN = "bench-" + "t" * 32
    settings.ALLOWED_HOSTS = ["*"]
    seed_platform(nodes=("pve1", "pve2"), memory_mb=10**9, subnet_prefix=16, vmids=(100, 99999))
    owner = make_user("bench").user
    admin = get_user_model().objects.create_superuser("chief", password="x" * 16)
    client = Client()
    client.force_login(admin)
    statuses = ["running"] * 7 + ["stopped", "failed", "provisioning"]
    made = 0
    print(f"{'servers':>8} {'overview q':>10} {'overview ms':>11} {'scrape q':>9} "
          f"{'scrape ms':>9} {'scrape KB':>9}")
    for size in [int(s) for s in args.sizes.split(",")]:
        batch = bulk_servers(owner, size - made, start=made, prefix="b",
                             status=lambda i: statuses[i % len(statuses)])
        now = timezone.now()
        Operation.objects.bulk_create([
            Operation(instance=s, kind="provision", state="succeeded", attempt=1,
                      requested_by="bench", started_at=now, finished_at=now + timedelta(seconds=40))
            for s in batch], batch_size=2000)
        Finding.objects.bulk_create([
            Finding(key=f"status_drift:{s.id}", finding_type="status_drift", level=1,
                    action="sync_status", instance=s, subject=str(s.id), last_seen=now)
            for s in batch[::10]], batch_size=2000)
        Notification.objects.bulk_create([
            Notification(channel="lifecycle", title=f"{s.slug} ready", state="sent", sent_at=now)
            for s in batch], batch_size=2000)
        ControllerRun.objects.bulk_create([
            ControllerRun(epoch=1, holder="bench", outcome="completed",
                          finished_at=now) for _ in range(50)])
        made = size

        def measure(path: str, **headers: str) -> tuple[int, float, int]:
            times, queries, size_b = [], 0, 0
            for _ in range(args.repeat):
                count = [0]

                def counter(execute, sql, params, many, context):
                    count[0] += 1
                    return execute(sql, params, many, context)

                started = time.perf_counter()
                with connection.execute_wrapper(counter):
                    resp = client.get(path, **headers)
                times.append(time.perf_counter() - started)
                assert resp.status_code == 200, (path, resp.status_code)
                queries, size_b = count[0], len(resp.content)
            return queries, statistics.median(times) * 1000, size_b

        oq, oms, _ = measure("/admin/fleet/")
        sq, sms, sbytes = measure("/metrics",
                                  HTTP_AUTHORIZATION=f"Bearer {settings.METRICS_TOKEN}")
        print(f"{size:>8} {oq:>10} {oms:>11.0f} {sq:>9} {sms:>9.0f} {sbytes / 1024:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
