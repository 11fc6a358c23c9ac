"""The lifecycle side of the edge: which servers have one, and the flow steps that publish or
remove it. The edge app itself only sees plain EdgeTargets."""
from __future__ import annotations

import logging
import uuid
from typing import Any

from edge.errors import EdgeError
from edge.services import (
    EdgeClients,
    EdgeTarget,
    edge_republish,
    edge_unpublish,
    velocity_resync,
    velocity_unregister,
)

from ..choices import InstanceStatus, Kind
from ..models import ContainerInstance
from .runner import OperationContext, StepError

logger = logging.getLogger(__name__)


def edge_target_for(inst: ContainerInstance) -> EdgeTarget | None:
    """Game servers get DNS and a Velocity registration; dev containers use the wildcard
    `dev-<vmid>` route and need none."""
    if inst.kind != Kind.GAME or not inst.ip or not inst.ports.get("game"):
        return None
    return EdgeTarget(server_id=str(inst.id), slug=inst.slug, backend_ip=inst.ip,
                      backend_port=int(inst.ports["game"]))


def _as_step_error(err: EdgeError, what: str) -> StepError:
    return StepError(f"{what}: {err.message}", retryable=err.retryable, kind=f"edge_{err.kind}")


def publish_step(ctx: OperationContext, inst: ContainerInstance) -> None:
    """Publish (only once the server is ready) and post-check. Transient failures retry the
    operation; a foreign record in the way is reported, not overwritten, and does not stop the
    server from running."""
    target = edge_target_for(inst)
    if target is None:
        return
    try:
        report = edge_republish(target, clients=EdgeClients(on_wait=ctx.renew))
    except EdgeError as err:
        raise _as_step_error(err, "publishing the edge") from err
    for action in report.actions:
        ctx.note(f"edge: {action}")
    if report.ok:
        ctx.checkpoint("edge", "edge published and seen live")
        return
    foreign_only = report.observed is not None and all(
        state in ("ok", "foreign") for state in report.observed.parts.values())
    if not foreign_only:
        raise StepError(f"edge not live after publishing: {report.problems}", retryable=True,
                        kind="edge_drift")
    for problem in report.problems:
        ctx.note(f"edge problem left for the operator: {problem}")
    ctx.checkpoint("edge", "edge published except where foreign records are in the way")


def unpublish_step(ctx: OperationContext, inst: ContainerInstance) -> None:
    target = edge_target_for(inst)
    if target is None:
        return
    try:
        report = edge_unpublish(target)
    except EdgeError as err:
        raise _as_step_error(err, "removing the edge") from err
    for action in report.actions:
        ctx.note(f"edge: {action}")
    ctx.checkpoint("unpublished", "edge removed")


def velocity_unregister_step(ctx: OperationContext, inst: ContainerInstance) -> None:
    """Before a stop: Velocity must not send players to a server that is going away."""
    target = edge_target_for(inst)
    if target is None:
        return
    try:
        velocity_unregister(target)
    except EdgeError as err:
        raise _as_step_error(err, "unregistering from Velocity") from err


def velocity_resync_request() -> dict[str, Any]:
    """Queue a resync on the edge queue; returns the task id and how many servers it covers."""
    from ..tasks import velocity_resync_task

    task_id = str(uuid.uuid4())
    velocity_resync_task.apply_async(task_id=task_id, queue="edge")
    count = ContainerInstance.objects.filter(kind=Kind.GAME,
                                             status=InstanceStatus.RUNNING).count()
    return {"task_id": task_id, "servers": count}


def velocity_resync_run() -> dict[str, Any]:
    servers = ContainerInstance.objects.filter(kind=Kind.GAME, status=InstanceStatus.RUNNING)
    targets = [t for t in (edge_target_for(s) for s in servers.iterator()) if t is not None]
    result = velocity_resync(targets)
    logger.info("velocity resync: %d servers, %d changes, extra %s", result["servers"],
                result["changed"], result["extra"])
    return result


def server_republish_edge(*, instance_id: Any, actor: Any) -> dict[str, Any]:
    """Publish a running game server's edge now and post-check it (operator action)."""
    from .audit import audit_record

    inst = ContainerInstance.objects.get(pk=instance_id)
    target = edge_target_for(inst)
    if target is None:
        return {"ok": False, "problems": ["dev containers have no per-server edge"]}
    if inst.status != InstanceStatus.RUNNING:
        return {"ok": False, "problems": [f"the server is {inst.status}; the edge is published "
                                          "only for running servers"]}
    try:
        report = edge_republish(target)
        result = {"ok": report.ok, "actions": report.actions, "problems": report.problems}
    except EdgeError as err:
        result = {"ok": False, "problems": [err.message]}
    audit_record(actor=actor, instance_id=inst.id, action="edge:republish", data=result)
    return result
