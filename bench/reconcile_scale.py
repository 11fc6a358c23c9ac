#!/usr/bin/env python
"""Reconciler at scale: seeds 1,000 / 5,000 / 10,000 servers (database, fakepve containers, edge
records; 50 of them running with agents) and prints, per cycle: time, Proxmox calls, edge calls,
agent calls and database queries. Calls and queries must not grow with the number of servers
(agent checks aside: one per running server); time should grow no worse than linearly.

    .venv/bin/python bench/reconcile_scale.py [--sizes 1000,5000,10000] [--running 50]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import throwaway_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--running", type=int, default=50)
    args = parser.parse_args()
    with throwaway_database("recbench"):
        return run(args)


def run(args: argparse.Namespace) -> int:
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from lifecycle.models import ContainerInstance, Operation
    from reconciler.models import ControllerRun, Finding, RepairEvent
    from reconciler.services import run_cycle
    from tests.support.devstack import Devstack, apply_settings
    from tests.support.platform import make_user, seed_platform

    stack = Devstack(Path(tempfile.mkdtemp(prefix="recbench-")))
    apply_settings(settings, stack.env)
    settings.RECONCILER_MASS_DRIFT_MIN = 10**6
    nodes = seed_platform(nodes=("pve1", "pve2"), memory_mb=10**9, subnet_prefix=16)
    owner = make_user("bench").user
    rows = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            stack.reset()
            Operation.objects.all().delete()
            RepairEvent.objects.all().delete()
            Finding.objects.all().delete()
            ContainerInstance.objects.all().delete()
            servers = []
            for i in range(size):
                run_now = i < args.running
                node = nodes[i % 2]
                servers.append(ContainerInstance(
                    id=uuid.uuid4(), owner=owner, name=f"s{i}", slug=f"s{i}", live_slug=f"s{i}",
                    kind="game", variant="vanilla", version="1.21.1", plan="vanilla",
                    memory_mb=2048, cores=2, disk_gb=8, node=node, vmid=100000 + i,
                    ip=f"10.{i // 60000 + 1}.{(i // 250) % 250}.{i % 250 + 2}",
                    ports={"game": 30000 + i % 1000},
                    status="running" if run_now else "stopped",
                    desired_state="running" if run_now else "stopped"))
            ContainerInstance.objects.bulk_create(servers, batch_size=2000)
            for start in range(0, size, 2000):
                stack.pve("POST", "/_sim/containers", json=[
                    {"vmid": s.vmid, "node": s.node.name, "hostname": s.slug,
                     "tags": f"zlh;zlh-{s.id}", "status": s.status}
                    for s in servers[start:start + 2000]])
            running = servers[: args.running]
            zone, ip = settings.EDGE_ZONE, settings.VELOCITY_PUBLIC_IP
            stack.sim("cloudflare", "POST", "/_sim/records", json=[
                rec for s in running for rec in (
                    {"type": "A", "name": f"{s.slug}.{zone}", "content": ip, "ttl": 60,
                     "proxied": False, "comment": f"zlh:{s.id}"},
                    {"type": "SRV", "name": f"_minecraft._tcp.{s.slug}.{zone}", "ttl": 60,
                     "comment": f"zlh:{s.id}",
                     "data": {"priority": 0, "weight": 5, "port": 25565,
                              "target": f"{s.slug}.{zone}"}})])
            stack.sim("technitium", "POST", "/_sim/records", json={
                "zone": settings.TECHNITIUM_ZONE, "records": [
                    {"name": f"{s.slug}.{settings.TECHNITIUM_ZONE}", "type": "A",
                     "rData": {"ipAddress": s.ip}, "comments": f"zlh:{s.id}"} for s in running]})
            stack.sim("velocity", "POST", "/_sim/servers", json=[
                {"name": s.slug, "address": f"{s.ip}:{s.ports['game']}",
                 "hosts": [f"{s.slug}.{zone}"]} for s in running])
            run_cycle(dry_run=True)  # warm-up
            with CaptureQueriesContext(connection) as ctx:
                t0 = time.monotonic()
                summary = run_cycle(dry_run=True)
                elapsed = time.monotonic() - t0
            calls = summary.get("calls", {})
            edge_calls = sum(v for k, v in calls.items() if k.startswith("edge_"))
            findings = sum(summary.get("counts", {}).get("findings", {}).values())
            rows.append((size, elapsed, calls.get("proxmox", 0), edge_calls,
                         calls.get("agents", 0), len(ctx.captured_queries), findings,
                         summary["outcome"]))
            ControllerRun.objects.all().delete()
    finally:
        stack.stop()

    print("reconcile cycle at scale (dry run; 'agents' = one status call per running server)")
    print(f"  {'servers':>7} {'seconds':>8} {'s/1k':>6} {'proxmox':>7} {'edge':>5} {'agents':>6}"
          f" {'queries':>7} {'findings':>8}  outcome")
    for size, elapsed, pve, edge, agents, queries, findings, outcome in rows:
        print(f"  {size:>7} {elapsed:>8.2f} {elapsed / size * 1000:>6.3f} {pve:>7} {edge:>5}"
              f" {agents:>6} {queries:>7} {findings:>8}  {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
