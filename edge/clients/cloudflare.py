"""Cloudflare API v4 DNS records (Bearer token, one zone).

`success: false` is a failure whatever the HTTP status; error codes (and `error_chain` codes) are
classified: 81057/81058 "identical record exists", 81044 "does not exist", auth codes terminal,
429 waited out by its `retry-after` (seconds or an HTTP-date; at least one second, at most
`max_retry_wait` in total and MAX_RATE_LIMITED times per call), 5xx retryable. Lists are paged
until `result_info.total_pages` (at most MAX_PAGES). Every answer is checked against the schemas
below; one of another shape is a retryable `bad_answer`.
"""
from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import pydantic
from django.conf import settings

from core.http import Answer, clipped

from ..errors import EdgeError
from .base import JsonHttp, sleep_bounded

EXISTS = {81057, 81058}
NOT_FOUND = {81044}
AUTH = {6003, 6111, 9106, 9109, 10000}
#: Rate-limit answers waited out per call, whatever their `retry-after` says.
MAX_RATE_LIMITED = 10
#: Pages read per listing: 200 pages of 1000 is far more than one zone of ours holds.
MAX_PAGES = 200


class CfCode(Answer):
    code: int = 0
    message: clipped(300) = ""


class CfError(CfCode):
    error_chain: list[CfCode] = []


class CfResultInfo(Answer):
    total_pages: int = pydantic.Field(default=1, ge=0)


class CfEnvelope(Answer):
    """Cloudflare's envelope around every answer."""

    success: bool | None = None
    errors: list[CfError] = []
    result: Any = None
    result_info: CfResultInfo | None = None


class CfSrvData(Answer):
    port: int | None = None
    target: str | None = None
    priority: int | None = None
    weight: int | None = None


class CfRecord(Answer):
    """A DNS record, with the fields we read."""

    id: str = pydantic.Field(min_length=1, max_length=64)
    type: str = pydantic.Field(max_length=16)
    name: str = pydantic.Field(max_length=255)
    content: str | None = None
    proxied: bool | None = None
    ttl: int | None = None
    comment: str | None = None
    data: CfSrvData | None = None


def _codes(envelope: CfEnvelope) -> tuple[int, ...]:
    codes: list[int] = []
    for err in envelope.errors:
        codes.append(err.code)
        codes.extend(c.code for c in err.error_chain)
    return tuple(codes)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float:
    """Cloudflare's `retry-after`: seconds, or an HTTP-date. Anything unusable, zero or a
    date in the past waits one second: a wait of 0 would make the retry loop spin."""
    text = (value or "").strip()
    seconds = None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            seconds = None
    if seconds is None or seconds != seconds:  # NaN
        return 1.0
    return max(1.0, seconds)


class CloudflareClient:
    def __init__(self, *, base_url: str, token: str, zone_id: str, timeout: float = 15,
                 page_size: int = 1000, max_retry_wait: float = 300,
                 on_wait: Callable[[], None] | None = None,
                 max_bytes: int | None = None) -> None:
        self.http = JsonHttp(base_url=base_url, token=token, timeout=timeout,
                             service="cloudflare",
                             max_bytes=max_bytes or settings.CLOUDFLARE_MAX_ANSWER_BYTES)
        self.zone_id = zone_id
        self.page_size = page_size
        self.max_retry_wait = max_retry_wait
        self.on_wait = on_wait
        self.waited = 0.0

    @property
    def calls(self) -> int:
        return self.http.calls

    def _request(self, method: str, path: str, **kwargs: Any) -> CfEnvelope:
        waited = 0.0
        for _ in range(MAX_RATE_LIMITED + 1):
            status, body, resp = self.http.send(method, path, **kwargs)
            envelope = self.http.parse(CfEnvelope, body if body is not None else {},
                                       f"{method} {path}")
            if status != 429:
                break
            wait = retry_after_seconds(resp.headers.get("retry-after"))
            if waited + wait > self.max_retry_wait:
                raise EdgeError(f"cloudflare rate limit: waited {waited:.0f}s already, asked "
                                f"to wait {wait:.0f}s more", kind="rate_limited",
                                retryable=True, codes=_codes(envelope))
            sleep_bounded(wait, self.on_wait)
            waited += wait
            self.waited += wait
        else:
            raise EdgeError(f"cloudflare rate limit: {MAX_RATE_LIMITED} answers of 429 in a "
                            "row", kind="rate_limited", retryable=True, codes=_codes(envelope))
        if envelope.success is True:
            return envelope
        codes = _codes(envelope)
        messages = "; ".join(e.message for e in envelope.errors)
        text = f"cloudflare {method} {path}: HTTP {status} {list(codes)} {messages}"
        if set(codes) & EXISTS:
            raise EdgeError(text, kind="exists", codes=codes)
        if set(codes) & NOT_FOUND:
            raise EdgeError(text, kind="not_found", codes=codes)
        if set(codes) & AUTH or status in (401, 403):
            raise EdgeError(text, kind="auth", codes=codes)
        if 200 <= status < 300:
            # HTTP says yes and the envelope does not: not an answer we can act on.
            raise EdgeError(text + " (no success flag)", kind="bad_answer", retryable=True,
                            codes=codes)
        raise EdgeError(text, kind="rejected", codes=codes)

    def _record(self, envelope: CfEnvelope, what: str) -> dict[str, Any]:
        return self.http.parse(CfRecord, envelope.result, what).model_dump(exclude_none=True)

    def _records(self) -> str:
        return f"/zones/{self.zone_id}/dns_records"

    def list_records(self, **filters: Any) -> list[dict[str, Any]]:
        """Every record matching the filters, all pages (one call per page)."""
        out: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            envelope = self._request("GET", self._records(),
                                     params={**filters, "page": page, "per_page": self.page_size})
            rows = self.http.parse(list[CfRecord], envelope.result, "list records")
            out.extend(r.model_dump(exclude_none=True) for r in rows)
            total = envelope.result_info.total_pages if envelope.result_info else 1
            if page >= total or not rows:
                return out
        raise EdgeError(f"cloudflare list records: more than {MAX_PAGES} pages",
                        kind="bad_answer", retryable=True)

    def create_record(self, record: dict[str, Any]) -> dict[str, Any]:
        return self._record(self._request("POST", self._records(), json=record), "create")

    def patch_record(self, record_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self._record(self._request("PATCH", f"{self._records()}/{record_id}",
                                          json=changes), "patch")

    def delete_record(self, record_id: str) -> bool:
        """True if deleted, False if it was already gone."""
        try:
            self._request("DELETE", f"{self._records()}/{record_id}")
            return True
        except EdgeError as err:
            if err.kind == "not_found":
                return False
            raise
