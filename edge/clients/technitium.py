"""Technitium DNS Server HTTP API. Errors arrive as HTTP 200 with `status: error`: the status
field, never the HTTP code, says whether a call worked. Answers are checked against the schemas
below (`{"records": null}` is a `bad_answer`, not an empty zone)."""
from __future__ import annotations

from typing import Any

import pydantic
from django.conf import settings

from core.http import Answer, clipped

from ..errors import EdgeError
from .base import JsonHttp


class TechEnvelope(Answer):
    status: str = pydantic.Field(max_length=32)
    errorMessage: clipped(300) | None = None
    response: dict[str, Any] | None = None


class TechRData(Answer):
    ipAddress: str | None = None


class TechRecord(Answer):
    name: str = pydantic.Field(max_length=255)
    type: str = pydantic.Field(max_length=16)
    ttl: int | None = None
    rData: TechRData | None = None
    comments: str | None = None


class TechRecords(Answer):
    records: list[TechRecord]


class TechnitiumClient:
    def __init__(self, *, base_url: str, token: str, zone: str, timeout: float = 10,
                 max_bytes: int | None = None) -> None:
        self.http = JsonHttp(base_url=base_url, token=token, timeout=timeout,
                             service="technitium",
                             max_bytes=max_bytes or settings.TECHNITIUM_MAX_ANSWER_BYTES)
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
        envelope = self.http.parse(TechEnvelope, body, action)
        state = envelope.status
        if state == "ok":
            return envelope.response or {}
        message = envelope.errorMessage or state
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
            response = self._call("zones/records/get", domain=self.zone, zone=self.zone,
                                  listZone="true")
        else:
            response = self._call("zones/records/get", domain=domain, zone=self.zone)
        listing = self.http.parse(TechRecords, response, "zones/records/get")
        return [r.model_dump(exclude_none=True) for r in listing.records]

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
