"""The Velocity bridge (our proxy plugin's HTTP API). Velocity's registry semantics: the same
info again is a no-op, another address under the same name is refused until unregistered."""
from __future__ import annotations

from typing import Any

from ..errors import EdgeError
from .base import JsonHttp


class VelocityClient:
    def __init__(self, *, base_url: str, token: str, timeout: float = 10) -> None:
        self.http = JsonHttp(base_url=base_url, token=token, timeout=timeout,
                             service="velocity")

    @property
    def calls(self) -> int:
        return self.http.calls

    def _check(self, status: int, body: Any, what: str) -> None:
        if status in (401, 403):
            raise EdgeError(f"velocity {what}: HTTP {status}", kind="auth")
        if status >= 400:
            raise EdgeError(f"velocity {what}: HTTP {status} {body}", kind="rejected")

    def servers(self) -> list[dict[str, Any]]:
        status, body, _ = self.http.send("GET", "/servers")
        self._check(status, body, "list")
        return list((body or {}).get("servers") or [])

    def register(self, name: str, address: str, hosts: list[str]) -> bool:
        """True if registered now, False if it already was (identical)."""
        status, body, _ = self.http.send("POST", "/servers",
                                         json={"name": name, "address": address, "hosts": hosts})
        if status == 409:
            raise EdgeError(f"velocity register {name}: already registered with other info",
                            kind="conflict")
        self._check(status, body, f"register {name}")
        return bool((body or {}).get("changed", status == 201))

    def unregister(self, name: str) -> bool:
        """True if it was registered, False if it was not (already done)."""
        status, body, _ = self.http.send("DELETE", f"/servers/{name}")
        if status == 404:
            return False
        self._check(status, body, f"unregister {name}")
        return True
