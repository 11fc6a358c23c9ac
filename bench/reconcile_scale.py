#!/usr/bin/env python
"""Reconciler at scale: seeds 1,000 / 5,000 / 10,000 servers (database, fakepve containers, edge
records; every one of them running with an agent unless --running says fewer) and prints, per
cycle: time, Proxmox calls, edge calls, direct agent probes and database queries. Calls and
queries must not grow with the number of servers; time should grow no worse than linearly.

    .venv/bin/python bench/reconcile_scale.py [--sizes 1000,5000,10000] [--running N]
        [--stale-percent P]

Each size is measured twice: with every heartbeat fresh, then with P % of them (default 10)
older than the stale threshold, so those agents must be asked directly — within
RECONCILER_AGENT_PROBE_BUDGET per cycle, the rest left for later cycles ('unprobed'). The
container firewall's checks ('fw calls') are bounded per cycle too (RECONCILER_FIREWALL_CHECKS).
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
    parser.add_argument("--running", type=int, default=-1,
                        help="servers running (with agents and edge); default: all")
    parser.add_argument("--stale-percent", type=float, default=10.0,
                        help="second measurement per size: this share of heartbeats stale")
    args = parser.parse_args()
    with throwaway_database("recbench"):
        return run(args)


def run(args: argparse.Namespace) -> int:
    from django.conf import settings
    from django.db import connection
    from django.db.models.expressions import RawSQL
    from django.test.utils import CaptureQueriesContext

    from core.clock import db_now
    from lifecycle.models import AgentHeartbeat, ContainerInstance, Operation
    from reconciler.models import ControllerRun, Finding, RepairEvent
    from reconciler.observe import heartbeat_stale_after
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
            n_running = size if args.running < 0 else min(size, args.running)
            for i in range(size):
                run_now = i < n_running
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
            running = servers[:n_running]
            zone, ip = settings.EDGE_ZONE, settings.VELOCITY_PUBLIC_IP
            # The stand-ins refuse bodies over 1 MiB (413): seed in chunks.
            for chunk in _chunks(running, 1000):
                _seed_edge(stack, chunk, zone, ip, settings)
            # Every running agent has just sent its heartbeat (what the receiver writes).
            now = db_now()
            AgentHeartbeat.objects.bulk_create(
                [AgentHeartbeat(server_id=s.id, received_at=now, sequence=1, state="running",
                                provisioning_complete=True, ready=True)
                 for s in running], batch_size=2000)
            run_cycle(dry_run=True)  # warm-up
            for stale_pct in (0.0, args.stale_percent):
                if stale_pct:
                    # Heartbeats that stopped arriving, aged by the database's own clock (the
                    # one "stale" is judged by).
                    n_stale = int(len(running) * stale_pct / 100)
                    old = heartbeat_stale_after() + 60
                    for chunk in _chunks([s.id for s in running[:n_stale]], 2000):
                        AgentHeartbeat.objects.filter(server_id__in=chunk).update(
                            received_at=RawSQL("NOW(6) - INTERVAL %s SECOND", (old,)))
                with CaptureQueriesContext(connection) as ctx:
                    t0 = time.monotonic()
                    summary = run_cycle(dry_run=True)
                    elapsed = time.monotonic() - t0
                calls = summary.get("calls", {})
                edge_calls = sum(v for k, v in calls.items() if k.startswith("edge_"))
                findings = sum(summary.get("counts", {}).get("findings", {}).values())
                rows.append((size, stale_pct, elapsed, calls.get("proxmox", 0), edge_calls,
                             calls.get("agents", 0), calls.get("agents_unprobed", 0),
                             calls.get("agent_heartbeats", 0), calls.get("firewall", 0),
                             len(ctx.captured_queries), findings, summary["outcome"]))
            ControllerRun.objects.all().delete()
    finally:
        stack.stop()

    print("reconcile cycle at scale (dry run; 'probes' = agents asked directly, 'unprobed' = "
          "stale ones left for later cycles, 'beats' = fresh heartbeats read in bulk, "
          "'fw' = Proxmox calls of the firewall checks)")
    print(f"  {'servers':>7} {'stale%':>6} {'seconds':>8} {'s/1k':>6} {'proxmox':>7} {'edge':>5}"
          f" {'probes':>6} {'unprobed':>8} {'beats':>6} {'fw':>4} {'queries':>7} {'findings':>8}"
          "  outcome")
    for (size, stale, elapsed, pve, edge, probes, unprobed, beats, fw, queries, findings,
         outcome) in rows:
        print(f"  {size:>7} {stale:>6.0f} {elapsed:>8.2f} {elapsed / size * 1000:>6.3f}"
              f" {pve:>7} {edge:>5} {probes:>6} {unprobed:>8} {beats:>6} {fw:>4} {queries:>7}"
              f" {findings:>8}  {outcome}")
    fresh = [r for r in rows if r[1] == 0]
    if len(fresh) > 1:
        print(f"  all fresh, time at {fresh[-1][0]} / time at {fresh[0][0]}: "
              f"{fresh[-1][2] / fresh[0][2]:.1f}x")
    return 0


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _seed_edge(stack, running, zone: str, ip: str, settings) -> None:
    """What publishing these servers would have left in Cloudflare, Technitium and Velocity."""
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


if __name__ == "__main__":
    sys.exit(main())
