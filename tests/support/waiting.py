"""Bounded waits for tests that watch real processes."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], *, timeout: float = 60, interval: float = 0.1,
               what: str = "condition", on_tick: Callable[[], Any] | None = None) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        if on_tick is not None:
            on_tick()
        time.sleep(interval)
