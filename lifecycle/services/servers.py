"""Creating servers: quota, idempotency, placement and allocation in one transaction."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.lookups import LessThanOrEqual

from notifications.services import notify_warning

from ..catalog import PLANS, PORT_ROLES
from ..choices import DesiredState, InstanceStatus, OperationKind, PoolKind
from core.db import retry_on_lock_conflict
from ..errors import (
    CapacityExhausted,
    IdempotencyMismatch,
    InvalidRequest,
    NameTaken,
    QuotaExceeded,
)
from ..models import AccountQuota, ContainerInstance, Node, Operation
from ..validation import ServerSpec, idempotency_key_errors, server_spec_validate
from .accounts import quota_ensure, quota_usage
from .allocations import VMID_POOL_NAME, allocation_bind, allocation_lock_free, pool_ids_for_nodes
from .audit import Actor, audit_record
from .operations import operation_create

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateResult:
    instance: ContainerInstance
    operation: Operation
    #: False when an earlier request with the same Idempotency-Key is being replayed.
    created: bool


def request_fingerprint(spec: ServerSpec, *, source: Any = None) -> str:
    body = spec.as_dict()
    if source is not None:  # the same key for a restore of another backup is another request
        body["source_backup"] = str(source.id)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class _Placement:
    node_id: int
    ip: str
    ports: dict[str, int]
    rows: dict[int, str]  # locked allocation row id -> role


def _place(*, memory_mb: int, port_roles: tuple[str, ...]) -> _Placement:
    """Pick the enabled node with most free memory that also has a free IP and ports, and
    reserve its memory. Must run inside the create transaction."""
    # Written as allocated + wanted <= capacity: the columns are unsigned, so no subtraction
    # that could go negative may appear in SQL.
    fits = LessThanOrEqual(F("allocated_memory_mb") + memory_mb, F("memory_mb"))
    candidates = list(
        Node.objects.filter(fits, enabled=True)
        .order_by((F("memory_mb") - F("allocated_memory_mb")).desc(), "name")
        .values_list("id", flat=True)
    )
    if not candidates:
        raise CapacityExhausted(
            "No node has room for this plan right now. The operator has been told; "
            "please try again later."
        )
    pools = pool_ids_for_nodes(candidates)
    for node_id in candidates:
        ip_pool, port_pool = pools.get((node_id, PoolKind.IP)), pools.get((node_id, PoolKind.PORT))
        if ip_pool is None or (port_roles and port_pool is None):
            continue
        ip_rows = allocation_lock_free(pool_id=ip_pool, count=1)
        port_rows = allocation_lock_free(pool_id=port_pool, count=len(port_roles)) if port_roles else []
        if not ip_rows or len(port_rows) < len(port_roles):
            continue
        # Conditional UPDATE: only succeeds while the node still has room, so concurrent
        # creates cannot overshoot it (the row lock serialises them on this node).
        reserved = Node.objects.filter(fits, pk=node_id, enabled=True).update(allocated_memory_mb=F("allocated_memory_mb") + memory_mb)
        if not reserved:
            continue
        rows = {ip_rows[0][0]: "ip"}
        rows.update({row_id: role for (row_id, _), role in zip(port_rows, port_roles)})
        return _Placement(
            node_id=node_id,
            ip=str(ipaddress.IPv4Address(ip_rows[0][1])),
            ports={role: value for (_, value), role in zip(port_rows, port_roles)},
            rows=rows,
        )
    raise CapacityExhausted(
        "No node has a free container IP or port for this server right now. The operator has "
        "been told; please try again later."
    )


def _vmid_pool_id() -> int:
    from ..models import AllocationPool

    pool_id = AllocationPool.objects.filter(name=VMID_POOL_NAME).values_list("id", flat=True).first()
    if pool_id is None:
        raise CapacityExhausted("No VMID pool is configured; the operator has been told.")
    return pool_id


class _NoQuotaRow(Exception):
    pass


def server_create(
    *,
    owner: Any,
    data: dict[str, Any],
    idempotency_key: str | None = None,
    actor: Actor | None = None,
    source_backup: Any = None,
) -> CreateResult:
    """Accept a create request: exactly one server and one `provision` operation per request.

    One transaction locks the account's quota row (serialising that account's creates), replays
    or refuses by Idempotency-Key, checks the quota, places the server on a node, claims a VMID,
    an IP and ports with row locks, inserts the server and its `provision` operation, and
    enqueues the task after commit. Retried whole on deadlock / lock-wait timeout.

    `source_backup` (a ready Backup): the new server is made from that archive instead of the
    template (restore as a new server): its provision restores the archive, with the new
    server's own VMID, IP, ports and name; the world comes from the backup.
    """
    spec = server_spec_validate(data)
    if idempotency_key is not None:
        problems = idempotency_key_errors(idempotency_key)
        if problems:
            raise InvalidRequest(problems[0], fields={"Idempotency-Key": problems})
    actor = actor or Actor.for_user(owner)
    try:
        try:
            return _server_create_tx(owner=owner, spec=spec, key=idempotency_key, actor=actor,
                                     source=source_backup)
        except _NoQuotaRow:
            quota_ensure(user=owner)
            return _server_create_tx(owner=owner, spec=spec, key=idempotency_key, actor=actor,
                                     source=source_backup)
    except CapacityExhausted as exc:
        # The user is told "the operator has been told": make it true. Outside the create's
        # transaction (rolled back); one alert per repeat interval, however many are refused.
        notify_warning("Out of capacity: a create was refused",
                       f"{exc.message}\n\nRefused: {spec.kind} {spec.plan} for "
                       f"{owner.get_username()}. Add a node, free values, or widen a pool.",
                       alert_key="capacity-exhausted")
        raise


@retry_on_lock_conflict
def _server_create_tx(*, owner: Any, spec: ServerSpec, key: str | None, actor: Actor,
                      source: Any = None) -> CreateResult:
    fingerprint = request_fingerprint(spec, source=source)
    plan = PLANS[spec.plan]
    with transaction.atomic(durable=True):
        quota = AccountQuota.objects.select_for_update().filter(user_id=owner.pk).first()
        if quota is None:
            raise _NoQuotaRow
        if key is not None:
            replay = _idempotent_replay(owner=owner, key=key, fingerprint=fingerprint)
            if replay is not None:
                return replay
        if ContainerInstance.objects.filter(live_slug=spec.name).exists():
            raise _name_taken(spec.name)
        _check_quota(quota=quota, owner=owner, memory_mb=plan.memory_mb)

        vmid_rows = allocation_lock_free(pool_id=_vmid_pool_id(), count=1)
        if not vmid_rows:
            raise CapacityExhausted(
                "No VMID is free right now. The operator has been told; please try again later."
            )
        placement = _place(memory_mb=plan.memory_mb, port_roles=PORT_ROLES[spec.kind])
        instance = _insert_instance(owner=owner, spec=spec, key=key, fingerprint=fingerprint,
                                    vmid=vmid_rows[0][1], placement=placement)
        rows = dict(placement.rows)
        rows[vmid_rows[0][0]] = "vmid"
        allocation_bind(roles_by_row=rows, instance_id=instance.id)
        op = operation_create(
            instance_id=instance.id, kind=OperationKind.PROVISION, requested_by=actor.label,
            params={"source_backup": str(source.id)} if source is not None else None,
        )
        audit_record(
            actor=actor,
            instance_id=instance.id,
            action="server:create",
            to_status=InstanceStatus.PENDING,
            data={"spec": spec.as_dict(), "vmid": instance.vmid, "ip": instance.ip,
                  "ports": instance.ports, "operation": str(op.id),
                  **({"source_backup": str(source.id)} if source is not None else {})},
        )
    return CreateResult(instance=instance, operation=op, created=True)


def _idempotent_replay(*, owner: Any, key: str, fingerprint: str) -> CreateResult | None:
    """The earlier create with this key (same body), or None; 422 for another body."""
    existing = (
        ContainerInstance.objects.filter(owner_id=owner.pk, idempotency_key=key)
        .select_related("node")
        .first()
    )
    if existing is None:
        return None
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyMismatch(
            "This Idempotency-Key was already used for a different request. Use a "
            "new key for a new server.",
            fields={"Idempotency-Key": ["Already used with another body."]},
        )
    op = (
        Operation.objects.filter(instance=existing, kind=OperationKind.PROVISION)
        .order_by("created_at")
        .first()
    )
    return CreateResult(instance=existing, operation=op, created=False)


def _name_taken(name: str) -> NameTaken:
    return NameTaken(f"The name '{name}' is already in use. Choose another one.",
                     fields={"name": ["Already in use."]})


def _check_quota(*, quota: AccountQuota, owner: Any, memory_mb: int) -> None:
    """Counted under the account row's lock, so concurrent creates cannot overshoot it."""
    usage = quota_usage(user_id=owner.pk)
    if usage.servers + 1 > quota.max_servers:
        raise QuotaExceeded(
            f"Your plan allows {quota.max_servers} servers and you have {usage.servers} "
            "(soft-deleted servers count until they are purged).",
        )
    if usage.memory_mb + memory_mb > quota.max_memory_mb:
        raise QuotaExceeded(
            f"This server needs {memory_mb} MB; your plan allows "
            f"{quota.max_memory_mb} MB in total and {usage.memory_mb} MB are in use.",
        )


def _insert_instance(*, owner: Any, spec: ServerSpec, key: str | None, fingerprint: str,
                     vmid: int, placement: _Placement) -> ContainerInstance:
    plan = PLANS[spec.plan]
    instance = ContainerInstance(
        owner=owner,
        name=spec.name,
        slug=spec.name,
        live_slug=spec.name,
        kind=spec.kind,
        variant=spec.variant,
        version=spec.version,
        plan=spec.plan,
        memory_mb=plan.memory_mb,
        cores=plan.cores,
        disk_gb=plan.disk_gb,
        runtime=spec.runtime,
        runtime_version=spec.runtime_version,
        enable_code_server=spec.enable_code_server,
        node_id=placement.node_id,
        vmid=vmid,
        ip=placement.ip,
        ports=placement.ports,
        status=InstanceStatus.PENDING,
        desired_state=DesiredState.RUNNING,
        idempotency_key=key,
        request_fingerprint=fingerprint,
    )
    try:
        instance.save(force_insert=True)
    except IntegrityError as exc:
        # Lost a race for the name to a create that committed between our check and insert.
        if "live_slug" in str(exc):
            raise _name_taken(spec.name) from exc
        raise
    return instance
