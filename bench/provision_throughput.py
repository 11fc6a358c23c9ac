#!/usr/bin/env python
"""Provisioning throughput: real Celery workers provisioning against fakepve at time scale 0.

Prints provisions per second for each worker concurrency, Proxmox API calls and agent calls
per provision (counted by the devstack's /_sim/calls), and the SQL statements MariaDB received
per provision (its `Questions` counter, less the benchmark's own waiting loop). Uses a throwaway
database and Redis db 14.

The first round's outside calls are journaled by the devstack and then replayed with a bare
client (bench/bare_replay.py: no control plane, same calls in the same order, one after the
other) against the devstack reset to where it started: the round's time over the replay's is
the control plane's overhead (compare it with a 1-worker first round, as the replay is serial).

    .venv/bin/python bench/provision_throughput.py [--servers 40] [--workers 1,2,4] [--no-replay]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness import throwaway_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=40, help="servers per round")
    parser.add_argument("--workers", default="1,2,4", help="worker concurrencies to measure")
    parser.add_argument("--no-replay", action="store_true",
                        help="skip the bare replay of the first round's calls")
    args = parser.parse_args()
    with throwaway_database("provbench"):
        return run(args)


def _questions() -> int:
    """Statements MariaDB has received from all clients (its `Questions` counter)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
        return int(cursor.fetchone()[1])


def run(args: argparse.Namespace) -> int:
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bare_replay import replay

    from lifecycle.models import ContainerInstance, Operation
    from lifecycle.services.servers import server_create
    from tests.support.devstack import Devstack
    from tests.support.platform import game_body, make_user, seed_platform
    from tests.support.procs import child_env
    from tests.support.workers import start_worker

    workdir = Path(tempfile.mkdtemp(prefix="provbench-"))
    stack = Devstack(workdir, time_scale=0.0)
    rounds = [int(n) for n in args.workers.split(",")]
    total = args.servers * len(rounds)
    seed_platform(vmids=(5000, 5000 + total + 10), memory_mb=100_000_000,
                  ports=(20000, 20000 + total + 10), subnet_prefix=16)
    user = make_user("bench")
    env = child_env(**stack.env, OPERATION_LEASE_SECONDS="30", LOG_LEVEL="WARNING")
    for key, value in stack.env.items():
        setattr(settings, key, value)
    rows = []
    systems = ("proxmox", "agents", "cloudflare", "technitium", "velocity")
    bare = None
    try:
        for n, concurrency in enumerate(rounds):
            stack.pve("DELETE", "/_sim/calls")
            stack.agents("DELETE", "/_sim/calls")
            for service in ("cloudflare", "technitium", "velocity"):
                stack.sim(service, "DELETE", "/_sim/calls")
            journaled = n == 0 and not args.no_replay
            if journaled:
                for system in systems:
                    stack.sim(system, "POST", "/_sim/journal")
            # As deployed: lifecycle workers apart from the notify/edge worker.
            worker = start_worker(env, workdir, name=f"bench{concurrency}",
                                  concurrency=concurrency, queues="lifecycle")
            side = start_worker(env, workdir, name=f"side{concurrency}", concurrency=1,
                                queues="notify,edge")
            try:
                questions = _questions()
                t0 = time.monotonic()
                with CaptureQueriesContext(connection) as ours:
                    ids = [server_create(owner=user.user,
                                         data=game_body(f"b{n}-{i}")).instance.id
                           for i in range(args.servers)]
                    accepted = len(ours.captured_queries)
                    deadline = time.monotonic() + 600
                    while ContainerInstance.objects.filter(pk__in=ids,
                                                           status="running").count() < len(ids):
                        if time.monotonic() > deadline:
                            raise SystemExit("provisioning did not finish within 600 s")
                        time.sleep(0.05)
                wall = time.monotonic() - t0
                # Every statement MariaDB received meanwhile, less this process's waiting loop
                # (the creates themselves count: they are part of a provision).
                watching = len(ours.captured_queries) - accepted
                statements = _questions() - questions - watching
            finally:
                worker.stop()
                side.stop()
            pve_calls = stack.pve("GET", "/_sim/calls?last=1")["total"]
            agent_calls = stack.agents("GET", "/_sim/calls?last=1")["total"]
            edge_calls = sum(stack.sim(s, "GET", "/_sim/calls?last=1")["total"]
                             for s in ("cloudflare", "technitium", "velocity"))
            attempts = sum(Operation.objects.filter(instance_id__in=ids)
                           .values_list("attempt", flat=True))
            if journaled:
                journals = {s: (stack.endpoints[s]["sim"],
                                stack.sim(s, "GET", "/_sim/journal")["calls"]) for s in systems}
                for system in systems:
                    stack.sim(system, "DELETE", "/_sim/journal")
                stack.reset()  # where the round started, for the replay
                bare = (concurrency, wall, replay(journals))
                stack.reset()  # and again for the next round
            rows.append((concurrency, len(ids), wall, pve_calls / len(ids),
                         agent_calls / len(ids), edge_calls / len(ids), attempts / len(ids),
                         statements / len(ids)))
    finally:
        stack.stop()

    print(f"provision throughput against fakepve (time scale 0), {args.servers} servers per round")
    print(f"  {'workers':>7} {'servers':>7} {'seconds':>8} {'prov/s':>7} {'PVE calls/prov':>15}"
          f" {'agent calls/prov':>17} {'edge calls/prov':>16} {'attempts/prov':>14}"
          f" {'SQL stmts/prov':>15}")
    for concurrency, count, wall, pve, agent, edge, attempts, stmts in rows:
        print(f"  {concurrency:>7} {count:>7} {wall:>8.2f} {count / wall:>7.1f} {pve:>15.1f}"
              f" {agent:>17.1f} {edge:>16.1f} {attempts:>14.2f} {stmts:>15.0f}")
    if bare is not None:
        concurrency, wall, result = bare
        print(f"  bare replay of the first round's calls ({concurrency} worker(s)): {result.calls}"
              f" calls in {result.seconds:.2f} s, {len(result.mismatched)} answered otherwise;"
              f" control plane {wall:.2f} s = {wall / result.seconds:.2f}x the bare calls")
        for system, method, was, now in result.mismatched[:5]:
            print(f"    {system} {method}: recorded {was}, replayed {now}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
