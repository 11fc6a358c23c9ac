"""The Velocity bridge (our proxy plugin's HTTP API). Velocity's registry semantics: the same
info again is a no-op, another address under the same name is refused until unregistered."""
from __future__ import annotations

from typing import Any

import pydantic
from django.conf import settings

from core.http import Answer

from ..errors import EdgeError
from .base import JsonHttp


class Registration(Answer):
    name: str = pydantic.Field(min_length=1, max_length=255)
    address: str = pydantic.Field(max_length=300)
    hosts: list[pydantic.constr(max_length=255)] = []


class Registrations(Answer):
    servers: list[Registration]


class Changed(Answer):
    changed: bool | None = None


class VelocityClient:
    def __init__(self, *, base_url: str, token: str, timeout: float = 10,
                 max_bytes: int | None = None) -> None:
        self.http = JsonHttp(base_url=base_url, token=token, timeout=timeout,
                             service="velocity",
                             max_bytes=max_bytes or settings.VELOCITY_MAX_ANSWER_BYTES)

    @property
    def calls(self) -> int:
        return self.http.calls

    def _check(self, status: int, body: Any, what: str) -> None:
        if status in (401, 403):
            raise EdgeError(f"velocity {what}: HTTP {status}", kind="auth")
        if status >= 400:
            raise EdgeError(f"velocity {what}: HTTP {status} {str(body)[:300]}", kind="rejected")

    def servers(self) -> list[dict[str, Any]]:
        status, body, _ = self.http.send("GET", "/servers")
        self._check(status, body, "list")
        listing = self.http.parse(Registrations, body, "list")
        return [r.model_dump() for r in listing.servers]

    def register(self, name: str, address: str, hosts: list[str]) -> bool:
        """True if registered now, False if it already was (identical)."""
        status, body, _ = self.http.send("POST", "/servers",
                                         json={"name": name, "address": address, "hosts": hosts})
        if status == 409:
            raise EdgeError(f"velocity register {name}: already registered with other info",
                            kind="conflict")
        self._check(status, body, f"register {name}")
        changed = self.http.parse(Changed, body if body is not None else {}, "register").changed
        return changed if changed is not None else status == 201

    def unregister(self, name: str) -> bool:
        """True if it was registered, False if it was not (already done)."""
        status, body, _ = self.http.send("DELETE", f"/servers/{name}")
        if status == 404:
            return False
        self._check(status, body, f"unregister {name}")
        return True
