#!/usr/bin/env python
"""Server schedules for a fleet: N servers whose owners all chose the same time (04:00 is
popular), every schedule due at once. One beat tick decides them all; prints the decisions by
result, decisions per second (how many fit in SERVER_SCHEDULE_MISFIRE_SECONDS), the database
queries per decision, the queries of a tick with nothing due, and checks that no server got a
second restart.

    .venv/bin/python bench/server_schedules.py [--servers 5000] [--busy 0.1] [--stopped 0.1]

A tenth of the servers have another operation running (skipped_busy) and a tenth are stopped
(skipped_state) by default. No worker runs: the requested restarts stay queued, which is all
the tick does.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import time as dt_time
from datetime import timedelta

from harness import throwaway_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=5000)
    parser.add_argument("--busy", type=float, default=0.1, help="share with an operation running")
    parser.add_argument("--stopped", type=float, default=0.1, help="share that is stopped")
    args = parser.parse_args()
    with throwaway_database("schedbench"):
        return run(args)


def run(args: argparse.Namespace) -> int:
    from django.conf import settings
    from django.db import connection
    from django.db.models import Count

    from core.clock import db_now
    from lifecycle.models import AccountProfile, Operation, ServerSchedule
    from lifecycle.services.schedules import server_schedule_tick
    from tests.support.platform import bulk_servers, make_user, seed_platform

    settings.ZLH_SERVER_SCHEDULE_INTERVAL_SECONDS = 3600  # one tick decides the whole fleet
    seed_platform(nodes=("pve1", "pve2"), memory_mb=10**9, subnet_prefix=16,
                  vmids=(100, 99999))
    owner = make_user("bench").user
    AccountProfile.objects.create(user=owner, time_zone="Europe/Berlin")
    n = args.servers
    busy_every = int(1 / args.busy) if args.busy else 0
    stopped_every = int(1 / args.stopped) if args.stopped else 0
    servers = bulk_servers(owner, n, status=lambda i: "stopped" if stopped_every
                           and i % stopped_every == 1 else "running")
    busy = [s for i, s in enumerate(servers) if busy_every and i % busy_every == 0]
    Operation.objects.bulk_create([
        Operation(instance=s, kind="backup", state="running", active_slot=s.id,
                  requested_by="bench") for s in busy], batch_size=2000)
    due = db_now() - timedelta(seconds=30)
    ServerSchedule.objects.bulk_create([
        ServerSchedule(instance=s, action="restart", time_of_day=dt_time(4, 0), next_run_at=due)
        for s in servers], batch_size=2000)

    queries = [0]

    def count(execute, sql, params, many, context):
        queries[0] += 1
        return execute(sql, params, many, context)

    started = time.perf_counter()
    with connection.execute_wrapper(count):
        counts = server_schedule_tick()
    elapsed = time.perf_counter() - started
    tick_queries, queries[0] = queries[0], 0
    decided = sum(counts[k] for k in ("requested", "skipped_busy", "skipped_state", "missed"))
    with connection.execute_wrapper(count):
        again = server_schedule_tick()
    restarts = Operation.objects.filter(kind="restart")
    doubled = (restarts.values("instance_id").annotate(n=Count("id")).filter(n__gt=1).count())
    left_due = ServerSchedule.objects.filter(next_run_at__lte=db_now()).count()

    print(f"servers {n}, all due at once (busy {len(busy)}, stopped "
          f"{sum(1 for s in servers if s.status == 'stopped')})")
    print(f"decisions: {decided} ({', '.join(f'{k} {counts[k]}' for k in ('requested', 'skipped_busy', 'skipped_state', 'missed'))})")
    print(f"tick: {elapsed:.1f} s, {decided / elapsed:.0f} decisions/s "
          f"({decided / elapsed * settings.SERVER_SCHEDULE_MISFIRE_SECONDS:.0f} within "
          f"SERVER_SCHEDULE_MISFIRE_SECONDS={settings.SERVER_SCHEDULE_MISFIRE_SECONDS})")
    print(f"queries per decision: {tick_queries / max(1, decided):.1f} "
          f"({tick_queries} in the tick)")
    print(f"queries of a tick with nothing due: {queries[0]} "
          f"(decided {again['due']})")
    print(f"restart operations: {restarts.count()}, servers with two: {doubled}, "
          f"schedules still due: {left_due}")
    ok = (decided == n and counts["requested"] == restarts.count() and doubled == 0
          and left_due == 0 and again["due"] == 0)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
