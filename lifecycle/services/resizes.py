"""Moving a server to another plan (POST /servers/{id}/resize).

The request does the accounting, in one transaction and under the same locks as a create (the
account's quota row first, then the server's row, then the node's conditional update): the
account's memory quota and the node's memory must take the bigger plan, or nothing changes.
The server's row takes the new plan's sizes at once — so a create racing it sees the memory as
used — and the `resize` operation then gives the container those sizes (flows/resize.py). The
disk only grows (Proxmox cannot shrink a container's volume). A resize whose operation failed
may be asked for again with the same plan: it applies the row's sizes again.
"""
from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.lookups import LessThanOrEqual

from notifications.services import notify_warning

from ..catalog import PLANS
from ..choices import OperationKind, OperationState
from core.db import retry_on_lock_conflict
from ..errors import CapacityExhausted, InvalidRequest, InvalidState, QuotaExceeded
from ..models import AccountQuota, ContainerInstance, Node, Operation
from ..operation_kinds import spec_for
from ..validation import plan_kind_errors
from .accounts import quota_usage
from .audit import Actor, audit_record
from .operations import operation_create_exclusive, operation_refuse_if_active

logger = logging.getLogger(__name__)


def server_resize_request(*, instance_id: Any, plan: Any, actor: Actor) -> Operation:
    """Accept a move of the server to `plan`; the queued `resize` operation (the 202 receipt)."""
    try:
        return _resize_tx(instance_id=instance_id, plan=plan, actor=actor)
    except CapacityExhausted as exc:
        notify_warning("Out of capacity: a resize was refused",
                       f"{exc.message}\n\nRefused: server {instance_id} to the {plan} plan.",
                       alert_key="capacity-exhausted")
        raise


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, fields={"plan": [message]})


@retry_on_lock_conflict
def _resize_tx(*, instance_id: Any, plan: Any, actor: Actor) -> Operation:
    if not isinstance(plan, str) or plan not in PLANS:
        raise _invalid(f"Unknown plan {plan!r}; choose one of: {', '.join(PLANS)}.")
    new = PLANS[plan]
    with transaction.atomic():
        owner_id = ContainerInstance.objects.values_list("owner_id", flat=True).get(
            pk=instance_id)
        quota = AccountQuota.objects.select_for_update().filter(user_id=owner_id).first()
        inst = ContainerInstance.objects.select_for_update().get(pk=instance_id)
        spec = spec_for(OperationKind.RESIZE)
        if inst.suspended:
            raise InvalidState("This server is suspended; contact support.")
        if inst.status not in spec.requestable_from:
            raise InvalidState(f"A server can change plan while it is running or stopped; this "
                               f"one is {inst.status}.")
        problems = plan_kind_errors(plan, inst.kind)
        if problems:
            raise _invalid(problems[0])
        if new.disk_gb < inst.disk_gb:
            raise _invalid(
                f"A disk only grows: the {plan} plan has {new.disk_gb} GB and this server has "
                f"{inst.disk_gb} GB. Choose a plan with at least {inst.disk_gb} GB.")
        operation_refuse_if_active(instance_id=inst.id)
        if plan == inst.plan and not _last_resize_failed(inst.id):
            raise _invalid(f"The server is on the {plan} plan already.")
        delta = new.memory_mb - inst.memory_mb
        if delta > 0:
            usage = quota_usage(user_id=owner_id)
            limit = quota.max_memory_mb if quota is not None else 0
            if usage.memory_mb + delta > limit:
                raise QuotaExceeded(
                    f"The {plan} plan needs {delta} MB more; your plan allows {limit} MB in "
                    f"total and {usage.memory_mb} MB are in use.")
            fits = LessThanOrEqual(F("allocated_memory_mb") + delta, F("memory_mb"))
            if not Node.objects.filter(fits, pk=inst.node_id).update(
                    allocated_memory_mb=F("allocated_memory_mb") + delta):
                raise CapacityExhausted(
                    f"The node this server runs on has no room for the {plan} plan right now. "
                    "The operator has been told; please try again later.")
        elif delta < 0:
            Node.objects.filter(pk=inst.node_id, allocated_memory_mb__gte=-delta).update(
                allocated_memory_mb=F("allocated_memory_mb") + delta)
        before = {"plan": inst.plan, "memory_mb": inst.memory_mb, "cores": inst.cores,
                  "disk_gb": inst.disk_gb}
        after = {"plan": plan, "memory_mb": new.memory_mb, "cores": new.cores,
                 "disk_gb": new.disk_gb}
        ContainerInstance.objects.filter(pk=inst.pk).update(**after)
        op = operation_create_exclusive(instance_id=inst.id, kind=OperationKind.RESIZE,
                                        requested_by=actor.label,
                                        params={"from": before, "to": after})
        audit_record(actor=actor, instance_id=inst.id, action="request:resize",
                     from_status=inst.status, data={"operation": str(op.id), "from": before,
                                                    "to": after})
    return op


def _last_resize_failed(instance_id: Any) -> bool:
    last = (Operation.objects.filter(instance_id=instance_id, kind=OperationKind.RESIZE)
            .order_by("-created_at").values_list("state", flat=True).first())
    return last in (OperationState.FAILED, OperationState.ERRORED)
