"""`make demo`: the whole control plane on this machine, with sample servers you can watch.

Starts the devstack (fakepve with two nodes, the agents, Cloudflare, Technitium, the Velocity
bridge and Discord stand-ins), the API (gunicorn), one Celery worker per queue and one beat, on a
demo database and Redis database of their own that are reset at every start (the devstack is
new every time too, so nothing stale survives). Seeds a VMID pool and two nodes, prints an admin
login and a portal API token, creates sample servers through the REST API and shows them move
through their states. Ctrl-C or SIGTERM stops every process it started, by process id.

Options (environment):
  DEMO_SAMPLES          how many sample servers (default 3; 0 for none)
  API_PORT              the API's port (default 8000)
  DEVSTACK_TIME_SCALE   real seconds per simulated second (default 0.05)
  DEMO_EXIT_WHEN_READY  1: exit once every sample runs and every printed URL answers (for CI)
  DEMO_READY_TIMEOUT    seconds to wait for that (default 240)
  DEMO_EXIT_AFTER       exit after this many seconds whatever happens
  DEMO_DATABASE_URL     default: DATABASE_URL with "_demo" appended to the database name
  DEMO_REDIS_URL        default: REDIS_URL's server, database 1
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from zlh.celery import QUEUES  # one worker per queue, as deployed

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".devstack"
LOGS = STATE / "logs"
PY = sys.executable

SAMPLES = [
    {"name": "demo-vanilla", "kind": "game", "variant": "vanilla", "version": "1.21.1",
     "plan": "vanilla"},
    {"name": "demo-fabric", "kind": "game", "variant": "fabric", "version": "1.21.1",
     "plan": "modded"},
    {"name": "demo-ide", "kind": "dev", "plan": "vanilla", "runtime": "python",
     "runtime_version": "3.12", "enable_code_server": True},
]


def _demo_urls() -> tuple[str, str]:
    db = os.environ.get("DEMO_DATABASE_URL")
    if not db:
        parts = urlsplit(os.environ.get("DATABASE_URL", "mysql://zlh:zlh@127.0.0.1:3306/zlh"))
        db = urlunsplit(parts._replace(path=parts.path.rstrip("/") + "_demo"))
    redis_url = os.environ.get("DEMO_REDIS_URL")
    if not redis_url:
        parts = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        redis_url = urlunsplit(parts._replace(path="/1"))
    return db, redis_url


def _reset_database(url: str) -> None:
    """Drop and re-create the demo database (never the one in DATABASE_URL)."""
    import MySQLdb

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name.replace("_", "").isalnum() or not name.endswith("_demo"):
        raise SystemExit(f"refusing to reset {name!r}: the demo only resets a *_demo database")
    conn = MySQLdb.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                           user=parts.username or "", password=parts.password or "",
                           connect_timeout=10)
    try:
        cur = conn.cursor()
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        conn.close()


def _reset_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5).flushdb()


class Processes:
    def __init__(self, env: dict[str, str]) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.env = env

    def manage(self, *args: str) -> str:
        result = subprocess.run([PY, "manage.py", *args], cwd=REPO, check=True, text=True,
                                capture_output=True, timeout=600, env=self.env)
        return result.stdout

    def start(self, name: str, argv: list[str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(LOGS / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=self.env)
        self.procs.append((name, proc))
        print(f"  started {name:17} pid {proc.pid:<7} log {LOGS / (name + '.log')}")

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}; see {LOGS}/{name}.log")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            print(f"  stopped {name} (pid {proc.pid})")


def http(method: str, url: str, token: str | None = None, body: dict | None = None,
         headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else {})
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, (json.loads(raw) if raw[:1] in (b"{", b"[") else {})


def wait_ready(base: str, procs: Processes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        try:
            if http("GET", f"{base}/readyz")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the API did not become ready within {timeout:.0f}s; see {LOGS}/api.log")


def main() -> int:
    port = int(os.environ.get("API_PORT", "8000"))
    samples = int(os.environ.get("DEMO_SAMPLES", "3"))
    exit_after = float(os.environ.get("DEMO_EXIT_AFTER", "0") or 0)
    exit_when_ready = os.environ.get("DEMO_EXIT_WHEN_READY") == "1"
    ready_timeout = float(os.environ.get("DEMO_READY_TIMEOUT", "240"))
    base = f"http://127.0.0.1:{port}"
    STATE.mkdir(exist_ok=True)
    db_url, redis_url = _demo_urls()
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
           "DJANGO_SETTINGS_MODULE": "zlh.settings", "PYTHONUNBUFFERED": "1"}
    env.pop("CELERY_BROKER_URL", None)
    env.setdefault("VELOCITY_FORWARDING_SECRET", secrets.token_urlsafe(16))
    procs = Processes(env)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"Preparing a fresh demo database ({urlsplit(db_url).path.lstrip('/')}) …")
    _reset_database(db_url)
    _reset_redis(redis_url)
    procs.manage("migrate", "--noinput")
    procs.manage("collectstatic", "--noinput")
    procs.manage("vmidpool", "--range", "5000-5999")
    for i in (1, 2):
        procs.manage("node", "add", f"pve{i}", "--memory-mb", "65536", "--cores", "16",
                     "--subnet", f"10.10.{i}.0/24", "--gateway", f"10.10.{i}.1",
                     "--ports", f"3{i - 1}000-3{i - 1}999")
    password = secrets.token_urlsafe(12)
    procs.manage("shell", "--no-imports", "-c", (
        "from django.contrib.auth import get_user_model as g;U=g();"
        "u,_=U.objects.get_or_create(username='admin');u.is_staff=u.is_superuser=True;"
        f"u.set_password({password!r});u.save()"))
    token = procs.manage("apitoken", "demo", "--create").strip().splitlines()[-1]
    procs.manage("setquota", "demo", "--max-servers", "20", "--max-memory-mb", "65536")

    print("Starting processes …")
    code = 0
    try:
        endpoints_file = STATE / "endpoints.json"
        endpoints_file.unlink(missing_ok=True)
        procs.start("devstack", [PY, "-m", "devstack.launcher", "--endpoints", str(endpoints_file),
                                 "--time-scale", os.environ.get("DEVSTACK_TIME_SCALE", "0.05")])
        deadline = time.monotonic() + 60
        while not endpoints_file.exists():
            procs.check()
            if time.monotonic() > deadline:
                raise SystemExit(f"the devstack did not start; see {LOGS}/devstack.log")
            time.sleep(0.2)
        from devstack.endpoints import control_plane_env, load

        env.update(control_plane_env(load(endpoints_file)))
        procs.start("api", [PY, "-m", "gunicorn", "zlh.wsgi", "--bind", f"127.0.0.1:{port}",
                            "--workers", "2", "--timeout", "60"])
        for queue in QUEUES:
            procs.start(f"worker-{queue}", [
                PY, "-m", "celery", "-A", "zlh", "worker", "-Q", queue, "--concurrency", "2",
                "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"])
        procs.start("beat", [PY, "-m", "celery", "-A", "zlh", "beat", "--loglevel", "INFO"])
        wait_ready(base, procs)

        created = {}
        for body in SAMPLES[:samples]:
            status, data = http("POST", f"{base}/api/v1/servers", token, body,
                                {"Idempotency-Key": f"demo-{body['name']}"})
            if status == 202:
                created[data["id"]] = body["name"]
            else:
                print(f"  sample {body['name']}: {status} {data.get('message')}")

        urls = {
            "Admin": f"{base}/admin/",
            "API docs": f"{base}/api/docs/",
            "Reconciler": f"{base}/admin/reconciler/controllerrun/dashboard/",
            "Servers (API)": f"{base}/api/v1/servers",
        }
        print()
        print(f"  Admin login:   admin / {password}")
        for label, url in urls.items():
            print(f"  {label + ':':15}{url}")
        print(f"  API token:     {token}")
        print(f"  Try:           curl -H 'Authorization: Bearer {token}' {base}/api/v1/servers")
        print("  Ctrl-C stops everything.\n")

        started = time.monotonic()
        last = ""
        while not stopping:
            procs.check()
            states = {}
            lines = []
            for sid, name in created.items():
                _, s = http("GET", f"{base}/api/v1/servers/{sid}/status", token)
                op = s.get("operation") or {}
                states[sid] = s.get("status")
                lines.append(f"  {name:14} {s.get('status', '?'):13} wants "
                             f"{s.get('desired_state', '?'):8} {op.get('kind', '-')}:"
                             f"{op.get('state', '-')} {('step ' + op['step']) if op.get('step') else ''}")
            view = "\n".join(lines)
            if view != last:
                print(time.strftime("%H:%M:%S"), "samples:")
                print(view)
                last = view
            if exit_when_ready and created and all(v == "running" for v in states.values()):
                code = _check_urls(urls, token)
                print("All samples are running." if code == 0 else "Some URL did not answer.")
                break
            if exit_when_ready and time.monotonic() - started > ready_timeout:
                print(f"Samples not running after {ready_timeout:.0f}s: {states}")
                code = 1
                break
            if exit_after and time.monotonic() - started > exit_after:
                break
            time.sleep(1)
    finally:
        print("Stopping …")
        procs.stop()
    return code


def _check_urls(urls: dict[str, str], token: str) -> int:
    bad = 0
    for label, url in urls.items():
        status, _ = http("GET", url, token if "/api/v1/" in url else None)
        ok = status in (200, 302)
        print(f"  {label:15}{status} {'ok' if ok else 'FAILED'}")
        bad += not ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
