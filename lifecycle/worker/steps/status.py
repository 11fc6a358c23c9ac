"""Status moves that tolerate a takeover (the new worker finds the move already made), the
final move that succeeds the operation, settling the server after a failure, and the facts an
announcement gives about a server."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.db import transaction

from ...choices import Kind
from ...errors import TransitionConflict
from ...models import ContainerInstance
from ...statemachines.instance import instance_transition
from ..context import OperationContext
from ..errors import StepError


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


def begin(ctx: OperationContext, *, fields: dict[str, Any] | None = None) -> None:
    """Move the server into the status its operation kind works in (see operation_kinds)."""
    spec = ctx.spec
    move(ctx, expected=spec.begins_from, to=spec.working, fields=fields)
