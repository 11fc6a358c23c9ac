"""Clocks that disagree, for the one-clock tests: the MariaDB server's *global* time zone (what
every new connection gets unless it pins its own), and app processes whose clock is skewed
against the database's (libfaketime, installed by deploy/test-deps.sh)."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from django.db import connection

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def admin_sql(sql: str) -> str:
    """Run SQL as the MariaDB administrator of this machine (root through the local socket,
    as deploy/services.sh does; then root over TCP without a password, as on a dev box)."""
    client = shutil.which("mariadb") or shutil.which("mysql")
    assert client, "the MariaDB client is not installed (deploy/services.sh installs it)"
    attempts = ([client, "-uroot", "--protocol=socket", "-N", "-e", sql],
                [client, "-uroot", "-h127.0.0.1", "-N", "-e", sql])
    errors = []
    for argv in attempts:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if result.returncode == 0:
            return result.stdout.strip()
        errors.append(result.stderr.strip())
    raise AssertionError(f"cannot run SQL as the MariaDB administrator: {errors}")


@contextlib.contextmanager
def global_time_zone(zone: str) -> Iterator[None]:
    """The server's global time zone set to `zone` for the block, restored after. This
    process reconnects, so its new session starts from the global zone like any other."""
    before = admin_sql("SELECT @@global.time_zone")
    admin_sql(f"SET GLOBAL time_zone = '{zone}'")
    connection.close()
    try:
        yield
    finally:
        admin_sql(f"SET GLOBAL time_zone = '{before}'")
        connection.close()


def skewed(seconds: int) -> dict[str, str]:
    """Environment that makes a child process's wall clock `seconds` off the real one
    (negative: behind). The monotonic clock is left alone: only the wall clock drifts."""
    assert FAKETIME_LIB.exists(), (
        f"{FAKETIME_LIB} is missing: run deploy/test-deps.sh (Debian package faketime)")
    return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": f"{seconds:+d}s",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1"}
