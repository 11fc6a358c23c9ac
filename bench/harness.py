"""Shared set-up for benchmarks: Django on a throwaway database and Redis db 14."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


@contextlib.contextmanager
def throwaway_database(suffix: str) -> Iterator[None]:
    """Migrate a fresh `test_<name>_<suffix>` database, point Django at it, drop it after."""
    import django

    django.setup()
    from django.db import connection

    from tests.support import broker

    connection.settings_dict["TEST"]["NAME"] = f"test_{connection.settings_dict['NAME']}_{suffix}"
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    broker.flush()
    try:
        yield
    finally:
        broker.flush()
        connection.creation.destroy_test_db(old_name, verbosity=0)
