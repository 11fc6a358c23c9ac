"""A container that moved to another Proxmox node (Proxmox HA recovering it after a node loss,
or an operator's `pct migrate`): the server row follows it.

A VMID is unique in the whole cluster, so the container found under the server's VMID on
another node, carrying the server's tag, *is* the server's container: it was not lost, and
nothing may be concluded from its absence on the old node. Recording the move makes every later
call (stop, start, destroy, the reconciler's repairs) go to the node where it really is.
"""
from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.lookups import LessThanOrEqual

from notifications.services import notify_warning

from core.db import retry_on_lock_conflict
from ..errors import LifecycleError
from ..models import ContainerInstance, Node
from .audit import Actor, audit_record
from .nodes import node_release_memory


class UnknownNode(LifecycleError):
    """The container sits on a Proxmox node ZLH has no row for: an operator must add it."""

    code = "unknown_node"
    http_status = 409


def move_alert_key(instance_id: Any, node: str) -> str:
    """The key of the operator's warning about one move (deduplicated by the outbox)."""
    return f"container-moved:{instance_id}:{node}"


@retry_on_lock_conflict
def server_record_move(*, instance_id: Any, to_node: str, actor: Actor, seen_by: str,
                       alert_key: str | None = None) -> bool:
    """Record that the server's container now lives on `to_node`, under the server's row lock
    and in one transaction: the node, the node memory it is counted against, an audit event,
    and one warning to the operator. Returns False (and changes nothing, says nothing) when
    the row already names that node: whoever saw the move first recorded it, the others
    follow.

    `alert_key` lets a caller that has already told the operator about this move (the
    reconciler's finding) share its alert, so the operator hears about a move once.

    The memory goes with the container. If the new node has no room left in its accounting
    (an HA recovery does not ask us), it is counted as full and the warning says so: the
    container runs there either way, and the node takes no new servers until room is back.
    """
    with transaction.atomic():
        inst = ContainerInstance.objects.select_for_update().get(pk=instance_id)
        new = Node.objects.filter(name=to_node).first()
        if new is None:
            raise UnknownNode(
                f"the container of {inst.slug} (VMID {inst.vmid}) is on node {to_node!r}, "
                "which ZLH does not know; add the node (manage.py node add) or move the "
                "container back")
        if inst.node_id == new.pk:
            return False
        old = Node.objects.filter(pk=inst.node_id).first() if inst.node_id else None
        full = False
        if old is not None:
            node_release_memory(node_id=old.pk, memory_mb=inst.memory_mb)
        fits = LessThanOrEqual(F("allocated_memory_mb") + inst.memory_mb, F("memory_mb"))
        if not Node.objects.filter(fits, pk=new.pk).update(
                allocated_memory_mb=F("allocated_memory_mb") + inst.memory_mb):
            full = bool(Node.objects.filter(pk=new.pk).update(
                allocated_memory_mb=F("memory_mb")))
        ContainerInstance.objects.filter(pk=inst.pk).update(node=new)
        from_name = old.name if old is not None else "-"
        audit_record(actor=actor, instance_id=inst.id, action="node:moved",
                     data={"from": from_name, "to": new.name, "vmid": inst.vmid,
                           "seen_by": seen_by, "node_full": full})
        body = (f"Container {inst.vmid} of {inst.slug} is on node {new.name}, not on "
                f"{from_name} where ZLH had it (Proxmox HA or a manual migration). The move "
                f"is recorded; operations now go to {new.name}.")
        if full:
            body += (f" Node {new.name} is now counted as full: it had no room left for "
                     f"{inst.memory_mb} MB more.")
        notify_warning(f"{inst.slug} moved to {new.name}", body,
                       fields=[{"name": "server", "value": str(inst.id)},
                               {"name": "vmid", "value": str(inst.vmid)},
                               {"name": "from", "value": from_name},
                               {"name": "to", "value": new.name},
                               {"name": "seen by", "value": seen_by}],
                       alert_key=alert_key or move_alert_key(inst.id, new.name),
                       subject=str(inst.id))
    return True
