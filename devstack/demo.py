"""`make demo`: run the control plane on this machine and show sample servers moving.

Starts the devstack (fakepve and the agents), the API (gunicorn), a Celery worker for every
queue and one beat, seeds a VMID pool and two nodes if the database has none, prints an admin login and a portal API token, creates
sample servers through the REST API and shows their progress. Ctrl-C or SIGTERM stops every
process it started, by process id.

Options (environment): DEMO_SAMPLES (default 3, 0 for none), API_PORT (default 8000),
DEVSTACK_TIME_SCALE (default 0.05), DEMO_EXIT_AFTER (seconds; exit on its own, for CI),
DATABASE_URL / REDIS_URL as usual.
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


def manage(*args: str, capture: bool = False) -> str:
    result = subprocess.run([PY, "manage.py", *args], cwd=REPO, check=True, text=True,
                            capture_output=capture, timeout=300)
    return result.stdout if capture else ""


def seed() -> None:
    """Pools and nodes for a first run; an existing setup is left as it is."""
    manage("vmidpool", "--range", "5000-5999")
    manage("node", "add", "pve1", "--memory-mb", "65536", "--cores", "16",
           "--subnet", "10.10.1.0/24", "--gateway", "10.10.1.1", "--ports", "30000-30999")
    manage("node", "add", "pve2", "--memory-mb", "65536", "--cores", "16",
           "--subnet", "10.10.2.0/24", "--gateway", "10.10.2.1", "--ports", "30000-30999")


def admin_login() -> tuple[str, str]:
    password = secrets.token_urlsafe(12)
    code = (
        "from django.contrib.auth import get_user_model as g;U=g();"
        "u,_=U.objects.get_or_create(username='admin');u.is_staff=u.is_superuser=True;"
        f"u.set_password({password!r});u.save()"
    )
    manage("shell", "--no-imports", "-c", code)
    return "admin", password


class Processes:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.env = dict(os.environ)

    def start(self, name: str, argv: list[str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(LOGS / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=self.env)
        self.procs.append((name, proc))
        print(f"  started {name:8} pid {proc.pid}  (log: {LOGS / (name + '.log')})")

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}; see {LOGS}/{name}.log")

    def stop(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in self.procs:
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
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


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
    base = f"http://127.0.0.1:{port}"
    STATE.mkdir(exist_ok=True)

    print("Preparing the database …")
    manage("collectstatic", "--noinput", capture=True)
    seed()
    user, password = admin_login()
    token = manage("apitoken", "demo", "--create", capture=True).strip().splitlines()[-1]

    procs = Processes()
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("Starting processes …")
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

        procs.env.update(control_plane_env(load(endpoints_file)))
        procs.env.setdefault("VELOCITY_FORWARDING_SECRET", secrets.token_urlsafe(16))
        procs.start("api", [PY, "-m", "gunicorn", "zlh.wsgi", "--bind", f"127.0.0.1:{port}",
                            "--workers", "2", "--timeout", "60"])
        procs.start("worker", [PY, "-m", "celery", "-A", "zlh", "worker", "--loglevel", "INFO",
                               "-Q", "lifecycle,repair,edge,notify", "--concurrency", "2",
                               "-n", "demo@%h"])
        procs.start("beat", [PY, "-m", "celery", "-A", "zlh", "beat", "--loglevel", "INFO"])
        wait_ready(base, procs)

        created = []
        for body in SAMPLES[:samples]:
            status, data = http("POST", f"{base}/api/v1/servers", token, body,
                                {"Idempotency-Key": f"demo-{body['name']}"})
            if status == 202:
                created.append(data["id"])
            else:
                print(f"  sample {body['name']}: {status} {data.get('message')}")

        print()
        print(f"  Admin:            {base}/admin/   (user {user}, password {password})")
        print(f"  API docs:         {base}/api/docs/")
        print(f"  API token (demo): {token}")
        print(f"  Try:              curl -H 'Authorization: Bearer {token}' {base}/api/v1/servers")
        print("  Ctrl-C stops everything.\n")

        started = time.monotonic()
        last = ""
        while not stopping:
            procs.check()
            lines = []
            for sid in created:
                _, s = http("GET", f"{base}/api/v1/servers/{sid}/status", token)
                op = s.get("operation") or {}
                lines.append(f"  {sid[:8]}  {s.get('status', '?'):13} desired {s.get('desired_state', '?'):8}"
                             f" op {op.get('kind', '-')}:{op.get('state', '-')}")
            view = "\n".join(lines)
            if view != last:
                print(time.strftime("%H:%M:%S"), "servers:")
                print(view)
                last = view
            if exit_after and time.monotonic() - started > exit_after:
                break
            time.sleep(2)
    finally:
        print("Stopping …")
        procs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
