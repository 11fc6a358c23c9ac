"""Steps on the agent inside the container: wait for it, wait until the server is ready, ask
the game to save and stop. What the agent answers is read defensively: it runs in the
tenant's container."""
from __future__ import annotations

from typing import Any

from django.conf import settings

from notifications.services import notify_warning

from ...clients.agent import (
    AGENT_GAME_DOWN,
    AgentClient,
    AgentError,
    AgentErrorKind,
    AgentState,
)
from ...models import ContainerInstance
from ..context import OperationContext
from ..errors import StepError
from . import Step
from .status import server_facts


def agent_for(inst: ContainerInstance) -> AgentClient:
    return AgentClient.for_instance(ip=inst.ip, vmid=inst.vmid)


def _game_stopped(agent: AgentClient) -> bool | None:
    status = agent.status()
    return True if status.get("state") in AGENT_GAME_DOWN else None


def ask_game_to_stop(ctx: OperationContext, inst: ContainerInstance) -> None:
    """Ask the game to save and stop, and wait for it (bounded). Best effort: an agent that
    does not answer does not keep the container from being shut down."""
    agent = agent_for(inst)
    try:
        reply = agent.game_stop()
        ctx.note(f"asked the game to save and stop: {reply.get('state')}")
        ctx.wait_for(lambda: _game_stopped(agent), timeout=settings.GAME_STOP_WAIT_SECONDS,
                     what="the game to save and stop")
    except AgentError as err:
        ctx.note(f"agent unreachable before stop ({err.message}); shutting down anyway")
    except StepError as err:
        ctx.note(f"{err.message}; shutting down anyway")
    finally:
        agent.close()


def wait_agent(ctx: OperationContext, agent: AgentClient) -> dict[str, Any]:
    def check():
        try:
            return agent.status()
        except AgentError as err:
            if err.kind == AgentErrorKind.REJECTED:
                raise StepError(f"agent refused us: {err.message}", kind="agent") from err
            return None

    status = ctx.wait_for(check, timeout=settings.AGENT_WAIT_SECONDS,
                          what="the agent to answer")
    ctx.checkpoint(Step.AGENT, f"agent up: {status.get('state')}")
    return status


def wait_ready(ctx: OperationContext, agent: AgentClient) -> dict[str, Any]:
    """Ready = the agent reports provisioning complete and the game answering; an open TCP port
    is not ready."""
    def check():
        try:
            status = agent.status()
        except AgentError as err:
            if err.kind == AgentErrorKind.REJECTED:
                raise StepError(f"agent refused us: {err.message}", kind="agent") from err
            return None
        if status.get("state") == AgentState.FAILED:
            raise StepError(f"the agent could not install the server: {status.get('error')}",
                            kind="install_failed")
        if status.get("state") == AgentState.CRASHED:
            crash = status.get("crash") or {}
            inst = ctx.instance()
            notify_warning(f"{inst.slug} crashed while starting", str(crash.get("reason") or ""),
                           fields=server_facts(inst), alert_key=f"crash:{inst.id}",
                           subject=str(inst.id))
            raise StepError(f"the game crashed while starting: {crash.get('reason')}",
                            retryable=True, kind="crashed")
        if status.get("provisioningComplete") and status.get("ready"):
            return status
        return None

    status = ctx.wait_for(check, timeout=settings.READY_WAIT_SECONDS,
                          what="the server to become ready")
    ctx.checkpoint(Step.READY, "server is ready")
    return status
