"""`make demo` leaves nothing behind, however it ends, and a new one first stops an old one.

Each test starts the real demo (`make demo`, no samples, kept running), takes a snapshot of
every process below it from /proc (the devstack, gunicorn's master and workers, each Celery
worker with its pool, beat, the guard) with their start times, ends it some hard way, and
asserts that within a bounded time none of those processes is alive any more. The snapshot
does not come from the demo's own pid file, so the tests say the same thing about a demo that
keeps no records. Whatever survives a failing test is killed at the end (checked by start
time, so a reused pid is never hit)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
PID_FILE = REPO / ".demo" / "demo.pid"
pytestmark = pytest.mark.deploy

#: How long the processes of a demo may take to go after it was killed (the demo's stop grace
#: is 15 s; a Celery worker's warm shutdown and gunicorn's graceful stop take a few seconds).
GONE_WITHIN = 60


# --- /proc ------------------------------------------------------------------------------------
def _stat(pid: int):
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])  # state, ppid, start time


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X") and st[2] == start


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every live process below `root`: pid -> (start time, command line)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st and st[0] not in ("Z", "X"):
                children.setdefault(st[1], []).append(int(entry))
    out, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            st = _stat(pid)
            if st:
                out[pid] = (st[2], _cmdline(pid))
                todo.append(pid)
    return out


def _survivors(snapshot: dict[int, tuple[int, str]]) -> dict[int, str]:
    return {pid: cmd for pid, (start, cmd) in snapshot.items() if _alive(pid, start)}


def _wait_gone(snapshot, timeout: float = GONE_WITHIN) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    left = _survivors(snapshot)
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = _survivors(snapshot)
    return left


def _kill_survivors(snapshot) -> None:
    for pid, (start, _) in snapshot.items():
        if _alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- running the demo -----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_env(**over: str) -> dict[str, str]:
    """The environment `make demo` gets in these tests: not the tests' settings; its own
    database (zlh_demo on the tests' MariaDB server) and Redis database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TEST_"))}
    env.pop("REDIS_URL", None)  # tests.settings rewrote it; the demo picks its own database
    if "DEMO_DATABASE_URL" not in env:
        parts = urlsplit(env.get("DATABASE_URL", "mysql://zlh:zlh@127.0.0.1:3306/zlh"))
        env["DEMO_DATABASE_URL"] = urlunsplit(parts._replace(path="/zlh_demo"))
    env.update({"DEVSTACK_TIME_SCALE": "0.02", "API_PORT": str(_free_port())})
    env.pop("DEMO_EXIT_WHEN_READY", None)
    env.pop("DEMO_EXIT_AFTER", None)
    env.update(over)
    return env


class Demo:
    """`make demo` in a session of its own, its output collected line by line."""

    def __init__(self, **env: str) -> None:
        self.make = subprocess.Popen(["make", "demo"], cwd=REPO, env=demo_env(**env),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.snapshot: dict[int, tuple[int, str]] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.make.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or (self.make.poll() is not None
                                               and not self._reader.is_alive()):
                raise AssertionError(f"{text!r} not seen:\n{self.output[-4000:]}")
            time.sleep(0.1)

    def demo_pid(self) -> int:
        """The python process `make` runs (found from /proc, not from the demo's records)."""
        for pid in _descendants(self.make.pid):
            if _stat(pid)[1] == self.make.pid and "devstack.demo" in _cmdline(pid):
                return pid
        raise AssertionError(f"no devstack.demo below make:\n{self.output[-3000:]}")

    def ready(self) -> dict[int, tuple[int, str]]:
        """Wait until the demo runs; snapshot it (make, the demo and everything below)."""
        self.wait_for("Ctrl-C stops everything.")
        time.sleep(1)  # the pools have forked their children by now; take them in too
        st = _stat(self.make.pid)
        self.snapshot = {self.make.pid: (st[2], "make demo"), **_descendants(self.make.pid)}
        demo = self.demo_pid()
        commands = " | ".join(cmd for _, cmd in self.snapshot.values())
        for what in ("devstack.launcher", "gunicorn zlh.wsgi", "celery -A zlh worker -Q lifecycle",
                     "celery -A zlh worker -Q notify", "celery -A zlh beat"):
            assert what in commands, (what, commands)
        gunicorns = [c for _, c in self.snapshot.values() if "gunicorn zlh.wsgi" in c]
        assert len(gunicorns) >= 3, gunicorns  # the master and its two workers
        assert demo in self.snapshot
        return self.snapshot

    def cleanup(self) -> None:
        _kill_survivors(self.snapshot)
        if self.make.poll() is None:
            os.killpg(self.make.pid, signal.SIGKILL)
        self.make.wait(timeout=30)
        self._reader.join(timeout=10)


@pytest.fixture
def demos():
    started: list[Demo] = []

    def start(**env: str) -> Demo:
        demo = Demo(**env)
        started.append(demo)
        return demo

    yield start
    for demo in reversed(started):
        demo.cleanup()


def _recorded_run() -> str | None:
    try:
        return json.loads(PID_FILE.read_text()).get("run")
    except (OSError, ValueError):
        return None


def _marked(run: str) -> list[int]:
    """Live processes carrying the demo run's environment marker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not _stat(int(entry)) or _stat(int(entry))[0] in ("Z", "X"):
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ZLH_DEMO_RUN={run}".encode() in env:
            found.append(int(entry))
    return found


# --- the tests -------------------------------------------------------------------------------
def test_sigkill_of_the_demo_leaves_no_process_behind(demos):
    demo = demos(DEMO_SAMPLES="0")
    snapshot = demo.ready()
    run = _recorded_run()
    os.kill(demo.demo_pid(), signal.SIGKILL)
    left = _wait_gone(snapshot)
    assert left == {}, f"still running {GONE_WITHIN}s after the demo was killed: {left}"
    assert run and _marked(run) == []


def test_sigkill_of_make_takes_the_demo_and_everything_with_it(demos):
    demo = demos(DEMO_SAMPLES="0")
    snapshot = demo.ready()
    os.kill(demo.make.pid, signal.SIGKILL)
    left = _wait_gone(snapshot)
    assert left == {}, f"still running {GONE_WITHIN}s after make was killed: {left}"
    # It stopped the way Ctrl-C does: every process by name, and the pid file is gone.
    demo.make.wait(timeout=10)
    demo._reader.join(timeout=10)
    assert "stopped beat (pid" in demo.output and "stopped api (pid" in demo.output
    assert not PID_FILE.exists()


def test_the_parent_death_signal_alone_stops_every_child(demos):
    """Without the guard (killed first), the kernel's SIGTERM to each direct child on the
    demo's death is enough: gunicorn's and Celery's masters stop their own children."""
    demo = demos(DEMO_SAMPLES="0")
    snapshot = demo.ready()
    guard = json.loads(PID_FILE.read_text())["guard"]
    assert "--guard" in snapshot[guard][1]
    os.kill(guard, signal.SIGKILL)
    os.kill(demo.demo_pid(), signal.SIGKILL)
    left = _wait_gone(snapshot)
    assert left == {}, f"still running {GONE_WITHIN}s after the demo was killed: {left}"


def test_a_new_demo_stops_a_running_one_before_it_resets_anything(demos):
    first = demos(DEMO_SAMPLES="0")
    old = first.ready()
    old_demo = first.demo_pid()

    second = demos(DEMO_SAMPLES="0")
    second.wait_for("Preparing a fresh demo database", timeout=120)
    # The reset follows that line at once: by then nothing of the first demo may be left.
    assert _survivors(old) == {}, f"the first demo still runs while the second resets: " \
                                  f"{_survivors(old)}"
    assert f"A demo of this checkout is still running (pid {old_demo})" in second.output
    before_reset = second.output.split("Preparing a fresh demo database")[0]
    assert f"stopped the earlier demo (pid {old_demo})" in before_reset
    new = second.ready()

    # Ctrl-C (SIGINT to the demo) stops the second one cleanly, with everything it started.
    os.kill(second.demo_pid(), signal.SIGINT)
    assert second.make.wait(timeout=GONE_WITHIN) == 0, second.output[-3000:]
    assert _wait_gone(new, timeout=10) == {}
    second._reader.join(timeout=10)
    for name in ("devstack", "api", "worker-lifecycle", "beat"):
        assert f"stopped {name} (pid" in second.output
    assert not PID_FILE.exists()


# --- never anyone else's process -------------------------------------------------------------
def _spawn(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None,
           session: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=session)
    deadline = time.monotonic() + 10
    while _cmdline(proc.pid) != " ".join(argv) and time.monotonic() < deadline:
        time.sleep(0.02)  # until it has exec'd
    return proc


def test_only_this_checkouts_demo_and_its_marked_processes_are_ever_signalled(tmp_path):
    from devstack import demo

    sleeper = [sys.executable, "-c", "import time; time.sleep(120)", "devstack.demo"]
    elsewhere = _spawn(sleeper, cwd=tmp_path)  # says devstack.demo, but another checkout
    plain = _spawn(["sleep", "120"], cwd=REPO)  # this checkout, but not a demo
    other_marker = _spawn(sleeper, cwd=REPO, env={**os.environ,
                                                  "ZLH_DEMO_CHECKOUT": str(tmp_path),
                                                  "ZLH_DEMO_RUN": "x"})
    ours = _spawn(sleeper, cwd=REPO, env={**os.environ, "ZLH_DEMO_CHECKOUT": str(REPO),
                                          "ZLH_DEMO_RUN": "r1"}, session=True)
    try:
        for proc in (elsewhere, plain, other_marker, ours):
            start = _stat(proc.pid)[2]
            # Only a process running devstack.demo in this checkout passes for the demo, and
            # only if it started at the recorded time (a reused pid does not).
            expected = proc in (other_marker, ours)
            assert demo.is_this_checkouts_demo(proc.pid, start) is expected
            assert demo.is_this_checkouts_demo(proc.pid, start + 1) is False
        marked = demo.demo_processes(checkout=str(REPO))
        assert ours.pid in marked
        assert not {elsewhere.pid, plain.pid, other_marker.pid} & set(marked)
        assert ours.pid not in demo.demo_processes(checkout=str(REPO), run="r2")
        # Stopping this checkout's run r1 ends `ours` (SIGTERM first: it leads its group) and
        # nothing else.
        found = demo.terminate(lambda: demo.demo_processes(checkout=str(REPO), run="r1"),
                               grace=5)
        assert found == 1
        assert ours.wait(timeout=10) == -signal.SIGTERM
        assert all(p.poll() is None for p in (elsewhere, plain, other_marker))
    finally:
        for proc in (elsewhere, plain, other_marker, ours):
            proc.kill()
            proc.wait(timeout=10)
