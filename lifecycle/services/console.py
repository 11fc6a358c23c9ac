"""A server's log and console, through its agent (with the server's own agent credential).

Both are the tenant's text coming back from inside the container: untrusted. Lines are cut to
a length, stripped of control characters (terminal escapes included), and redacted like
everything else we show, so a secret the game printed is not handed out again. A console
command is one line, bounded, and never one that would break what the platform keeps right:
stopping or restarting goes through the stop/restart operations (which save the world and
keep the desired state), and saving on/off belongs to backups. Reads and commands are audited.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from core.redaction import redact_text

from ..choices import InstanceStatus, Kind
from ..clients.agent import AGENT_LOG_LINES_MAX, AgentClient, AgentError
from ..errors import InvalidRequest, InvalidState, LifecycleError
from ..models import ContainerInstance
from .audit import Actor, audit_record

logger = logging.getLogger(__name__)

LOG_TAIL_DEFAULT = 100
LOG_TAIL_MAX = AGENT_LOG_LINES_MAX
COMMAND_MAX = 256
#: First words refused, and what to do instead (namespaced forms such as `minecraft:stop`
#: are the same command).
DENIED_COMMANDS: dict[str, str] = {
    "stop": "Stop the server with POST …/stop: it saves the world and keeps the server stopped.",
    "restart": "Restart the server with POST …/restart.",
    "end": "Stop the server with POST …/stop.",
    "save-off": "Saving is turned off and on by backups only (a world left unsaved is lost).",
    "save-on": "Saving is turned off and on by backups only.",
    "reload": "Restart the server with POST …/restart instead (a reload leaves plugins broken).",
}
_NAMESPACE_RE = re.compile(r"^[a-z0-9_.-]+:")
# Terminal escape sequences first (the whole sequence), then any other control character.
_CONTROL_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0a-\x1f\x7f]")
_COMMAND_BAD_RE = re.compile(r"[\x00-\x1f\x7f]")  # a command: one line, printable only


class AgentUnavailable(LifecycleError):
    """The server's agent did not answer (or not sensibly); nothing was done."""

    code = "agent_unavailable"
    http_status = 503


def _clean(line: str) -> str:
    return redact_text(_CONTROL_RE.sub("", line))[:2000]


def _reachable(server: ContainerInstance, what: str) -> None:
    if server.status != InstanceStatus.RUNNING:
        raise InvalidState(f"The {what} can be used only while the server runs (it is "
                           f"{server.status}); start it first.")
    if server.suspended:
        raise InvalidState(f"This server is suspended; its {what} cannot be used.")


def _agent_call(server: ContainerInstance, call: Any) -> dict[str, Any]:
    agent = AgentClient.for_server(server)
    try:
        return call(agent)
    except AgentError as exc:
        logger.warning("agent of server %s: %s", server.id, exc)
        raise AgentUnavailable("The server's agent did not answer as it should; nothing was "
                               "done. Try again in a moment.") from exc
    finally:
        agent.close()


def server_logs(*, actor: Actor, server: ContainerInstance, tail: int = LOG_TAIL_DEFAULT,
                ) -> list[str]:
    """The newest `tail` lines of the server's log, cleaned and redacted."""
    if isinstance(tail, bool) or not isinstance(tail, int) or not 1 <= tail <= LOG_TAIL_MAX:
        raise InvalidRequest(f"tail must be a whole number from 1 to {LOG_TAIL_MAX}.",
                             fields={"tail": [f"From 1 to {LOG_TAIL_MAX}."]})
    _reachable(server, "log")
    answer = _agent_call(server, lambda agent: agent.logs(tail=tail))
    lines = [_clean(line) for line in answer["lines"][-tail:]]
    audit_record(actor=actor, action="server_logs_read", instance_id=server.id,
                 data={"tail": tail, "lines": len(lines)})
    return lines


def console_command_errors(command: Any) -> list[str]:
    """Why `command` may not be sent (empty list: it may)."""
    if not isinstance(command, str):
        return ["Must be a string."]
    text = command.strip()
    if not text:
        return ["Give a command, e.g. 'say hello'."]
    if len(text) > COMMAND_MAX:
        return [f"At most {COMMAND_MAX} characters."]
    if _COMMAND_BAD_RE.search(text):
        return ["One command on one line, without control characters."]
    word = _NAMESPACE_RE.sub("", text.lstrip("/").split(" ", 1)[0].lower())
    if word in DENIED_COMMANDS:
        return [f"'{word}' cannot be sent through the console. {DENIED_COMMANDS[word]}"]
    return []


def server_console(*, actor: Actor, server: ContainerInstance, command: str) -> list[str]:
    """Send one console command to a game server; the lines it printed, cleaned and redacted."""
    problems = console_command_errors(command)
    if problems:
        raise InvalidRequest("This command cannot be sent.", fields={"command": problems})
    if server.kind != Kind.GAME:
        raise InvalidState("Only game servers have a console; use the IDE of a dev container.")
    _reachable(server, "console")
    text = command.strip().lstrip("/")
    audit_record(actor=actor, action="console_command", instance_id=server.id,
                 data={"command": redact_text(text)})
    answer = _agent_call(server, lambda agent: agent.console(text))
    return [_clean(line) for line in answer["output"]]
