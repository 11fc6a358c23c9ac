"""Steps shared by the flows: the container in Proxmox, the agent in the container, and
status moves that tolerate a takeover (the new worker finds the move already made)."""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from notifications.services import notify_warning

from ...catalog import PLANS
from ...choices import Kind, Variant
from ...clients.agent import AgentClient, AgentError
from ...clients.proxmox import ProxmoxClient, ProxmoxError, bool01, parse_tags
from ...errors import TransitionConflict
from ...models import ContainerInstance
from ...statemachines.instance import instance_transition
from ..allocations import allocation_replace_vmid
from ..runner import OperationContext, StepError

MAX_VMID_ATTEMPTS = 3


@dataclass
class Flow:
    run: Callable[[OperationContext], None]
    on_failure: Callable[[OperationContext, dict[str, Any]], None] | None = None


# --- server status ----------------------------------------------------------------------------
def move(ctx: OperationContext, *, expected: str | Iterable[str], to: str,
         fields: dict[str, Any] | None = None, action: str = "") -> None:
    """Transition the server, or accept that a previous attempt already did."""
    try:
        instance_transition(instance_id=ctx.instance_id, expected=expected, to=to,
                            actor=ctx.actor, action=action or f"{ctx.kind}:{to}", fields=fields,
                            audit_data={"operation": str(ctx.operation_id)})
    except TransitionConflict as exc:
        current = ContainerInstance.objects.filter(pk=ctx.instance_id).values_list(
            "status", flat=True).first()
        if current == to:
            return
        raise StepError(f"server is {current}, cannot move it to {to}", retryable=False,
                        kind="state_conflict") from exc


def finish(ctx: OperationContext, *, expected: str | Iterable[str], to: str,
           fields: dict[str, Any] | None = None,
           announce: Callable[[ContainerInstance], None] | None = None) -> None:
    """The last status move, its notification and the operation's success: together or not
    at all (the notification is an outbox row in the same transaction)."""
    with transaction.atomic():
        move(ctx, expected=expected, to=to, fields={"last_error": None, **(fields or {})})
        if announce is not None:
            announce(ctx.instance())
        ctx.succeed()


def server_facts(inst: ContainerInstance) -> list[dict[str, Any]]:
    """The embed fields that tell an operator which server a notification is about."""
    what = f"{inst.variant} {inst.version}" if inst.kind == Kind.GAME else (
        f"dev {inst.runtime} {inst.runtime_version}")
    return [
        {"name": "Server", "value": f"{inst.slug} ({inst.id})"},
        {"name": "Owner", "value": inst.owner.get_username(), "inline": True},
        {"name": "What", "value": f"{what}, plan {inst.plan}", "inline": True},
        {"name": "Where", "value": f"{inst.node.name if inst.node_id else '-'} · VMID "
                                   f"{inst.vmid} · {inst.ip}", "inline": True},
    ]


def record_failure(ctx: OperationContext, error: dict[str, Any]) -> None:
    """Keep the status (e.g. `deleting`: the operation can be requested again) and say why."""
    ContainerInstance.objects.filter(pk=ctx.instance_id).update(last_error=error)


def settle_on_failure(ctx: OperationContext, *, expected: Iterable[str], to: str,
                      error: dict[str, Any]) -> None:
    """Put the server in a readable state after a failed operation (best effort)."""
    try:
        instance_transition(instance_id=ctx.instance_id, expected=expected, to=to,
                            actor=ctx.actor, action=f"{ctx.kind}:failed",
                            fields={"last_error": error},
                            audit_data={"operation": str(ctx.operation_id), "error": error})
    except TransitionConflict:
        ContainerInstance.objects.filter(pk=ctx.instance_id).update(last_error=error)


# --- Proxmox ----------------------------------------------------------------------------------
def proxmox() -> ProxmoxClient:
    return ProxmoxClient.from_settings()


def container_params(inst: ContainerInstance) -> dict[str, Any]:
    net = ipaddress.IPv4Network(inst.node.subnet, strict=False)
    return {
        "ostemplate": settings.PROXMOX_OSTEMPLATE,
        "hostname": inst.slug,
        "memory": inst.memory_mb,
        "swap": 512,
        "cores": inst.cores,
        "rootfs": f"{settings.PROXMOX_STORAGE}:{inst.disk_gb}",
        "net0": (f"name=eth0,bridge={settings.PROXMOX_BRIDGE},ip={inst.ip}/{net.prefixlen},"
                 f"gw={inst.node.gateway}"),
        "tags": f"zlh;{inst.proxmox_tag}",
        "unprivileged": bool01(True),
        "onboot": bool01(True),
        "features": "nesting=1",
        "description": f"ZeroLagHub {inst.kind} server {inst.slug} ({inst.id})",
    }


def _is_ours(config: dict[str, Any], inst: ContainerInstance) -> bool:
    return inst.proxmox_tag in parse_tags(config.get("tags"))


def _settled_config(ctx: OperationContext, pve: ProxmoxClient, node: str, vmid: int):
    """The config once no create/destroy task holds it (PVE shows only `lock: create` until the
    create task has written the real config, tags included)."""
    def check():
        cfg = pve.ct_config(node, vmid)
        if cfg is None:
            return ("absent", None)
        if cfg.get("lock") in ("create", "destroyed"):
            return None
        return ("present", cfg)

    return ctx.wait_for(check, timeout=settings.PROXMOX_TASK_TIMEOUT,
                        what=f"CT {vmid} to finish its create/destroy task")[1]


def ensure_container(ctx: OperationContext, pve: ProxmoxClient) -> ContainerInstance:
    """Make sure our container exists: adopt it (our tag), create it (absent), or move to
    another VMID if a foreign container sits on ours. Returns the fresh server row."""
    for _ in range(MAX_VMID_ATTEMPTS):
        inst = ctx.instance()
        node, vmid = inst.node.name, inst.vmid
        cfg = _settled_config(ctx, pve, node, vmid)
        if cfg is None:
            try:
                upid = pve.ct_create(node, vmid, **container_params(inst))
            except ProxmoxError as err:
                if err.kind != "already_exists":
                    raise
                # Re-read, never assume: ours from an earlier attempt, someone else's here,
                # or a container on another node holding this VMID.
                cfg = (_settled_config(ctx, pve, node, vmid)
                       or _foreign_or_ours_elsewhere(pve, inst, err))
            else:
                ctx.note(f"creating CT {vmid} on {node}")
                result = pve.task_wait(upid, timeout=settings.PROXMOX_TASK_TIMEOUT,
                                       on_tick=ctx.renew)
                if not result.ok:
                    err = pve.task_error(result, f"create CT {vmid}")
                    if err.kind != "already_exists":
                        raise err
                # Re-read, never assume: a lost race leaves someone else's container here.
                cfg = _settled_config(ctx, pve, node, vmid)
                if cfg is None:
                    raise StepError(f"CT {vmid} vanished right after its create task",
                                    retryable=True, kind="vanished")
        if cfg is not None and _is_ours(cfg, inst):
            ctx.checkpoint("container", f"CT {vmid} on {node} is ours")
            return inst
        if cfg is None:
            continue
        new_vmid = allocation_replace_vmid(instance_id=inst.id, old_vmid=vmid, actor=ctx.actor,
                                           reason=f"foreign container on VMID {vmid}")
        ctx.note(f"VMID {vmid} holds a container that is not ours; moved to VMID {new_vmid}")
    raise StepError(f"no usable VMID after {MAX_VMID_ATTEMPTS} tries (foreign containers)",
                    kind="vmid_conflict")


def _foreign_or_ours_elsewhere(pve: ProxmoxClient, inst: ContainerInstance,
                               err: ProxmoxError) -> dict[str, Any] | None:
    """'already exists' although our node has no such CT: look cluster-wide."""
    for res in pve.cluster_resources():
        if int(res.get("vmid", -1)) == inst.vmid and res.get("node") != inst.node.name:
            if inst.proxmox_tag in parse_tags(res.get("tags")):
                raise StepError(
                    f"our CT {inst.vmid} is on node {res.get('node')}, expected {inst.node.name}; "
                    "an operator must decide", kind="wrong_node")
            return {"tags": res.get("tags", ""), "node": res.get("node")}
    raise StepError(f"{err.message}; not visible cluster-wide yet", retryable=True,
                    kind="already_exists")


def run_task(ctx: OperationContext, pve: ProxmoxClient, start: Callable[[], str], *, what: str,
             done: tuple[str, ...]) -> bool:
    """Start a Proxmox task and wait for it (renewing the lease). An error of a kind in `done`
    — raised at once or as the task's exitstatus — means the goal already holds (PVE says "CT
    already running", "does not exist", …). Returns False in that case, True if the task ran."""
    try:
        upid = start()
    except ProxmoxError as err:
        if err.kind in done:
            return False
        raise
    result = pve.task_wait(upid, timeout=settings.PROXMOX_TASK_TIMEOUT, on_tick=ctx.renew)
    if not result.ok:
        err = pve.task_error(result, what)
        if err.kind not in done:
            raise err
        return False
    return True


def container_power(pve: ProxmoxClient, inst: ContainerInstance) -> str | None:
    status = pve.ct_status(inst.node.name, inst.vmid)
    return None if status is None else str(status.get("status"))


def container_start(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance) -> None:
    power = container_power(pve, inst)
    if power is None:
        raise StepError(f"CT {inst.vmid} does not exist on {inst.node.name}", kind="missing")
    if power == "running":
        return
    run_task(ctx, pve, lambda: pve.ct_start(inst.node.name, inst.vmid),
             what=f"start CT {inst.vmid}", done=("already_running",))
    ctx.note(f"CT {inst.vmid} started")


def container_stop(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance) -> None:
    """Let the game save, shut the container down cleanly, and stop it hard only if the clean
    shutdown does not finish in time. A missing container counts as stopped."""
    power = container_power(pve, inst)
    if power is None:
        ctx.note(f"CT {inst.vmid} does not exist; nothing to stop")
        return
    if power != "running":
        return
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
    node, vmid = inst.node.name, inst.vmid
    try:
        upid = pve.ct_shutdown(node, vmid, timeout=settings.CONTAINER_SHUTDOWN_TIMEOUT)
        result = pve.task_wait(upid, timeout=settings.CONTAINER_SHUTDOWN_TIMEOUT + 60,
                               on_tick=ctx.renew)
        if result.ok:
            ctx.note(f"CT {vmid} shut down")
            return
        ctx.note(f"clean shutdown did not finish ({result.exitstatus}); stopping hard")
    except ProxmoxError as err:
        if err.kind in ("not_running", "not_found"):
            return
        if not err.retryable:
            raise
        ctx.note(f"shutdown failed ({err.message}); stopping hard")
    if run_task(ctx, pve, lambda: pve.ct_stop(node, vmid), what=f"stop CT {vmid}",
                done=("not_running", "not_found")):
        ctx.note(f"CT {vmid} stopped hard")


def container_destroy(ctx: OperationContext, pve: ProxmoxClient, inst: ContainerInstance) -> None:
    """Destroy with purge; "does not exist" counts as done. A foreign container on the VMID is
    never destroyed."""
    node, vmid = inst.node.name, inst.vmid
    cfg = _settled_config(ctx, pve, node, vmid)
    if cfg is None:
        ctx.note(f"CT {vmid} does not exist; nothing to destroy")
        return
    if not _is_ours(cfg, inst):
        ctx.note(f"CT {vmid} is not ours; left alone")
        return
    if container_power(pve, inst) == "running":
        run_task(ctx, pve, lambda: pve.ct_stop(node, vmid), what=f"stop CT {vmid}",
                 done=("not_running", "not_found"))
    if not run_task(ctx, pve, lambda: pve.ct_destroy(node, vmid), what=f"destroy CT {vmid}",
                    done=("not_found",)):
        return
    ctx.note(f"CT {vmid} destroyed")


# --- the agent --------------------------------------------------------------------------------
def agent_for(inst: ContainerInstance) -> AgentClient:
    return AgentClient.for_instance(ip=inst.ip, vmid=inst.vmid)


def _game_stopped(agent: AgentClient) -> bool | None:
    status = agent.status()
    return True if status.get("state") in ("stopped", "idle", "installed", "crashed",
                                           "failed") else None


def wait_agent(ctx: OperationContext, agent: AgentClient) -> dict[str, Any]:
    def check():
        try:
            return agent.status()
        except AgentError as err:
            if err.kind == "rejected":
                raise StepError(f"agent refused us: {err.message}", kind="agent") from err
            return None

    status = ctx.wait_for(check, timeout=settings.AGENT_WAIT_SECONDS,
                          what="the agent to answer")
    ctx.checkpoint("agent", f"agent up: {status.get('state')}")
    return status


def wait_ready(ctx: OperationContext, agent: AgentClient) -> dict[str, Any]:
    """Ready = the agent reports provisioning complete and the game answering; an open TCP port
    is not ready."""
    def check():
        try:
            status = agent.status()
        except AgentError as err:
            if err.kind == "rejected":
                raise StepError(f"agent refused us: {err.message}", kind="agent") from err
            return None
        if status.get("state") == "failed":
            raise StepError(f"the agent could not install the server: {status.get('error')}",
                            kind="install_failed")
        if status.get("state") == "crashed":
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
    ctx.checkpoint("ready", "server is ready")
    return status


def provisioning_payload(inst: ContainerInstance) -> dict[str, Any]:
    """What the agent installs before the first boot."""
    if inst.kind == Kind.DEV:
        return {
            "kind": "dev",
            "serverId": str(inst.id),
            "runtime": inst.runtime,
            "runtimeVersion": inst.runtime_version,
            "codeServer": inst.enable_code_server,
            "port": inst.ports.get("ide"),
        }
    secret = settings.VELOCITY_FORWARDING_SECRET
    plan = PLANS[inst.plan]
    properties = {
        # The allocated port: unique on the node, the address Velocity forwards players to.
        "server-port": inst.ports.get("game", 25565),
        "online-mode": "false",  # Velocity authenticates players and forwards them
        "enforce-secure-profile": "false",
        "motd": f"ZeroLagHub - {inst.slug}",
        "max-players": 20 if plan.memory_mb <= 2048 else 40,
        "view-distance": 10,
    }
    mods: list[dict[str, str]] = []
    files: dict[str, str] = {}
    if inst.variant == Variant.FABRIC:
        mods = [{"name": "fabric-api"}, {"name": "FabricProxy-Lite"}]
        files["config/FabricProxy-Lite.toml"] = (
            'hackOnlineMode = true\nhackEarlySend = false\nhackMessageChain = true\n'
            f'disconnectMessage = "This server only accepts players through ZeroLagHub."\n'
            f'secret = "{secret}"\n'
        )
    elif inst.variant == Variant.PAPER:
        files["config/paper-global.yml"] = (
            "proxies:\n  velocity:\n    enabled: true\n    online-mode: true\n"
            f"    secret: '{secret}'\n"
        )
    return {
        "kind": "game",
        "serverId": str(inst.id),
        "variant": inst.variant,
        "version": inst.version,
        "memoryMb": inst.memory_mb,
        "mods": mods,
        "files": files,
        "serverProperties": properties,
    }
