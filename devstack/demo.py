"""`make demo`: the whole control plane on this machine, with sample servers you can watch.

Starts the devstack (fakepve with two nodes, the agents, Cloudflare, Technitium, the Velocity
bridge and Discord stand-ins), the API (gunicorn), one Celery worker per queue and one beat, on a
demo database and Redis database of their own that are reset at every start (the devstack is
new every time too, so nothing stale survives). Seeds a VMID pool and two nodes, prints an admin
login and a portal API token, creates sample servers through the REST API and shows them move
through their states. Ctrl-C or SIGTERM stops every process it started, by process id.

Nothing outlives it, however it ends. Every process it starts (and everything those start)
carries the environment marker ZLH_DEMO_RUN=<this run> / ZLH_DEMO_CHECKOUT=<this checkout>
and gets SIGTERM from the kernel when the demo dies (Linux parent-death signal); a small guard
process (`--guard`, its own session) waits on a pipe from the demo and, when the demo is gone
for whatever reason (a second Ctrl-C, SIGKILL, a supervisor's short stop timeout), stops every
process carrying the marker: SIGTERM, a bounded wait, then SIGKILL. The demo itself stops when
the process that started it (make, a shell) dies. `.demo/demo.pid` (git-ignored) records the
demo's pid, its run id and its children; a new `make demo` of the same checkout first stops a
demo still running from it (checking /proc that the pid really is that demo, started at the
recorded time, in this checkout) and every process still marked with this checkout, and only
then resets the database and Redis. Unrelated processes are never signalled: only the recorded
demo and processes whose environment carries this checkout's marker.

Options (environment):
  DEMO_SAMPLES          how many sample servers (default 3; 0 for none)
  API_PORT              the API's port (default 8000)
  DEVSTACK_TIME_SCALE   real seconds per simulated second (default 0.05)
  DEMO_EXIT_WHEN_READY  1: exit once every sample runs and every printed URL answers (for CI)
  DEMO_READY_TIMEOUT    seconds to wait for that (default 240)
  DEMO_EXIT_AFTER       exit after this many seconds whatever happens
  DEMO_STOP_GRACE       seconds the processes get to stop after SIGTERM before SIGKILL (15)
  DEMO_DATABASE_URL     default: DATABASE_URL with "_demo" appended to the database name
  DEMO_REDIS_URL        default: REDIS_URL's server, database 1
"""
from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".devstack"
LOGS = STATE / "logs"
DEMO_DIR = REPO / ".demo"
PID_FILE = DEMO_DIR / "demo.pid"
PY = sys.executable
#: The environment marker every process of a demo run carries (inherited by their children).
RUN_VAR = "ZLH_DEMO_RUN"
CHECKOUT_VAR = "ZLH_DEMO_CHECKOUT"
PR_SET_PDEATHSIG = 1

SAMPLES = [
    {"name": "demo-vanilla", "kind": "game", "variant": "vanilla", "version": "1.21.1",
     "plan": "vanilla"},
    {"name": "demo-fabric", "kind": "game", "variant": "fabric", "version": "1.21.1",
     "plan": "modded"},
    {"name": "demo-ide", "kind": "dev", "plan": "modded", "runtime": "python",
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


def say(*args: object) -> None:
    """print, but a closed terminal or pipe (make killed, a reader gone) never stops the demo
    from stopping its processes."""
    try:
        print(*args, flush=True)
    except (OSError, ValueError):
        pass


def stop_grace() -> float:
    return float(os.environ.get("DEMO_STOP_GRACE", "15") or 15)


# --- processes, as /proc sees them --------------------------------------------------------------
def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start time in clock ticks since boot) of a process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def alive(pid: int, start: int | None = None) -> bool:
    """Running (not a zombie), and if `start` is given, the same process that started then."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and (start is None or stat[3] == start)


def proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        stat = proc_stat(pid)
        pid = stat[1] if stat else 0
    return out


def demo_processes(*, checkout: str, run: str | None = None,
                   exclude: Iterable[int] = ()) -> list[int]:
    """Live processes whose environment carries this checkout's demo marker (of one run, or of
    any). Never this process, its ancestors or `exclude`."""
    skip = _ancestors() | set(exclude)
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:  # not Linux: nothing can be recognised, so nothing is signalled
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) in skip or not alive(int(entry)):
            continue
        env = proc_environ(int(entry))
        if env.get(CHECKOUT_VAR) == checkout and (run is None or env.get(RUN_VAR) == run):
            found.append(int(entry))
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(find: Callable[[], list[int]], *, grace: float) -> int:
    """Stop what `find()` returns: SIGTERM to the group leaders (gunicorn's and celery's
    masters stop their own children), SIGKILL to everything left once the leaders are gone or
    `grace` seconds passed. `find` is asked again each round, so nothing forked meanwhile
    escapes. Bounded: gives up `grace` + 10 s after it began. Returns how many it found."""
    seen: set[int] = set()
    deadline = time.monotonic() + grace
    killing = False
    while True:
        pids = find()
        if not pids or time.monotonic() > deadline + 10:
            return len(seen)
        stats = {pid: proc_stat(pid) for pid in pids}
        leaders = [pid for pid, st in stats.items() if st and st[2] == pid]
        killing = killing or not leaders or time.monotonic() >= deadline
        for pid in pids:
            if killing:
                _signal(pid, signal.SIGKILL)
            elif pid in leaders and pid not in seen:
                _signal(pid, signal.SIGTERM)
        seen.update(pids)
        time.sleep(0.1)


# --- dying with the parent -----------------------------------------------------------------------
_prctl = None


def _load_prctl():
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    return _prctl


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies; if the parent is
    already gone (it died before we asked), act on it now."""
    prctl = _load_prctl()
    if prctl is None:
        return
    parent = os.getppid()
    prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def _child_preexec(parent: int) -> Callable[[], None]:
    prctl = _load_prctl()  # resolved before the fork: the child only calls it

    def setup() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the demo died between fork and prctl
            os._exit(1)
    return setup


# --- the pid file ---------------------------------------------------------------------------------
def read_pid_file() -> dict:
    try:
        return json.loads(PID_FILE.read_text())
    except (OSError, ValueError):
        return {}


def write_pid_file(info: dict) -> None:
    DEMO_DIR.mkdir(exist_ok=True)
    (DEMO_DIR / ".gitignore").write_text("# Written by `make demo`: nothing here is tracked.\n*\n")
    tmp = PID_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(PID_FILE)


def is_this_checkouts_demo(pid: int, start: int | None) -> bool:
    """Whether `pid` is still the demo the pid file recorded: alive, started at the recorded
    time, running `devstack.demo` in this checkout."""
    if not isinstance(pid, int) or pid <= 1 or pid in _ancestors() or not alive(pid, start):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return False
    return b"devstack.demo" in cmdline and cwd == REPO.resolve()


def stop_stale_demo() -> None:
    """Before anything is reset: stop a demo of this checkout that still runs (or whatever an
    earlier one left behind), so no old worker consumes from the database and Redis we reset."""
    info = read_pid_file()
    pid = info.get("pid")
    if is_this_checkouts_demo(pid, info.get("start")):
        say(f"A demo of this checkout is still running (pid {pid}); stopping it first …")
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + stop_grace() + 15
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid, info.get("start")):
            _signal(pid, signal.SIGKILL)
            while alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.1)
        say(f"  stopped the earlier demo (pid {pid})")
    left = terminate(lambda: demo_processes(checkout=str(REPO)), grace=stop_grace())
    if left:
        say(f"  stopped {left} process(es) an earlier demo of this checkout left behind")


# --- the guard ------------------------------------------------------------------------------------
def guard(run: str, checkout: str) -> int:
    """`python -m devstack.demo --guard RUN CHECKOUT`, stdin a pipe from the demo: wait until
    the demo is gone (end of file: it exited, was killed, whatever), then stop every process
    that still carries the run's marker."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # Ctrl-C is the demo's to handle
    try:
        sys.stdin.buffer.read()
    except OSError:
        pass
    left = terminate(lambda: demo_processes(checkout=checkout, run=run), grace=stop_grace())
    if left:
        say(f"demo guard: the demo has gone; stopped {left} process(es) it left")
    return 0


class Guard:
    """The guard process of this run, and the pipe whose end tells it the demo is gone."""

    def __init__(self, env: dict[str, str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        read_end, self.write_end = os.pipe()
        with open(LOGS / "guard.log", "ab") as log:
            self.proc = subprocess.Popen(
                [PY, "-m", "devstack.demo", "--guard", env[RUN_VAR], env[CHECKOUT_VAR]],
                cwd=REPO, stdin=read_end, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        os.close(read_end)

    def release(self, timeout: float = 15) -> None:
        """The demo is done: let the guard sweep up and wait (bounded) for it to finish."""
        if self.write_end is not None:
            os.close(self.write_end)
            self.write_end = None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass


class Processes:
    def __init__(self, env: dict[str, str]) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.env = env
        self.on_start: Callable[[str, subprocess.Popen], None] | None = None
        self.keep: set[int] = set()  # the guard: never swept by the demo itself

    def _popen_options(self) -> dict:
        # Own session (Ctrl-C in the terminal reaches only the demo, which stops them in
        # order), and SIGTERM from the kernel if the demo dies without doing so.
        return {"cwd": REPO, "env": self.env, "start_new_session": True,
                "preexec_fn": _child_preexec(os.getpid())}

    def manage(self, *args: str) -> str:
        result = subprocess.run([PY, "manage.py", *args], check=True, text=True,
                                capture_output=True, timeout=600, **self._popen_options())
        return result.stdout

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        options = self._popen_options()
        if env:
            options["env"] = {**options["env"], **env}
        with open(LOGS / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **options)
        self.procs.append((name, proc))
        if self.on_start:
            self.on_start(name, proc)
        say(f"  started {name:17} pid {proc.pid:<7} log {LOGS / (name + '.log')}")

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}; see {LOGS}/{name}.log")

    def stop(self) -> None:
        """SIGTERM to every process group at once, one bounded wait for all of them, SIGKILL
        to the groups still there, then anything else still carrying this run's marker."""
        for _, proc in self.procs:
            if proc.poll() is None:
                _killpg(proc, signal.SIGTERM)
        deadline = time.monotonic() + stop_grace()
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _killpg(proc, signal.SIGKILL)
                proc.wait(timeout=5)
            say(f"  stopped {name} (pid {proc.pid})")
        left = terminate(lambda: demo_processes(checkout=self.env[CHECKOUT_VAR],
                                                run=self.env[RUN_VAR], exclude=self.keep),
                         grace=2)
        if left:
            say(f"  stopped {left} more process(es) they had left")


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group `proc` leads; only while `proc` is not reaped yet (so the group
    id cannot have been handed to anyone else)."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


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


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM while the demo was still being set up."""


def main() -> int:
    if sys.argv[1:2] == ["--guard"]:
        return guard(sys.argv[2], sys.argv[3])
    die_with_parent()  # make (or the shell) killed: the demo stops, and with it everything
    from zlh.celery import QUEUES, WORKER_ENV, WORKER_POOLS, WORKER_PROCESSES  # as deployed

    port = int(os.environ.get("API_PORT", "8000"))
    samples = int(os.environ.get("DEMO_SAMPLES", "3"))
    exit_after = float(os.environ.get("DEMO_EXIT_AFTER", "0") or 0)
    exit_when_ready = os.environ.get("DEMO_EXIT_WHEN_READY") == "1"
    ready_timeout = float(os.environ.get("DEMO_READY_TIMEOUT", "240"))
    base = f"http://127.0.0.1:{port}"
    phase = "setup"
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if phase == "stopping":
            say(f"  (stopping; every process gets at most {stop_grace():.0f} s, then SIGKILL)")
            return
        stopping = True
        if phase == "setup":
            raise Interrupted

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    STATE.mkdir(exist_ok=True)
    db_url, redis_url = _demo_urls()
    # An earlier demo of this checkout still running would consume from the database and Redis
    # reset below and talk to its own devstack: it goes first.
    stop_stale_demo()
    run = secrets.token_hex(8)
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
           "DJANGO_SETTINGS_MODULE": "zlh.settings", "PYTHONUNBUFFERED": "1",
           RUN_VAR: run, CHECKOUT_VAR: str(REPO)}
    env.pop("CELERY_BROKER_URL", None)
    env.setdefault("VELOCITY_FORWARDING_SECRET", secrets.token_urlsafe(16))
    me = proc_stat(os.getpid())
    info = {"pid": os.getpid(), "start": me[3] if me else None, "run": run,
            "checkout": str(REPO), "database": urlsplit(db_url).path.lstrip("/"),
            "redis_db": urlsplit(redis_url).path.lstrip("/"), "api_port": port,
            "guard": None, "children": {}}
    write_pid_file(info)
    procs = Processes(env)
    guard_proc = Guard(env)
    procs.keep.add(guard_proc.proc.pid)
    info["guard"] = guard_proc.proc.pid

    def record(name: str, proc: subprocess.Popen) -> None:
        stat = proc_stat(proc.pid)
        info["children"][name] = {"pid": proc.pid, "pgid": proc.pid,
                                  "start": stat[3] if stat else None}
        write_pid_file(info)

    procs.on_start = record
    write_pid_file(info)
    code = 0
    try:
        say(f"Preparing a fresh demo database ({info['database']}) …")
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

        say("Starting processes …")
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

        endpoints = load(endpoints_file)
        env.update(control_plane_env(endpoints))
        procs.start("api", [PY, "-m", "gunicorn", "zlh.wsgi", "--bind", f"127.0.0.1:{port}",
                            "--workers", "2", "--timeout", "60"])
        for queue in QUEUES:
            pool, concurrency = WORKER_POOLS[queue]
            for n in range(1, WORKER_PROCESSES.get(queue, 1) + 1):
                label = f"worker-{queue}" + (f"-{n}" if n > 1 else "")
                procs.start(label, [
                    PY, "-m", "celery", "-A", "zlh", "worker", "-Q", queue, "-P", pool,
                    "--concurrency", str(concurrency), "-n", f"{queue}{n}@%h",
                    "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
                    env=WORKER_ENV.get(queue))
        procs.start("beat", [PY, "-m", "celery", "-A", "zlh", "beat", "--loglevel", "INFO"])
        wait_ready(base, procs)
        # The IDE proxy reads revoked IDE tokens from the API (as the real one must).
        ide_sim = endpoints["ide"]["sim"]
        http("POST", f"{ide_sim}/_sim/ide/config",
             body={"revocations_url": f"{base}/api/v1/ide/revoked"})

        created = {}
        ides: dict[str, str] = {}  # dev samples with code-server: id -> name, until a URL is out
        connect = []
        for body in SAMPLES[:samples]:
            status, data = http("POST", f"{base}/api/v1/servers", token, body,
                                {"Idempotency-Key": f"demo-{body['name']}"})
            if status == 202:
                created[data["id"]] = body["name"]
                if data.get("address"):
                    connect.append(f"  {body['name'] + ':':15}players join at {data['address']}")
                if data.get("ide_url"):
                    connect.append(f"  {body['name'] + ':':15}IDE at {data['ide_url']}")
                    ides[data["id"]] = body["name"]
            else:
                say(f"  sample {body['name']}: {status} {data.get('message')}")

        urls = {
            "Admin": f"{base}/admin/",
            "API docs": f"{base}/api/docs/",
            "Reconciler": f"{base}/admin/reconciler/controllerrun/dashboard/",
            "Servers (API)": f"{base}/api/v1/servers",
        }
        say()
        say(f"  Admin login:   admin / {password}")
        for label, url in urls.items():
            say(f"  {label + ':':15}{url}")
        say(f"  API token:     {token}")
        say(f"  Try:           curl -H 'Authorization: Bearer {token}' {base}/api/v1/servers")
        for line in connect:
            say(line)
        say("  Ctrl-C stops everything.\n")

        phase = "running"
        ide_checks: dict[str, str] = {}
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
                say(time.strftime("%H:%M:%S"), "samples:")
                say(view)
                last = view
            for sid in [sid for sid in ides if states.get(sid) == "running"]:
                # Running: a token for its IDE (opens once, within IDE_TOKEN_TTL_SECONDS).
                status, data = http("POST", f"{base}/api/v1/servers/{sid}/ide-token", token)
                if status == 201:
                    say(f"  {ides[sid] + ':':15}open the IDE (once, before "
                        f"{data['expires_at']}): {data['url']}")
                    if exit_when_ready:
                        ide_checks[sid] = ides[sid]
                else:
                    say(f"  {ides[sid]}: no IDE token: {status} {data.get('message')}")
                del ides[sid]
            if exit_when_ready and created and all(v == "running" for v in states.values()):
                code = _check_urls(urls, token) | _check_ides(base, ide_checks, token)
                say("All samples are running." if code == 0 else "Some URL did not answer.")
                break
            if exit_when_ready and time.monotonic() - started > ready_timeout:
                say(f"Samples not running after {ready_timeout:.0f}s: {states}")
                code = 1
                break
            if exit_after and time.monotonic() - started > exit_after:
                break
            time.sleep(1)
    except Interrupted:
        code = 130
    finally:
        phase = "stopping"
        say("Stopping …")
        procs.stop()
        guard_proc.release()
        if read_pid_file().get("run") == run:
            PID_FILE.unlink(missing_ok=True)
    return code


def _check_urls(urls: dict[str, str], token: str) -> int:
    bad = 0
    for label, url in urls.items():
        status, _ = http("GET", url, token if "/api/v1/" in url else None)
        ok = status in (200, 302)
        say(f"  {label:15}{status} {'ok' if ok else 'FAILED'}")
        bad += not ok
    return 1 if bad else 0


def _check_ides(base: str, servers: dict[str, str], token: str) -> int:
    """Each IDE opens through the IDE proxy with a token of its own (the printed one stays
    unused): the token is exchanged for a session and the IDE answers 200."""
    bad = 0
    for sid, name in servers.items():
        status, data = http("POST", f"{base}/api/v1/servers/{sid}/ide-token", token)
        ok = False
        if status == 201:
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            try:
                with opener.open(data["url"], timeout=10) as resp:
                    ok = resp.status == 200 and b"code-server" in resp.read(65536)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                ok = False
        say(f"  {name + ' IDE':15}{status} {'ok' if ok else 'FAILED'}")
        bad += not ok
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Interrupted:  # before anything was started
        sys.exit(130)
