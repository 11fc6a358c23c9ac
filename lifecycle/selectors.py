"""Reads of the lifecycle app: what a user may see, with the queries the API needs."""
from __future__ import annotations

from typing import Any

from django.db.models import Count, OuterRef, QuerySet, Subquery

from django.conf import settings

from .choices import (
    DELETED_STATUSES,
    QUOTA_STATUSES,
    TERMINAL_STATUSES,
    AllocationState,
    Kind,
    PoolKind,
)
from .models import Allocation, ContainerInstance, Node, Operation


def _with_last_operation(qs: QuerySet[ContainerInstance]) -> QuerySet[ContainerInstance]:
    last = Operation.objects.filter(instance=OuterRef("pk")).order_by("-created_at")
    return qs.annotate(
        last_op_id=Subquery(last.values("id")[:1]),
        last_op_kind=Subquery(last.values("kind")[:1]),
        last_op_state=Subquery(last.values("state")[:1]),
    )


def server_list_for(*, user: Any) -> QuerySet[ContainerInstance]:
    """Servers `user` may see: their own, or all for staff; newest first, with the node and the
    last operation joined in (a constant number of queries per page)."""
    qs = ContainerInstance.objects.select_related("node")
    if not user.is_staff:
        qs = qs.filter(owner_id=user.pk)
    return _with_last_operation(qs).order_by("-created_at", "id")


def server_get_for(*, user: Any, server_id: Any) -> ContainerInstance | None:
    return server_list_for(user=user).filter(pk=server_id).first()


def server_address(server: ContainerInstance) -> str | None:
    """What a player types to join a game server: `<slug>.<EDGE_ZONE>` (the SRV record and
    Velocity do the rest); None for dev containers and servers that are deleted."""
    if server.kind != Kind.GAME or server.status in DELETED_STATUSES | TERMINAL_STATUSES:
        return None
    return f"{server.slug}.{settings.EDGE_ZONE}"


def server_ide_url(server: ContainerInstance) -> str | None:
    """Where a dev container's browser IDE is served (IDE_URL_TEMPLATE), once it has a VMID;
    None for game servers, dev containers without code-server and deleted servers."""
    if (server.kind != Kind.DEV or not server.enable_code_server or server.vmid is None
            or server.status in DELETED_STATUSES | TERMINAL_STATUSES):
        return None
    return settings.IDE_URL_TEMPLATE.format(vmid=server.vmid)


def operation_get_for(*, user: Any, operation_id: Any) -> Operation | None:
    qs = Operation.objects.select_related("instance")
    if not user.is_staff:
        qs = qs.filter(instance__owner_id=user.pk)
    return qs.filter(pk=operation_id).first()


def node_capacity_list() -> list[dict[str, Any]]:
    """Every node with its memory use, free IPs/ports and server count (three queries)."""
    free = Allocation.objects.filter(state=AllocationState.FREE, pool__node__isnull=False)
    free_counts = {
        (node_id, kind): n
        for node_id, kind, n in free.values_list("pool__node_id", "pool__kind")
        .annotate(n=Count("id")).values_list("pool__node_id", "pool__kind", "n")
    }
    servers = dict(
        ContainerInstance.objects.filter(status__in=QUOTA_STATUSES, node__isnull=False)
        .values_list("node_id").annotate(n=Count("id")).values_list("node_id", "n")
    )
    return [
        {
            "name": node.name,
            "enabled": node.enabled,
            "memory_mb": node.memory_mb,
            "allocated_memory_mb": node.allocated_memory_mb,
            "free_ips": free_counts.get((node.id, PoolKind.IP), 0),
            "free_ports": free_counts.get((node.id, PoolKind.PORT), 0),
            "servers": servers.get(node.id, 0),
        }
        for node in Node.objects.all()
    ]
