"""The HTTP plumbing the edge clients share: a session, a timeout on every call, a call counter,
and transport failures turned into retryable EdgeErrors."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from ..errors import EdgeError


class JsonHttp:
    def __init__(self, *, base_url: str, token: str, timeout: float, service: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.service = service
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.calls = 0

    def send(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, requests.Response]:
        self.calls += 1
        try:
            resp = self.session.request(method, self.base_url + path, timeout=self.timeout,
                                        **kwargs)
        except requests.exceptions.Timeout as exc:
            raise EdgeError(f"{self.service} {method} {path}: timed out", kind="timeout",
                            retryable=True) from exc
        except requests.exceptions.RequestException as exc:
            raise EdgeError(f"{self.service} {method} {path}: {exc.__class__.__name__}",
                            kind="unavailable", retryable=True) from exc
        try:
            body = resp.json() if resp.content else None
        except ValueError:
            body = None
        if resp.status_code >= 500:
            raise EdgeError(f"{self.service} {method} {path}: HTTP {resp.status_code}",
                            kind="unavailable", retryable=True)
        return resp.status_code, body, resp

    def close(self) -> None:
        self.session.close()


def sleep_bounded(seconds: float, on_wait: Callable[[], None] | None) -> None:
    """Sleep in short slices, calling `on_wait` (e.g. a lease renewal) between them."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        if on_wait is not None:
            on_wait()
