"""The HTTP plumbing the edge clients share: a bounded session (size cap, whole-call deadline:
core/http.py), a timeout on every call, a call counter, and failures turned into EdgeErrors:
transport failures and 5xx retryable, a 2xx body that is not JSON `bad_answer`."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from core.http import BadAnswer, bounded_session, json_body, parse

from ..errors import EdgeError


class JsonHttp:
    def __init__(self, *, base_url: str, token: str, timeout: float, service: str,
                 max_bytes: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.service = service
        self.session = bounded_session(max_bytes=max_bytes, system=service)
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.calls = 0

    def send(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, requests.Response]:
        """(status, decoded JSON body or None, response). A 4xx body that is not JSON is None
        (the status says enough); a 2xx one is a bad answer."""
        self.calls += 1
        what = f"{self.service} {method} {path}"
        try:
            resp = self.session.request(method, self.base_url + path, timeout=self.timeout,
                                        **kwargs)
        except BadAnswer as exc:
            raise EdgeError(f"{what}: {exc}", kind="bad_answer", retryable=True) from exc
        except requests.exceptions.Timeout as exc:
            raise EdgeError(f"{what}: timed out", kind="timeout", retryable=True) from exc
        except requests.exceptions.RequestException as exc:
            raise EdgeError(f"{what}: {exc.__class__.__name__}", kind="unavailable",
                            retryable=True) from exc
        if resp.status_code >= 500:
            raise EdgeError(f"{what}: HTTP {resp.status_code}", kind="unavailable",
                            retryable=True)
        try:
            body = json_body(resp)
        except BadAnswer as exc:
            if resp.status_code < 300:
                raise EdgeError(f"{what}: {exc}", kind="bad_answer", retryable=True) from exc
            body = None
        return resp.status_code, body, resp

    def parse(self, schema: Any, data: Any, what: str) -> Any:
        """`data` checked against `schema`; the wrong shape is a retryable `bad_answer`."""
        try:
            return parse(schema, data, what=f"{self.service} {what}")
        except BadAnswer as exc:
            raise EdgeError(str(exc), kind="bad_answer", retryable=True) from exc

    def close(self) -> None:
        self.session.close()


def sleep_bounded(seconds: float, on_wait: Callable[[], None] | None) -> None:
    """Sleep in short slices, calling `on_wait` (e.g. a lease renewal) between them."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        if on_wait is not None:
            on_wait()
