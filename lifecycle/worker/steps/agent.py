"""Steps on the agent inside the container: wait for it, give it its credential, wait until
the server is ready, ask the game to save and stop. What the agent answers is read
defensively: it runs in the tenant's container.

Enrolment (`agent_session`) happens before the payload is sent, as the payload is before the
first boot. A fresh agent holds no credential and takes one unauthenticated (trust on first
use: the container firewall lets only the control plane reach the agent port); from then on it
wants the server's control token, and a new credential (a rotation) must come with the
current one. A secret is sent in clear once: an agent that claims to have none while the
server's secret was already delivered gets a new version, never the delivered one again.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings

from core.agent_tokens import control_token
from notifications.services import notify_warning

from ...clients.agent import (
    AGENT_GAME_DOWN,
    AgentClient,
    AgentError,
    AgentErrorKind,
    AgentState,
)
from ...choices import WAITING_FOR_READY
from ...models import ContainerInstance
from ...services.agent_credentials import (
    AgentSecrets,
    agent_credential_enrolled,
    agent_credential_ensure,
    agent_credential_mark_legacy,
    agent_credential_rotate,
    agent_secrets,
    legacy_token,
)
from ..context import OperationContext
from ..errors import StepError, WaitLater
from . import Step
from .status import server_facts


def agent_for(inst: ContainerInstance) -> AgentClient:
    """The server's agent, spoken to with the server's own control token."""
    return AgentClient.for_server(inst)


def _client(inst: ContainerInstance, token: str) -> AgentClient:
    url = settings.AGENT_URL_TEMPLATE.format(ip=inst.ip or "", vmid=inst.vmid or "")
    return AgentClient(base_url=url, token=token, timeout=settings.AGENT_TIMEOUT)


def _enrolment(inst: ContainerInstance, creds: AgentSecrets) -> dict[str, Any]:
    """The body of `POST /credential`: the secret, its version, and where and how often to
    send heartbeats (the heartbeat token is derived from the secret and the server id)."""
    return {"secret": creds.current, "version": creds.version, "serverId": str(inst.id),
            "heartbeat": {"url": settings.AGENT_HEARTBEAT_URL.format(server_id=inst.id),
                          "intervalSeconds": settings.AGENT_HEARTBEAT_INTERVAL_SECONDS}}


#: What the wait for the agent saw: it answered with our token, or it refused our token.
_REFUSED = {"refused": True}


def _answer(agent: AgentClient) -> dict[str, Any] | None:
    """The agent's status, `_REFUSED` if it does not take the token, None if it is silent."""
    try:
        return agent.status()
    except AgentError as err:
        if err.kind == AgentErrorKind.UNAUTHORIZED:
            return _REFUSED
        if err.kind in (AgentErrorKind.REJECTED, AgentErrorKind.NOT_FOUND):
            raise StepError(f"agent refused us: {err.message}", kind="agent") from err
        return None


def agent_session(ctx: OperationContext, inst: ContainerInstance, *,
                  also: tuple[tuple[str, Any], ...] = ()) -> tuple[AgentClient, dict[str, Any]]:
    """Wait for the agent (bounded), make sure it holds the server's current credential, and
    return a client presenting it with the agent's last status. The caller closes it.
    `also`: other (secret, server id) the agent may hold (a container restored from a backup
    holds the credential of the day the backup was taken, of the server it was taken of);
    each authenticates the delivery of the current one."""
    agent_credential_ensure(instance_id=inst.id)
    creds = agent_secrets(instance_id=inst.id)
    agent = _client(inst, creds.control)
    try:
        status = ctx.wait_for(lambda: _answer(agent), timeout=settings.AGENT_WAIT_SECONDS,
                              what="the agent to answer")
        ctx.checkpoint(Step.AGENT, "agent up" + ("" if status is _REFUSED
                                                 else f": {status.get('state')}"))
        if status is not _REFUSED:
            held = status.get("credentialVersion")
            if held == creds.version:
                return agent, _enrolled(ctx, inst, agent, creds, "already held")
            if held is None and creds.enrolled:
                # The secret was delivered once already: whoever answers now (a recreated
                # container, or something else on its address) gets a new one, never that one.
                agent.close()
                agent_credential_rotate(instance_id=inst.id, actor=ctx.actor,
                                        reason="the agent answered without a credential")
                creds = agent_secrets(instance_id=inst.id)
                agent = _client(inst, creds.control)
            # No credential yet (trust on first use), or it took our token under another
            # version number: (re)deliver, authenticated by the token it just took.
            agent.credential(_enrolment(inst, creds))
            return agent, _enrolled(ctx, inst, agent, creds, "enrolled")
        # It holds a credential other than the current one: the previous version (a rotation
        # that has not reached it yet: restore to stopped, a rotation of a stopped server)?
        if creds.previous:
            old = _client(inst, creds.previous_control)
            try:
                if _answer(old) not in (None, _REFUSED):
                    old.credential(_enrolment(inst, creds))  # authenticated by the old one
                    return agent, _enrolled(ctx, inst, agent, creds,
                                            f"moved from v{creds.version - 1}")
            finally:
                old.close()
        for secret, server_id in also:
            held = _client(inst, control_token(secret, server_id))
            try:
                if _answer(held) not in (None, _REFUSED):
                    held.credential(_enrolment(inst, creds))  # authenticated by that one
                    return agent, _enrolled(ctx, inst, agent, creds,
                                            "moved from the backup's credential")
            finally:
                held.close()
        legacy = _legacy_session(ctx, inst, agent, creds)
        agent.close()
        return legacy
    except BaseException:
        agent.close()
        raise


def _enrolled(ctx: OperationContext, inst: ContainerInstance, agent: AgentClient,
              creds: AgentSecrets, how: str) -> dict[str, Any]:
    """Check the agent now holds `creds.version` (with its token), record it, checkpoint."""
    status = _answer(agent)
    if status is None or status is _REFUSED or status.get("credentialVersion") != creds.version:
        raise StepError(f"the agent did not take credential v{creds.version}",
                        retryable=True, kind="credential_not_taken")
    agent_credential_enrolled(instance_id=inst.id, version=creds.version, actor=ctx.actor)
    ctx.checkpoint(Step.CREDENTIAL, f"agent holds credential v{creds.version} ({how})")
    return status


def _legacy_session(ctx: OperationContext, inst: ContainerInstance, agent: AgentClient,
                    creds: AgentSecrets) -> tuple[AgentClient, dict[str, Any]]:
    """The agent takes neither the current nor the previous token. An agent too old for
    credentials (404 on /credential) may be driven with the legacy token while that is allowed
    (recorded: `legacy_since`); anything else is a credential we do not know."""
    try:
        agent.credential({})  # no secret in it: only whether the route exists
        old_agent = False
    except AgentError as err:
        if err.kind not in (AgentErrorKind.NOT_FOUND, AgentErrorKind.UNAUTHORIZED):
            raise
        old_agent = err.kind == AgentErrorKind.NOT_FOUND
    where = f"the agent of {inst.slug} (CT {inst.vmid})"
    if not old_agent:
        known = f"v{creds.version}" + (f" or v{creds.version - 1}" if creds.previous else "")
        raise StepError(
            f"{where} holds a credential we do not know (not {known}): it was reset, replaced "
            "or tampered with. Check the container, reset its agent's credential there, then "
            "request the operation again.", retryable=False, kind="credential_mismatch")
    token = legacy_token()
    if token is None:
        raise StepError(
            f"{where} is too old to take a credential of its own (404 on /credential) and the "
            "legacy shared token is not allowed (AGENT_LEGACY_TOKEN / AGENT_LEGACY_TOKEN_UNTIL)"
            ": upgrade the agent, then request the operation again.", retryable=False,
            kind="legacy_agent")
    legacy = _client(inst, token)
    status = _answer(legacy)
    if status is None or status is _REFUSED:
        legacy.close()
        raise StepError(f"{where} refuses its credential and the legacy token",
                        retryable=False, kind="credential_mismatch")
    agent_credential_mark_legacy(instance_id=inst.id, actor=ctx.actor)
    ctx.checkpoint(Step.CREDENTIAL, "legacy agent: driven with the shared token until "
                                    f"{settings.AGENT_LEGACY_TOKEN_UNTIL}")
    return legacy, status


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


def wait_ready(ctx: OperationContext, agent: AgentClient, *, reschedule: bool = False,
               ) -> dict[str, Any]:
    """Ready = the agent reports provisioning complete and the game answering; an open TCP port
    is not ready. Bounded by READY_WAIT_SECONDS.

    `reschedule`: the worker polls for READY_HOLD_SECONDS only; then the operation is queued
    again (WaitLater, `WAITING_FOR_READY`) and each claim that comes back looks once, until
    ready or the deadline kept on the operation passes — a game installing for minutes holds
    no worker.
    The flow must then resume here when `ctx.waiting` (it skips the steps before)."""
    def check():
        try:
            status = agent.status()
        except AgentError as err:
            if err.kind in (AgentErrorKind.REJECTED, AgentErrorKind.UNAUTHORIZED,
                            AgentErrorKind.NOT_FOUND):
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

    what = "the server to become ready"
    total = settings.READY_WAIT_SECONDS
    hold = min(settings.READY_HOLD_SECONDS, total) if reschedule else total
    status = check() if reschedule and ctx.waiting else ctx.poll(check, seconds=hold)
    if status is None:
        if ctx.wait_over or hold >= total:
            raise StepError(f"timed out after {total:.0f}s waiting for {what}", retryable=True,
                            kind="timeout")
        raise WaitLater(f"waiting for {what}", key=WAITING_FOR_READY,
                        delay=settings.READY_LOOK_SECONDS, timeout=total - hold)
    ctx.checkpoint(Step.READY, "server is ready", wait_done=True)
    return status


def resume_wait_ready(ctx: OperationContext) -> ContainerInstance:
    """A claim back inside the queued wait for readiness (`ctx.waiting`): every step before it
    is done, so look once more (queued again if not ready yet); returns the fresh row. A wait
    that runs out is retried from the top of the flow."""
    inst = ctx.instance()
    agent = agent_for(inst)
    try:
        wait_ready(ctx, agent, reschedule=True)
    finally:
        agent.close()
    return inst
