#!/usr/bin/env python
"""Create storm: many processes creating servers through the full API stack at once.

Prints creates per second and database statements per create (the figure to watch: it must
not grow with the number of servers, nodes or pool sizes). Uses a throwaway database
`test_<name>_bench` and Redis database 14, both removed afterwards.

    .venv/bin/python bench/create_storm.py [--procs 8] [--per-proc 50] [--users 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys

from harness import throwaway_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--per-proc", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="request threads per process")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--sample", type=int, default=50, help="creates measured for queries")
    args = parser.parse_args()

    with throwaway_database("bench"):
        return run(args)


def run(args: argparse.Namespace) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from lifecycle.models import ContainerInstance
    from lifecycle.services.servers import server_create
    from tests.support import broker
    from tests.support.platform import game_body, make_user, seed_platform
    from tests.support.procs import child_env, run_parallel

    total = args.procs * args.per_proc
    seed_platform(vmids=(5000, 5000 + total + args.sample + 100), memory_mb=100_000_000,
                  ports=(20000, 20000 + total + args.sample + 100), subnet_prefix=16)
    users = [make_user(f"bench{i}") for i in range(args.users)]

    # Statements per create, in this process, after the storm's warm-up rows exist.
    per_create = []
    for i in range(args.sample):
        with CaptureQueriesContext(connection) as ctx:
            server_create(owner=users[0].user, data=game_body(f"q-{i}"),
                          idempotency_key=f"q-{i}")
        per_create.append(len(ctx.captured_queries))
    replay = []
    for i in range(min(args.sample, 10)):
        with CaptureQueriesContext(connection) as ctx:
            server_create(owner=users[0].user, data=game_body(f"q-{i}"),
                          idempotency_key=f"q-{i}")
        replay.append(len(ctx.captured_queries))

    work = [
        {"token": users[p % args.users].token, "threads": args.threads, "requests": [
            {"body": game_body(f"s{p}-{i}"), "key": f"s{p}-{i}"}
            for i in range(args.per_proc)]}
        for p in range(args.procs)
    ]
    # Every process is started and connected before GO: the clock measures creates only.
    timing: dict[str, float] = {}
    results = [r for chunk in run_parallel("tests.support.workloads.create_servers", work,
                                           env=child_env(), timeout=900, timing=timing)
               for r in chunk]
    wall = timing["done"] - timing["go"]
    ok = sum(r["status"] == 202 for r in results)
    count = ContainerInstance.objects.count()
    vmids = ContainerInstance.objects.values("vmid").distinct().count()

    print(f"create storm: {args.procs} processes x {args.threads} threads, "
          f"{args.per_proc} creates each, {args.users} accounts")
    print(f"  accepted                 {ok}/{total}  (instances {count}, distinct vmids {vmids})")
    print(f"  wall time (GO to last)   {wall:.2f} s")
    print(f"  creates per second       {ok / wall:.1f}")
    print(f"  statements per create    median {statistics.median(per_create):.0f}, "
          f"max {max(per_create)}  (over {len(per_create)} creates)")
    print(f"  statements per replay    median {statistics.median(replay):.0f}")
    print(f"  queued messages          {len(broker.queued_task_ids('lifecycle'))}")
    return 0 if ok == total and vmids == count else 1


if __name__ == "__main__":
    sys.exit(main())
