#!/usr/bin/env python
"""Scheduled backups for a fleet: N servers over two nodes all due at once (the schedule was
off, or the interval just turned), backed up by the schedule with at most --limit backup jobs
per node. Prints how long the fleet took, the most backup operations and vzdump tasks seen at
once on each node (never above the limit), Proxmox calls per scheduled backup, and the
database queries of one schedule tick.

    .venv/bin/python bench/backup_schedule.py [--servers 1000] [--limit 2] [--concurrency 8]
        [--time-scale 0.02]

The schedule runs as deployed: beat's tick (here every --tick seconds) and, after every
scheduled backup, a tick of its own to fill the place it freed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from harness import throwaway_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=2, help="BACKUP_NODE_CONCURRENCY")
    parser.add_argument("--concurrency", type=int, default=8, help="lifecycle worker slots")
    parser.add_argument("--time-scale", type=float, default=0.02,
                        help="devstack time scale (a vzdump is 3 PVE seconds)")
    parser.add_argument("--tick", type=float, default=5.0, help="beat's tick, seconds")
    parser.add_argument("--timeout", type=float, default=1500.0)
    args = parser.parse_args()
    with throwaway_database("bkbench"):
        return run(args)


def run(args: argparse.Namespace) -> int:
    from django.conf import settings
    from django.db import connection
    from django.db.models.functions import Now
    from django.test.utils import CaptureQueriesContext

    from lifecycle.models import AccountQuota, Backup, ContainerInstance, Operation
    from lifecycle.services.backup_schedule import backup_schedule_tick
    from tests.support.devstack import Devstack, apply_settings
    from tests.support.platform import bulk_servers, make_user, seed_platform
    from tests.support.procs import child_env
    from tests.support.workers import start_worker

    workdir = Path(tempfile.mkdtemp(prefix="bkbench-"))
    stack = Devstack(workdir, time_scale=args.time_scale)
    interval = 24 * 3600
    knobs = {"BACKUP_SCHEDULED": "1", "BACKUP_SCHEDULE_INTERVAL_SECONDS": str(interval),
             "BACKUP_NODE_CONCURRENCY": str(args.limit), "BACKUP_VERIFY": "0",
             "OPERATION_LEASE_SECONDS": "60", "LOG_LEVEL": "WARNING",
             "AGENT_TIMEOUT": "1", "AGENT_HEARTBEAT_URL":
             "http://127.0.0.1:9/api/v1/agents/{server_id}/heartbeat"}
    apply_settings(settings, {**stack.env, **knobs})
    seed_platform(nodes=("pve1", "pve2"), memory_mb=10**9, subnet_prefix=16,
                  vmids=(100, 99999))
    owner = make_user("bench").user
    AccountQuota.objects.filter(user=owner).update(max_backups=10**6, max_backup_gb=10**6)
    servers = bulk_servers(owner, args.servers)
    # Made a day ago: every one of them is due now.
    ContainerInstance.objects.update(created_at=Now() - __import__("datetime").timedelta(
        seconds=interval + 60))
    for start in range(0, len(servers), 2000):
        stack.pve("POST", "/_sim/containers", json=[
            {"vmid": s.vmid, "node": s.node.name, "hostname": s.slug,
             "tags": f"zlh;zlh-{s.id}", "status": "running"}
            for s in servers[start:start + 2000]])

    peaks_ops: Counter = Counter()
    peaks_pve: Counter = Counter()
    stop = threading.Event()

    def sample_ops() -> None:
        from django.db import connection as conn
        while not stop.is_set():
            now = Counter(Operation.objects.filter(
                state__in=("queued", "running"), kind="backup")
                .values_list("instance__node__name", flat=True))
            for node, n in now.items():
                peaks_ops[node] = max(peaks_ops[node], n)
            time.sleep(0.02)
        conn.close()

    def sample_pve() -> None:
        while not stop.is_set():
            for node in ("pve1", "pve2"):
                tasks = stack.pve_api("GET", f"/nodes/{node}/tasks",
                                      params={"limit": 50, "source": "all"}).json()["data"]
                # PVE's task list gives a finished task's exit status in `status`; a task
                # still running has none.
                running = sum(1 for t in tasks if t["type"] == "vzdump" and "status" not in t)
                peaks_pve[node] = max(peaks_pve[node], running)
            time.sleep(0.05)

    env = child_env(**stack.env, **knobs)
    worker = start_worker(env, workdir, name="bkbench", concurrency=args.concurrency,
                          queues="lifecycle")
    samplers = [threading.Thread(target=sample_ops), threading.Thread(target=sample_pve)]
    stack.pve("DELETE", "/_sim/calls")
    try:
        with CaptureQueriesContext(connection) as ctx:
            first = backup_schedule_tick()
        tick_queries = len(ctx.captured_queries)
        for t in samplers:
            t.start()
        t0 = time.monotonic()
        next_tick = t0 + args.tick
        while True:
            done = Backup.objects.filter(kind="scheduled", state="ready").count()
            if done >= args.servers:
                break
            if time.monotonic() > t0 + args.timeout:
                print(f"timed out with {done} of {args.servers} backups")
                break
            if time.monotonic() >= next_tick:  # beat's tick
                backup_schedule_tick()
                next_tick += args.tick
            time.sleep(0.2)
        wall = time.monotonic() - t0
    finally:
        stop.set()
        for t in samplers:
            t.join(timeout=10)
        worker.stop()
    made = Backup.objects.filter(kind="scheduled", state="ready").count()
    failed = Backup.objects.filter(kind="scheduled", state="failed").count()
    pve_calls = stack.pve("GET", "/_sim/calls?last=1")["total"]
    stack.stop()
    print(f"scheduled backups: {args.servers} servers on 2 nodes, all due at once, "
          f"limit {args.limit} per node, worker slots {args.concurrency}, "
          f"time scale {args.time_scale}")
    print(f"  first tick: {first['requested']} requested of {first['due']} due "
          f"({first['node_limit']} held back by the node limit); {tick_queries} queries")
    print(f"  backups made {made}, failed {failed}, in {wall:.1f} s "
          f"({made / wall if wall else 0:.1f}/s)")
    print(f"  most backup operations in flight per node: {dict(peaks_ops)} (limit {args.limit})")
    print(f"  most vzdump tasks running at once per node: {dict(peaks_pve)}")
    print(f"  Proxmox calls per scheduled backup: {pve_calls / max(made, 1):.1f}")
    over = {n: v for n, v in peaks_ops.items() if v > args.limit}
    return 1 if over or made < args.servers else 0


if __name__ == "__main__":
    sys.exit(main())
