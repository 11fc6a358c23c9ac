#!/usr/bin/env python
"""Adopting a fleet the old API left: N untagged game servers over two nodes, each with its
Cloudflare A and SRV records, its internal A record and its Velocity registration (10 %
stopped), described by a mapping file. Prints how long the plan and the apply took, Proxmox
and edge calls per adopted server, the database queries of the plan, and that a second apply
changes nothing.

    .venv/bin/python bench/adopt.py [--servers 2000] [--parallel 8]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from harness import throwaway_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=8, help="containers adopted at once")
    args = parser.parse_args()
    with throwaway_database("adoptbench"):
        return run(args)


def run(args: argparse.Namespace) -> int:
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from devstack.legacy import LegacyServer, seed_legacy
    from lifecycle.models import ContainerInstance
    from lifecycle.services.adoption import Verdict, adoption_apply, adoption_plan, mapping_load
    from lifecycle.services.audit import Actor
    from tests.support.devstack import Devstack, apply_settings
    from tests.support.platform import seed_platform

    workdir = Path(tempfile.mkdtemp(prefix="adoptbench-"))
    stack = Devstack(workdir)
    try:
        apply_settings(settings, {**stack.env, "LOG_LEVEL": "WARNING"})
        n = args.servers
        seed_platform(vmids=(10_000, 10_000 + n + 99), subnet_prefix=18,
                      ports=(30_000, 30_000 + n))
        fleet = []
        for i in range(n):
            node = 1 + i % 2
            host = 10 + i // 2
            fleet.append(LegacyServer(
                10_000 + i, f"old{i:05d}", f"10.{node}.{host // 250}.{host % 250 + 2}",
                node=f"pve{node}", prefix=18, gateway=f"10.{node}.0.1", port=30_000 + i,
                status="stopped" if i % 10 == 9 else "running", comment="old-api"))
        t0 = time.monotonic()
        seed_legacy(stack.endpoints, fleet, zone=settings.EDGE_ZONE,
                    internal_zone=settings.TECHNITIUM_ZONE,
                    velocity_ip=settings.VELOCITY_PUBLIC_IP,
                    velocity_port=int(settings.VELOCITY_PUBLIC_PORT), http=stack.http)
        print(f"seeded {n} legacy servers in {time.monotonic() - t0:.1f} s")
        mapping = workdir / "servers.csv"
        mapping.write_text("vmid,owner,variant,version\n" + "".join(
            f"{s.vmid},owner{i % 50},paper,1.21.1\n" for i, s in enumerate(fleet)))

        stack.pve("DELETE", "/_sim/calls")
        t0 = time.monotonic()
        with CaptureQueriesContext(connection) as queries:
            plan = adoption_plan(mapping_load(mapping))
        plan_s = time.monotonic() - t0
        counts = plan.counts()
        print(f"plan: {plan_s:.1f} s for {n} containers ({counts}), {len(queries)} queries, "
              f"calls {plan.calls}")
        if counts[Verdict.ADOPT] != n:
            skipped = [cp for cp in plan.containers if cp.verdict == Verdict.SKIP][:3]
            print("unexpected conflicts:", [(cp.vmid, cp.conflicts) for cp in skipped])
            return 1

        t0 = time.monotonic()
        outcomes = adoption_apply(plan, actor=Actor.system("bench"), parallel=args.parallel)
        apply_s = time.monotonic() - t0
        results = Counter(o.result for o in outcomes)
        calls: Counter[str] = Counter()
        for o in outcomes:
            calls.update(o.calls)
        adopted = results["adopted"]
        print(f"apply: {apply_s:.1f} s, {adopted / apply_s:.1f} servers/s with --parallel "
              f"{args.parallel}; results {dict(results)}")
        print("calls per adopted server: " + ", ".join(
            f"{k} {v / max(1, adopted):.2f}" for k, v in sorted(calls.items())))
        pve_calls = stack.pve("GET", "/_sim/calls?last=1")["total"]
        print(f"Proxmox calls seen by the devstack (plan + apply): {pve_calls} "
              f"({pve_calls / max(1, adopted):.2f} per adopted server)")
        assert ContainerInstance.objects.count() == n

        stack.pve("DELETE", "/_sim/calls")
        t0 = time.monotonic()
        again = adoption_apply(adoption_plan(mapping_load(mapping)), actor=Actor.system("bench"))
        writes = [c for c in stack.pve("GET", "/_sim/calls?last=100000")["calls"]
                  if c[0] != "GET"]
        print(f"second apply: {time.monotonic() - t0:.1f} s, "
              f"{dict(Counter(o.result for o in again))}, {len(writes)} Proxmox writes")
        return 0 if not writes and adopted == n else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
