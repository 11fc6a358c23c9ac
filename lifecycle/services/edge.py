"""The lifecycle side of the edge: which servers have one (EdgeTarget), the Velocity resync and
the operator's republish. The edge app itself only sees plain EdgeTargets; the flow steps that
publish or remove a server's edge are in `lifecycle/worker/steps/edge.py`."""
from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import current_app

from edge.errors import EdgeError
from edge.services import (
    EdgeTarget,
    edge_republish,
    velocity_resync,
)

from ..choices import InstanceStatus, Kind
from ..models import ContainerInstance
from .audit import audit_record

#: The task that runs a resync (lifecycle/tasks.py); sent by name, so services never import
#: tasks.
VELOCITY_RESYNC_TASK = "lifecycle.velocity_resync"

logger = logging.getLogger(__name__)


def edge_target_for(inst: ContainerInstance) -> EdgeTarget | None:
    """Game servers get DNS and a Velocity registration; dev containers use the wildcard
    `dev-<vmid>` route and need none."""
    if inst.kind != Kind.GAME or not inst.ip or not inst.ports.get("game"):
        return None
    return EdgeTarget(server_id=str(inst.id), slug=inst.slug, backend_ip=inst.ip,
                      backend_port=int(inst.ports["game"]))


def velocity_resync_request() -> dict[str, Any]:
    """Queue a resync (routed to the edge queue by its task name); returns the task id and how
    many servers it covers."""
    task_id = str(uuid.uuid4())
    current_app.send_task(VELOCITY_RESYNC_TASK, task_id=task_id)
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
