"""Run a workload in many OS processes at once, against the test database and Redis.

Each child imports Django, connects, reports READY, then blocks until every child is ready and
the parent says GO, so the work really overlaps. Results come back as JSON. Every wait is
bounded; a child that hangs or fails fails the test with its stderr.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.db import connection

REPO = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child process: same settings, the *test* database."""
    s = connection.settings_dict
    url = (f"mysql://{s['USER']}:{s['PASSWORD']}@{s['HOST'] or '127.0.0.1'}:"
           f"{s['PORT'] or 3306}/{s['NAME']}")
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": url,
        "PYTHONPATH": str(REPO),
        "DB_CONN_MAX_AGE": "0",
    })
    env.update(extra)
    return env


def run_parallel(target: str, args_list: list[dict[str, Any]], *, timeout: float = 300,
                 env: dict[str, str] | None = None,
                 timing: dict[str, float] | None = None) -> list[Any]:
    """Start one process per entry of `args_list` running `target(**args)`; return results in
    the same order. `timing`, if given, receives the monotonic times of GO and of the end."""
    env = env or child_env()
    procs = []
    for args in args_list:
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.support.child", target],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=REPO, env=env, text=True,
        )
        p.stdin.write(json.dumps(args) + "\n")
        p.stdin.flush()
        procs.append(p)
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            line = _readline(p, deadline)
            if line.strip() != "READY":
                raise AssertionError(f"child did not get ready: {line!r}\n{_stderr(p)}")
        if timing is not None:
            timing["go"] = time.monotonic()
        for p in procs:
            p.stdin.write("GO\n")
            p.stdin.flush()
        results = []
        for p in procs:
            remaining = max(1.0, deadline - time.monotonic())
            out, err = p.communicate(timeout=remaining)
            if p.returncode != 0:
                raise AssertionError(f"child exited {p.returncode}:\n{err[-4000:]}")
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            if not lines:
                raise AssertionError(f"child printed no result:\n{out[-2000:]}\n{err[-4000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
        if timing is not None:
            timing["done"] = time.monotonic()
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def _readline(p: subprocess.Popen, deadline: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out waiting for a child process")
            if sel.select(timeout=min(remaining, 1.0)):
                return p.stdout.readline()
            if p.poll() is not None:
                return p.stdout.readline()
    finally:
        sel.close()


def _stderr(p: subprocess.Popen) -> str:
    if p.poll() is None:
        p.kill()
    try:
        return p.stderr.read()[-4000:]
    except Exception:
        return ""
