#!/usr/bin/env python
"""A burst: N creates through the HTTP API at once (a launch day, a node back with its servers),
against the devstack at a time scale where one provision alone takes a few seconds, with the
deployed worker layout (zlh.celery.WORKER_POOLS / WORKER_PROCESSES: the lifecycle queue in
threaded processes).

Prints the time one provision takes alone, the time until all N run (and the ratio), the
workers' memory (RSS of every worker process), the most operations in flight at once (and how
many of them waited for their game without holding a worker thread), and the most Proxmox tasks
of each kind seen at once on each node against the per-node limits.

Our own waits are the production defaults scaled by the time scale like the stand-ins' (slot
looks 2 s → 0.5 s, readiness held 5 s → 1.25 s, looked at every 3 s → 0.75 s).

    .venv/bin/python bench/burst.py [--servers 100] [--time-scale 0.25]
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import REPO, throwaway_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--time-scale", type=float, default=0.25,
                        help="devstack time scale (create 4, install 6, boot 3 PVE seconds)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--ready-hold", type=float, default=1.25,
                        help="READY_HOLD_SECONDS: how long a worker thread polls for the game "
                             "to be ready before the operation is queued to look again "
                             "(the default 5 s at the time scale)")
    parser.add_argument("--ready-look", type=float, default=0.75,
                        help="READY_LOOK_SECONDS: how often a queued wait looks again "
                             "(the default 3 s at the time scale)")
    parser.add_argument("--log-level", default="WARNING",
                        help="the workers' log level (INFO: every operation's steps, with "
                             "times, in the work directory printed at the end)")
    parser.add_argument("--slot-wait", type=float, default=0.5,
                        help="PROXMOX_SLOT_WAIT_SECONDS: how often an operation waiting for a "
                             "node's place looks again when no freed place wakes it first")
    parser.add_argument("--accounts", type=int, default=1,
                        help="the creates spread over this many accounts (1: one account "
                             "makes all N, every create waits on that account's quota row)")
    parser.add_argument("--lifecycle-processes", type=int, default=None,
                        help="lifecycle worker processes (default: the deployed layout's, "
                             "zlh.celery.WORKER_PROCESSES); one process runs Python on one "
                             "core at a time")
    parser.add_argument("--lifecycle-threads", type=int, default=None,
                        help="threads per lifecycle process (default: the deployed layout's)")
    args = parser.parse_args()
    with throwaway_database("burst"):
        return run(args)


def _rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(ln.split()[1] for ln in status.splitlines()
                              if ln.startswith("VmRSS:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: argparse.Namespace) -> int:
    import requests
    from django.conf import settings

    from lifecycle.models import ContainerInstance, Operation
    from lifecycle.choices import WAITING_FOR_READY as READY_KEY
    from lifecycle.services.node_slots import node_slot_limit
    from tests.support.devstack import Devstack, apply_settings
    from tests.support.platform import game_body, make_user, seed_platform
    from tests.support.procs import child_env
    from tests.support.workers import start_worker
    from zlh.celery import QUEUES, WORKER_POOLS, WORKER_PROCESSES

    workdir = Path(tempfile.mkdtemp(prefix="burst-"))
    stack = Devstack(workdir, time_scale=args.time_scale)
    procs: list = []
    api = None
    try:
        env = {**stack.env, "LOG_LEVEL": args.log_level, "OPERATION_LEASE_SECONDS": "60",
               "PROXMOX_SLOT_WAIT_SECONDS": str(args.slot_wait),
               "READY_HOLD_SECONDS": str(args.ready_hold),
               "READY_LOOK_SECONDS": str(args.ready_look), "BACKUP_SCHEDULED": "0",
               "BACKUP_VERIFY": "0", "RECONCILER_EXPECT_HEARTBEATS": "0",
               "AGENT_HEARTBEAT_URL": "http://127.0.0.1:9/api/v1/agents/{server_id}/heartbeat"}
        apply_settings(settings, env)
        seed_platform(vmids=(5000, 5000 + args.servers + 99), memory_mb=100_000_000,
                      ports=(30000, 30000 + args.servers + 99), subnet_prefix=20)
        users = [make_user(f"burst{i}", max_servers=100_000) for i in range(args.accounts)]
        pool, concurrency = WORKER_POOLS["lifecycle"]
        processes = args.lifecycle_processes or WORKER_PROCESSES.get("lifecycle", 1)
        concurrency = args.lifecycle_threads or concurrency
        for i in range(processes):
            procs.append(start_worker(child_env(**env), workdir, name=f"lifecycle{i}",
                                      pool=pool, concurrency=concurrency, queues="lifecycle"))
        others = [q for q in QUEUES if q != "lifecycle"]
        side_pool, side_concurrency = WORKER_POOLS[others[0]]
        procs.append(start_worker(child_env(**env), workdir, name="side", pool=side_pool,
                                  concurrency=side_concurrency, queues=",".join(others)))
        port = _free_port()
        api_log = open(workdir / "api.log", "wb")
        api = subprocess.Popen([sys.executable, "-m", "gunicorn", "zlh.wsgi", "--bind",
                                f"127.0.0.1:{port}", "--workers", "3", "--timeout", "60"],
                               cwd=REPO, env=child_env(**env), stdout=api_log,
                               stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}/api/v1"
        http = requests.Session()
        # The portal's side: one kept connection per request in flight (not urllib3's 10).
        http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=args.servers))
        http.headers["Authorization"] = f"Bearer {users[0].token}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if http.get(base.replace("/api/v1", "") + "/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                print("the API did not start")
                return 1
            time.sleep(0.2)

        def create(name: str) -> str:
            digits = "".join(ch for ch in name if ch.isdigit())
            user = users[int(digits or 0) % len(users)]  # round robin over the accounts
            resp = http.post(f"{base}/servers", json=game_body(name), timeout=60,
                             headers={"Idempotency-Key": name,
                                      "Authorization": f"Bearer {user.token}"})
            resp.raise_for_status()
            return resp.json()["id"]

        threads = processes * concurrency
        flight = {"active": 0, "installing": 0}

        def wait_running(ids: list[str], peak_rss: list[float]) -> float:
            started = sampled = time.monotonic()
            while ContainerInstance.objects.filter(pk__in=ids, status="running").count() < len(
                    ids):
                if time.monotonic() - sampled >= 1.0:  # the observer stays light: /proc at 1 Hz
                    peak_rss[0] = max(peak_rss[0], sum(_rss_mb(p.pid) for p in procs))
                    sampled = time.monotonic()
                # Operations in flight (running, or queued: not yet claimed, waiting for a
                # node's place or for their game) and those waiting for their game.
                active = Operation.objects.filter(instance_id__in=ids,
                                                  state__in=("queued", "running"))
                flight["active"] = max(flight["active"], active.count())
                flight["installing"] = max(flight["installing"], active.filter(
                    state="queued", waiting_for=READY_KEY).count())
                failed = ContainerInstance.objects.filter(pk__in=ids, status="failed").count()
                if failed or time.monotonic() - started > args.timeout:
                    raise SystemExit(f"{failed} failed / timed out")
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            peak_rss[0] = max(peak_rss[0], sum(_rss_mb(p.pid) for p in procs))
            return elapsed

        rss = [0.0]
        t0 = time.monotonic()
        single_id = create("alone")
        wait_running([single_id], rss)
        single = time.monotonic() - t0
        stack.pve("DELETE", "/_sim/task-peaks")
        idle_rss = sum(_rss_mb(p.pid) for p in procs)
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.servers) as pool_:
            ids = list(pool_.map(create, [f"burst{i:04d}" for i in range(args.servers)]))
        accepted = time.monotonic() - t0
        wait_running(ids, rss)
        everything = time.monotonic() - t0
        peaks = stack.pve("GET", "/_sim/task-peaks")
        kinds = {"vzcreate": "create", "vzstart": "start", "vzshutdown": "stop",
                 "vzstop": "stop", "vzdump": "backup", "vzrestore": "restore"}
        print(f"burst: {args.servers} creates through the API at once by {args.accounts} "
              f"account(s), time scale "
              f"{args.time_scale}, lifecycle workers: {processes} process(es) of {pool} x "
              f"{concurrency}")
        print(f"  one provision alone            {single:.1f} s")
        print(f"  all {args.servers} accepted (202)         {accepted:.1f} s")
        print(f"  all {args.servers} running              {everything:.1f} s  "
              f"({everything / single:.2f}x one alone; target <= 3x)")
        print(f"  worker RSS idle / peak         {idle_rss:.0f} / {rss[0]:.0f} MB "
              f"(target <= 1024)")
        print(f"  most in flight at once         {flight['active']} operations on {threads} "
              f"worker threads; {flight['installing']} of them waiting for their game "
              f"without a thread")
        over = False
        for key, value in sorted(peaks.items()):
            node, ttype = key.split("/")
            if ttype not in kinds:
                continue
            limit = node_slot_limit(kinds[ttype])
            over |= bool(limit) and value["peak"] > limit
            print(f"  most {ttype:10} at once on {node}  {value['peak']} (limit {limit})")
        print(f"  logs in                        {workdir}")
        ok = not over and everything <= 3 * single and rss[0] <= 1024
        print("  targets met" if ok else "  targets NOT met")
        return 0 if not over else 1
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        for p in procs:
            p.stop()
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
