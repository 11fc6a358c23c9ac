"""The agent inside each container: status, provisioning payload, game start/stop."""
from __future__ import annotations

from enum import StrEnum
from typing import Any

import requests
from django.conf import settings

from core.errors import ExternalError


class AgentState(StrEnum):
    """The `state` the agent reports for the game (or IDE) it runs."""

    IDLE = "idle"              # no payload yet
    INSTALLING = "installing"  # installing the payload before the first boot
    INSTALLED = "installed"    # installed, not started
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"
    FAILED = "failed"          # the install failed


#: The game is not running (a stop has finished, or it never ran).
AGENT_GAME_DOWN = frozenset({AgentState.STOPPED, AgentState.IDLE, AgentState.INSTALLED,
                             AgentState.CRASHED, AgentState.FAILED})


class AgentErrorKind(StrEnum):
    UNREACHABLE = "unreachable"  # connection refused/reset, timeout
    REJECTED = "rejected"        # 4xx: it refused us (or the request)
    ERROR = "error"              # 5xx


class AgentError(ExternalError):
    """`kind` is an AgentErrorKind."""

    system = "agent"


class AgentClient:
    def __init__(self, *, base_url: str, token: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.calls = 0

    @classmethod
    def for_instance(cls, *, ip: str | None, vmid: int | None) -> "AgentClient":
        url = settings.AGENT_URL_TEMPLATE.format(ip=ip or "", vmid=vmid or "")
        return cls(base_url=url, token=settings.AGENT_TOKEN, timeout=settings.AGENT_TIMEOUT)

    def _request(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        self.calls += 1
        try:
            resp = self.session.request(method, self.base_url + path, json=json,
                                        timeout=self.timeout)
        except requests.exceptions.RequestException as exc:
            raise AgentError(f"agent {method} {path}: {exc.__class__.__name__}",
                             kind=AgentErrorKind.UNREACHABLE, retryable=True) from exc
        try:
            body = resp.json()
        except ValueError:
            body = {"raw": resp.text[:200]}
        if resp.status_code >= 500:
            raise AgentError(f"agent {method} {path}: HTTP {resp.status_code}", kind=AgentErrorKind.ERROR,
                             retryable=True)
        if resp.status_code >= 400:
            raise AgentError(f"agent {method} {path}: HTTP {resp.status_code} {body}",
                             kind=AgentErrorKind.REJECTED, retryable=False)
        return resp.status_code, body

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/status")[1]

    def provision(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/provision", json=payload)[1]

    def game_start(self) -> dict[str, Any]:
        return self._request("POST", "/game/start")[1]

    def game_stop(self) -> dict[str, Any]:
        return self._request("POST", "/game/stop")[1]

    def close(self) -> None:
        self.session.close()
