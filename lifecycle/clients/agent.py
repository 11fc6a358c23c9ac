"""The agent inside each container: status, enrolment, provisioning payload, game start/stop,
the game's log and console.

Every call carries the server's own control token (`for_server`; see
`services/agent_credentials.py` and `core/agent_tokens.py`), never a token shared between
containers, and never logs it.

The agent runs inside a tenant's container, next to the tenant's own code: every answer is
untrusted. Bodies are capped (`AGENT_MAX_ANSWER_BYTES`) and bounded in time, and `/status` is
checked against `AgentStatus`; an answer of another shape is an AgentError of kind
`bad_answer`, never a crash of the caller.
"""
from __future__ import annotations

from enum import StrEnum
from typing import Any

import pydantic
import requests
from django.conf import settings

from core.errors import ExternalError
from core.http import Answer, BadAnswer, bounded_session, clipped, json_body, parse


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
    UNAUTHORIZED = "unauthorized"  # 401/403: it does not take our credential
    NOT_FOUND = "not_found"      # 404: it has no such route (an agent too old for it)
    REJECTED = "rejected"        # another 4xx: it refused the request
    ERROR = "error"              # 5xx
    BAD_ANSWER = "bad_answer"    # not JSON, the wrong shape, too large or too slow


class AgentCrash(Answer):
    count: pydantic.NonNegativeInt
    lastAt: float | None = None
    reason: clipped(500) | None = None


class AgentStatus(Answer):
    """What `/status` must look like (fields the control plane reads)."""

    state: str = pydantic.Field(max_length=32, pattern=r"^[a-z_]+$")
    provisioningComplete: bool = False
    ready: bool = False
    error: clipped(500) | None = None
    crash: AgentCrash | None = None
    firstBootAt: float | None = None
    #: The credential version the agent holds; null while it has none (not yet enrolled).
    credentialVersion: pydantic.NonNegativeInt | None = None


class AgentEnrolled(Answer):
    """The answer to `POST /credential`."""

    version: pydantic.NonNegativeInt
    replay: bool = False


class AgentReply(Answer):
    """The answer to a command: an object; its fields are only shown in the operation log."""

    state: clipped(32) | None = None
    replay: bool = False


class AgentWorld(Answer):
    """The answer to `GET /world`: does the world on this disk load (a backup's verification)."""

    loads: bool
    seed: clipped(64) | None = None
    generation: pydantic.NonNegativeInt | None = None
    error: clipped(500) | None = None


#: Most lines a log answer may carry, and a console answer.
AGENT_LOG_LINES_MAX = 1000
AGENT_CONSOLE_LINES_MAX = 100


class AgentLogs(Answer):
    """The answer to `GET /logs?tail=N`: the game's newest log lines (the tenant's own text)."""

    lines: list[clipped(2000)] = pydantic.Field(max_length=AGENT_LOG_LINES_MAX)


class AgentConsoleReply(Answer):
    """The answer to `POST /console`: what the game printed for the command."""

    accepted: bool
    output: list[clipped(2000)] = pydantic.Field(default_factory=list,
                                                 max_length=AGENT_CONSOLE_LINES_MAX)


class AgentError(ExternalError):
    """`kind` is an AgentErrorKind."""

    system = "agent"


class AgentClient:
    def __init__(self, *, base_url: str, token: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = bounded_session(max_bytes=settings.AGENT_MAX_ANSWER_BYTES, system="agent")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.calls = 0

    def __repr__(self) -> str:  # never the token
        return f"AgentClient({self.base_url})"

    @classmethod
    def for_instance(cls, *, ip: str | None, vmid: int | None, server_id: Any) -> "AgentClient":
        """The client of one server's agent, carrying that server's control token."""
        from ..services.agent_credentials import agent_control_token

        url = settings.AGENT_URL_TEMPLATE.format(ip=ip or "", vmid=vmid or "")
        return cls(base_url=url, token=agent_control_token(instance_id=server_id),
                   timeout=settings.AGENT_TIMEOUT)

    @classmethod
    def for_server(cls, inst: Any) -> "AgentClient":
        return cls.for_instance(ip=inst.ip, vmid=inst.vmid, server_id=inst.id)

    def with_token(self, token: str) -> "AgentClient":
        """The same agent, presenting another token (enrolment tries the previous secret)."""
        return type(self)(base_url=self.base_url, token=token, timeout=self.timeout)

    def _request(self, method: str, path: str, schema: type[Answer], json: Any = None,
                 ) -> dict[str, Any]:
        """The answer, checked against `schema`, as a dict of the fields it declares."""
        self.calls += 1
        what = f"agent {method} {path}"
        try:
            resp = self.session.request(method, self.base_url + path, json=json,
                                        timeout=self.timeout)
            if resp.status_code >= 500:
                raise AgentError(f"{what}: HTTP {resp.status_code}", kind=AgentErrorKind.ERROR,
                                 retryable=True)
            if resp.status_code in (401, 403):
                raise AgentError(f"{what}: HTTP {resp.status_code}",
                                 kind=AgentErrorKind.UNAUTHORIZED, retryable=False)
            if resp.status_code == 404:
                raise AgentError(f"{what}: HTTP 404", kind=AgentErrorKind.NOT_FOUND,
                                 retryable=False)
            if resp.status_code >= 400:
                # The agent's own words are not repeated: they are the tenant's to write.
                raise AgentError(f"{what}: HTTP {resp.status_code}",
                                 kind=AgentErrorKind.REJECTED, retryable=False)
            body = json_body(resp) if resp.content else {}
            return parse(schema, body, what=what).model_dump()
        except BadAnswer as exc:
            raise AgentError(f"{what}: {exc}", kind=AgentErrorKind.BAD_ANSWER,
                             retryable=True) from exc
        except requests.exceptions.RequestException as exc:
            raise AgentError(f"{what}: {exc.__class__.__name__}",
                             kind=AgentErrorKind.UNREACHABLE, retryable=True) from exc

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/status", AgentStatus)

    def credential(self, body: dict[str, Any]) -> dict[str, Any]:
        """Enrol (or rotate): the agent takes the secret in `body`. Only an agent without a
        credential takes it unauthenticated; one that holds a credential wants its token."""
        return self._request("POST", "/credential", AgentEnrolled, json=body)

    def provision(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/provision", AgentReply, json=payload)

    def game_start(self) -> dict[str, Any]:
        return self._request("POST", "/game/start", AgentReply)

    def game_stop(self) -> dict[str, Any]:
        return self._request("POST", "/game/stop", AgentReply)

    def world_flush(self, *, hold_seconds: int) -> dict[str, Any]:
        """`save-all flush` then `save-off`: the world is on disk and stays as it is while a
        backup reads it; the agent turns saving on again by itself after `hold_seconds`."""
        return self._request("POST", "/world/flush", AgentReply,
                             json={"holdSeconds": hold_seconds})

    def world_resume(self) -> dict[str, Any]:
        """`save-on`."""
        return self._request("POST", "/world/resume", AgentReply)

    def world(self) -> dict[str, Any]:
        return self._request("GET", "/world", AgentWorld)

    def logs(self, *, tail: int) -> dict[str, Any]:
        return self._request("GET", f"/logs?tail={int(tail)}", AgentLogs)

    def console(self, command: str) -> dict[str, Any]:
        return self._request("POST", "/console", AgentConsoleReply, json={"command": command})

    def close(self) -> None:
        self.session.close()
