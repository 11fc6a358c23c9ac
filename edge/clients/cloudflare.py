"""Cloudflare API v4 DNS records (Bearer token, one zone).

`success: false` is a failure whatever the HTTP status; error codes (and `error_chain` codes) are
classified: 81057/81058 "identical record exists", 81044 "does not exist", auth codes terminal,
429 waited out by its `retry-after` (bounded), 5xx retryable. Lists are paged until
`result_info.total_pages`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import EdgeError
from .base import JsonHttp, sleep_bounded

EXISTS = {81057, 81058}
NOT_FOUND = {81044}
AUTH = {6003, 6111, 9106, 9109, 10000}


def _codes(body: Any) -> tuple[int, ...]:
    codes: list[int] = []
    for err in (body or {}).get("errors") or []:
        codes.append(int(err.get("code", 0)))
        codes.extend(int(c.get("code", 0)) for c in err.get("error_chain") or [])
    return tuple(codes)


class CloudflareClient:
    def __init__(self, *, base_url: str, token: str, zone_id: str, timeout: float = 15,
                 page_size: int = 1000, max_retry_wait: float = 300,
                 on_wait: Callable[[], None] | None = None) -> None:
        self.http = JsonHttp(base_url=base_url, token=token, timeout=timeout,
                             service="cloudflare")
        self.zone_id = zone_id
        self.page_size = page_size
        self.max_retry_wait = max_retry_wait
        self.on_wait = on_wait
        self.waited = 0.0

    @property
    def calls(self) -> int:
        return self.http.calls

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        waited = 0.0
        while True:
            status, body, resp = self.http.send(method, path, **kwargs)
            if status == 429:
                wait = float(resp.headers.get("retry-after") or 1)
                if waited + wait > self.max_retry_wait:
                    raise EdgeError(f"cloudflare rate limit: waited {waited:.0f}s already",
                                    kind="rate_limited", retryable=True, codes=_codes(body))
                sleep_bounded(wait, self.on_wait)
                waited += wait
                self.waited += wait
                continue
            if isinstance(body, dict) and body.get("success") is True:
                return body
            codes = _codes(body)
            messages = "; ".join(e.get("message", "") for e in (body or {}).get("errors") or [])
            text = f"cloudflare {method} {path}: HTTP {status} {list(codes)} {messages}"
            if set(codes) & EXISTS:
                raise EdgeError(text, kind="exists", codes=codes)
            if set(codes) & NOT_FOUND:
                raise EdgeError(text, kind="not_found", codes=codes)
            if set(codes) & AUTH or status in (401, 403):
                raise EdgeError(text, kind="auth", codes=codes)
            raise EdgeError(text, kind="rejected", codes=codes)

    def _records(self) -> str:
        return f"/zones/{self.zone_id}/dns_records"

    def list_records(self, **filters: Any) -> list[dict[str, Any]]:
        """Every record matching the filters, all pages (one call per page)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self._request("GET", self._records(),
                                 params={**filters, "page": page, "per_page": self.page_size})
            out.extend(body.get("result") or [])
            info = body.get("result_info") or {}
            if page >= int(info.get("total_pages") or 1):
                return out
            page += 1

    def create_record(self, record: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", self._records(), json=record)["result"]

    def patch_record(self, record_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self._request("PATCH", f"{self._records()}/{record_id}", json=changes)["result"]

    def delete_record(self, record_id: str) -> bool:
        """True if deleted, False if it was already gone."""
        try:
            self._request("DELETE", f"{self._records()}/{record_id}")
            return True
        except EdgeError as err:
            if err.kind == "not_found":
                return False
            raise
