"""Real Celery worker and beat processes for tests, started and killed by pid."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from zlh.celery import QUEUES as ALL_QUEUES

from .procs import REPO

QUEUES = ",".join(ALL_QUEUES)


class CeleryProcess:
    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path,
                 ready_marker: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while ready_marker not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{argv[3:6]} did not start:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool children."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()


def start_worker(env: dict[str, str], log_dir: Path, *, name: str = "w1", concurrency: int = 2,
                 queues: str = QUEUES, pool: str = "prefork") -> CeleryProcess:
    argv = [sys.executable, "-m", "celery", "-A", "zlh", "worker", "-Q", queues, "-P", pool,
            "-c", str(concurrency), "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
            "--loglevel", "INFO"]
    if pool == "threads":
        env = {**env, "DB_CONN_MAX_AGE": "0"}
    return CeleryProcess(argv, env, log_dir / f"worker-{name}.log", "ready.")


def start_beat(env: dict[str, str], log_dir: Path, *, name: str = "beat") -> CeleryProcess:
    argv = [sys.executable, "-m", "celery", "-A", "zlh", "beat", "--loglevel", "INFO",
            "--max-interval", "1"]
    return CeleryProcess(argv, env, log_dir / f"{name}.log", "beat: Starting")
