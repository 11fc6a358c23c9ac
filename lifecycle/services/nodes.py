"""Adding Proxmox nodes (with their IP and port pools) and switching them on and off."""
from __future__ import annotations

import ipaddress

from django.db import transaction
from django.db.models import F

from ..models import Node
from .allocations import ip_pool_ensure, port_pool_ensure
from .audit import Actor, audit_record


@transaction.atomic
def node_create(
    *,
    name: str,
    memory_mb: int,
    cores: int,
    subnet: str,
    gateway: str,
    port_range: tuple[int, int],
    ip_range: tuple[str, str] | None = None,
    actor: Actor,
) -> Node:
    """Create a node and fill its IP and port pools. The IP pool defaults to the whole subnet
    minus network, broadcast and gateway."""
    node = Node(
        name=name,
        memory_mb=memory_mb,
        cores=cores,
        subnet=subnet,
        gateway=gateway,
        port_range_start=port_range[0],
        port_range_end=port_range[1],
    )
    node.full_clean()
    node.save()
    net = ipaddress.IPv4Network(subnet, strict=True)
    first, last = ip_range or (str(net.network_address + 1), str(net.broadcast_address - 1))
    _, ips = ip_pool_ensure(node=node, first=first, last=last)
    _, ports = port_pool_ensure(node=node)
    audit_record(
        actor=actor, action="node:create",
        data={"node": name, "memory_mb": memory_mb, "ips": ips, "ports": ports},
    )
    return node


@transaction.atomic
def node_set_enabled(*, node: Node, enabled: bool, actor: Actor) -> Node:
    Node.objects.filter(pk=node.pk).update(enabled=enabled)
    audit_record(actor=actor, action="node:enable" if enabled else "node:disable",
                 data={"node": node.name})
    node.refresh_from_db()
    return node


def node_release_memory(*, node_id: int, memory_mb: int) -> bool:
    """Give a purged server's memory back to its node (never below zero); call inside the
    purge's transaction."""
    return bool(Node.objects.filter(pk=node_id, allocated_memory_mb__gte=memory_mb).update(
        allocated_memory_mb=F("allocated_memory_mb") - memory_mb))
