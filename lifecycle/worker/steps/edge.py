"""Steps on the edge (DNS and Velocity) inside flows: publish once the server is ready and
post-check it, remove it on delete, unregister from Velocity before a stop."""
from __future__ import annotations

from edge.errors import EdgeError
from edge.services import (
    EdgeClients,
    edge_republish,
    edge_unpublish,
    velocity_unregister,
)
from edge.choices import Verdict

from ...models import ContainerInstance
from ...services.edge import edge_target_for
from ..context import OperationContext
from ..errors import StepError
from . import Step


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
        report = edge_republish(target, clients=EdgeClients.shared(on_wait=ctx.renew))
    except EdgeError as err:
        raise _as_step_error(err, "publishing the edge") from err
    for action in report.actions:
        ctx.note(f"edge: {action}")
    if report.ok:
        ctx.checkpoint(Step.EDGE, "edge published and seen live")
        return
    foreign_only = report.observed is not None and all(
        state in (Verdict.OK, Verdict.FOREIGN) for state in report.observed.parts.values())
    if not foreign_only:
        raise StepError(f"edge not live after publishing: {report.problems}", retryable=True,
                        kind="edge_drift")
    for problem in report.problems:
        ctx.note(f"edge problem left for the operator: {problem}")
    ctx.checkpoint(Step.EDGE, "edge published except where foreign records are in the way")


def unpublish_step(ctx: OperationContext, inst: ContainerInstance) -> None:
    target = edge_target_for(inst)
    if target is None:
        return
    try:
        report = edge_unpublish(target, clients=EdgeClients.shared(on_wait=ctx.renew))
    except EdgeError as err:
        raise _as_step_error(err, "removing the edge") from err
    for action in report.actions:
        ctx.note(f"edge: {action}")
    ctx.checkpoint(Step.UNPUBLISHED, "edge removed")


def velocity_unregister_step(ctx: OperationContext, inst: ContainerInstance) -> None:
    """Before a stop: Velocity must not send players to a server that is going away."""
    target = edge_target_for(inst)
    if target is None:
        return
    try:
        velocity_unregister(target, clients=EdgeClients.shared(on_wait=ctx.renew))
    except EdgeError as err:
        raise _as_step_error(err, "unregistering from Velocity") from err
