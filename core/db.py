"""Database helpers: whole-transaction retry on InnoDB deadlocks and lock-wait timeouts."""
from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import OperationalError, connection

logger = logging.getLogger(__name__)

#: ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, ER_LOCK_NOWAIT
RETRYABLE_MYSQL_ERRORS = frozenset({1213, 1205, 3572})

P = ParamSpec("P")
R = TypeVar("R")


def is_lock_conflict(exc: BaseException) -> bool:
    return (
        isinstance(exc, OperationalError)
        and bool(exc.args)
        and exc.args[0] in RETRYABLE_MYSQL_ERRORS
    )


def retry_on_lock_conflict(func: Callable[P, R]) -> Callable[P, R]:
    """Run `func` (which must own the outermost transaction) again on 1213/1205.

    InnoDB rolls back the whole transaction on a deadlock, so only the whole unit can be
    retried; a retry inside a savepoint would be wrong. Jittered backoff, bounded attempts.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        attempts = max(1, settings.ZLH_DB_RETRY_ATTEMPTS)
        for attempt in range(1, attempts + 1):
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                if not is_lock_conflict(exc) or attempt == attempts or connection.in_atomic_block:
                    raise
                delay = min(1.0, 0.02 * (2 ** attempt)) * random.uniform(0.5, 1.5)
                logger.info(
                    "%s: lock conflict %s, retrying whole transaction (attempt %d/%d) in %.3fs",
                    func.__qualname__, exc.args[0], attempt, attempts, delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    return wrapper


class named_lock:
    """A MariaDB named lock (`GET_LOCK`, not waiting) held by this connection for the block;
    the block gets whether it was obtained. The server drops it with the connection, so a
    killed process never leaves it behind."""

    def __init__(self, name: str) -> None:
        self.name = name[:64]  # MariaDB's limit on lock names
        self.held = False

    def __enter__(self) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0)", [self.name])
            self.held = cursor.fetchone()[0] == 1
        return self.held

    def __exit__(self, *exc: object) -> None:
        if self.held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT RELEASE_LOCK(%s)", [self.name])
            self.held = False
