"""Status moves that tolerate a takeover (the new worker finds the move already made), the
final move that succeeds the operation, settling the server after a failure, and the facts an
announcement gives about a server."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.db import transaction

from notifications.services import alert_resolve, notify_warning

from ...choices import Kind, OperationKind
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
        # A failure of this kind reported earlier is over now.
        alert_resolve(failure_alert_key(ctx.instance_id, ctx.kind),
                      body=f"The {ctx.kind} succeeded.")
        ctx.succeed()


def failure_alert_key(instance_id: Any, kind: str) -> str:
    return f"operation-failed:{instance_id}:{kind}"


def announce_failure(ctx: OperationContext, error: dict[str, Any], *, errored: bool) -> None:
    """Every operation that ends in failure reaches the operator once (deduplicated per server
    and kind, resolved when the same kind later succeeds), in the transaction that ends it."""
    inst = ctx.instance()
    what = "Provisioning" if ctx.kind == OperationKind.PROVISION else ctx.kind.capitalize()
    title = f"{what} {inst.slug} failed" + (" (platform error)" if errored else "")
    retry = ("retry it" if ctx.kind == OperationKind.PROVISION
             else f"request the {ctx.kind} again")
    notify_warning(title, f"{error['message']}\n\nThe server is {inst.status}; {retry} once "
                   "the cause is fixed.", fields=server_facts(inst),
                   alert_key=failure_alert_key(inst.id, ctx.kind), subject=str(inst.id))


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
                      error: dict[str, Any], fields: dict[str, Any] | None = None) -> None:
    """Put the server in a readable state after a failed operation (best effort)."""
    try:
        instance_transition(instance_id=ctx.instance_id, expected=expected, to=to,
                            actor=ctx.actor, action=f"{ctx.kind}:failed",
                            fields={"last_error": error, **(fields or {})},
                            audit_data={"operation": str(ctx.operation_id), "error": error})
    except TransitionConflict:
        ContainerInstance.objects.filter(pk=ctx.instance_id).update(last_error=error)


def begin(ctx: OperationContext, *, fields: dict[str, Any] | None = None) -> None:
    """Move the server into the status its operation kind works in (see operation_kinds)."""
    spec = ctx.spec
    move(ctx, expected=spec.begins_from, to=spec.working, fields=fields)
