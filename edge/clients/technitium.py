"""Technitium DNS Server HTTP API. Errors arrive as HTTP 200 with `status: error`: the status
field, never the HTTP code, says whether a call worked."""
from __future__ import annotations

from typing import Any

from ..errors import EdgeError
from .base import JsonHttp


class TechnitiumClient:
    def __init__(self, *, base_url: str, token: str, zone: str, timeout: float = 10) -> None:
        self.http = JsonHttp(base_url=base_url, token=token, timeout=timeout,
                             service="technitium")
        self.zone = zone

    @property
    def calls(self) -> int:
        return self.http.calls

    def _call(self, action: str, **params: Any) -> dict[str, Any]:
        status, body, _ = self.http.send("POST", f"/api/{action}",
                                         data={k: str(v) for k, v in params.items()})
        if status == 404 or not isinstance(body, dict):
            raise EdgeError(f"technitium {action}: HTTP {status}, no API answer",
                            kind="unavailable", retryable=status != 404)
        state = body.get("status")
        if state == "ok":
            return body.get("response") or {}
        message = str(body.get("errorMessage") or state)
        low = message.lower()
        if state == "invalid-token":
            kind = "auth"
        elif "already exists" in low:
            kind = "exists"
        elif "no such record" in low:
            kind = "not_found"
        elif "no such zone" in low:
            kind = "no_zone"
        else:
            kind = "error"
        raise EdgeError(f"technitium {action}: {state}: {message}", kind=kind)

    def records(self, domain: str | None = None) -> list[dict[str, Any]]:
        """Records at `domain`, or the whole zone (one call) when domain is None."""
        if domain is None:
            return self._call("zones/records/get", domain=self.zone, zone=self.zone,
                              listZone="true").get("records", [])
        return self._call("zones/records/get", domain=domain, zone=self.zone).get("records", [])

    def add_a(self, domain: str, ip: str, *, ttl: int, comments: str,
              overwrite: bool) -> dict[str, Any]:
        return self._call("zones/records/add", domain=domain, zone=self.zone, type="A",
                          ipAddress=ip, ttl=ttl, comments=comments,
                          overwrite="true" if overwrite else "false")

    def delete_a(self, domain: str, ip: str) -> bool:
        try:
            self._call("zones/records/delete", domain=domain, zone=self.zone, type="A",
                       ipAddress=ip)
            return True
        except EdgeError as err:
            if err.kind == "not_found":
                return False
            raise
