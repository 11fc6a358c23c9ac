#!/usr/bin/env python
"""Provisioning throughput: real Celery workers provisioning against fakepve at time scale 0.

Prints provisions per second for each worker concurrency, and Proxmox API calls and agent calls
per provision (counted by the devstack's /_sim/calls). Uses a throwaway database and Redis db 14.

    .venv/bin/python bench/provision_throughput.py [--servers 40] [--workers 1,2,4]
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
    args = parser.parse_args()
    with throwaway_database("provbench"):
        return run(args)


def run(args: argparse.Namespace) -> int:
    from django.conf import settings

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
    try:
        for n, concurrency in enumerate(rounds):
            stack.pve("DELETE", "/_sim/calls")
            stack.agents("DELETE", "/_sim/calls")
            for service in ("cloudflare", "technitium", "velocity"):
                stack.sim(service, "DELETE", "/_sim/calls")
            # As deployed: lifecycle workers apart from the notify/edge worker.
            worker = start_worker(env, workdir, name=f"bench{concurrency}",
                                  concurrency=concurrency, queues="lifecycle")
            side = start_worker(env, workdir, name=f"side{concurrency}", concurrency=1,
                                queues="notify,edge")
            try:
                t0 = time.monotonic()
                ids = [server_create(owner=user.user,
                                     data=game_body(f"b{n}-{i}")).instance.id
                       for i in range(args.servers)]
                deadline = time.monotonic() + 600
                while ContainerInstance.objects.filter(pk__in=ids, status="running").count() < len(ids):
                    if time.monotonic() > deadline:
                        raise SystemExit("provisioning did not finish within 600 s")
                    time.sleep(0.05)
                wall = time.monotonic() - t0
            finally:
                worker.stop()
                side.stop()
            pve_calls = stack.pve("GET", "/_sim/calls?last=1")["total"]
            agent_calls = stack.agents("GET", "/_sim/calls?last=1")["total"]
            edge_calls = sum(stack.sim(s, "GET", "/_sim/calls?last=1")["total"]
                             for s in ("cloudflare", "technitium", "velocity"))
            attempts = sum(Operation.objects.filter(instance_id__in=ids)
                           .values_list("attempt", flat=True))
            rows.append((concurrency, len(ids), wall, pve_calls / len(ids),
                         agent_calls / len(ids), edge_calls / len(ids), attempts / len(ids)))
    finally:
        stack.stop()

    print(f"provision throughput against fakepve (time scale 0), {args.servers} servers per round")
    print(f"  {'workers':>7} {'servers':>7} {'seconds':>8} {'prov/s':>7} {'PVE calls/prov':>15}"
          f" {'agent calls/prov':>17} {'edge calls/prov':>16} {'attempts/prov':>14}")
    for concurrency, count, wall, pve, agent, edge, attempts in rows:
        print(f"  {concurrency:>7} {count:>7} {wall:>8.2f} {count / wall:>7.1f} {pve:>15.1f}"
              f" {agent:>17.1f} {edge:>16.1f} {attempts:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
