"""Release (`adopt --release VMID…`): an adoption undone in the reverse order; the container,
its records and registrations as they were, the server row a purged tombstone."""
from __future__ import annotations

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from core.ownership import FLEET_TAG, container_tag
from edge.adoption import EdgeStep, edge_adoption_undo
from edge.services import EdgeClients

from ...choices import ACTIVE_OPERATION_STATES, AdoptionState, DesiredState, InstanceStatus
from ...clients.proxmox import ProxmoxClient, parse_tags
from core.db import named_lock
from ...errors import AdoptionRefused
from ...firewall import parse_marker
from ...models import Adoption, Allocation, ContainerInstance, Node, Operation
from ..allocations import allocation_release_to_quarantine
from ..audit import Actor, audit_record
from ..edge import edge_target_for
from .apply import _advance


def _firewall_undo(pve: ProxmoxClient, adoption: Adoption, inst: ContainerInstance) -> list[str]:
    original = adoption.original_firewall
    if original is None:
        return []
    done = []
    for _ in range(50):  # our rules, one at a time from the highest position
        rules = pve.ct_firewall_rules(adoption.node, adoption.vmid)
        ours = [r for r in rules if (parse_marker(r.get("comment")) or ("",))[0] == str(inst.id)]
        if not ours:
            break
        digest = next((r.get("digest") for r in rules if r.get("digest")), "")
        pve.ct_firewall_rule_delete(adoption.node, adoption.vmid,
                                    max(int(r["pos"]) for r in ours), digest=digest)
        done.append("removed a firewall rule of ours")
    before = original.get("options") or {}
    absent = [k for k in ("enable", "policy_in", "policy_out") if k not in before]
    pve.ct_firewall_options_set(adoption.node, adoption.vmid, **before,
                                **({"delete": ",".join(absent)} if absent else {}))
    config = pve.ct_config(adoption.node, adoption.vmid) or {}
    if original.get("net0") and config.get("net0") != original["net0"]:
        pve.ct_config_set(adoption.node, adoption.vmid, digest=config.get("digest"),
                          net0=original["net0"])
        done.append("net0 as it was")
    done.append("firewall options as they were")
    return done


def _untag(pve: ProxmoxClient, adoption: Adoption, inst: ContainerInstance) -> str:
    config = pve.ct_config(adoption.node, adoption.vmid)
    if config is None:
        return f"CT {adoption.vmid} is gone"
    before = parse_tags(adoption.original_tags)
    tags = parse_tags(config.get("tags"))
    drop = {t for t in (FLEET_TAG, container_tag(inst.id)) if t not in before}
    if not tags & drop:
        return "tags already as they were"
    pve.ct_config_set(adoption.node, adoption.vmid, digest=config.get("digest"),
                      tags=";".join(sorted(tags - drop)))
    return "tags as they were"


def adoption_release(vmid: int, *, actor: Actor) -> list[str]:
    """Undo one adoption: edge, firewall and tags as they were, then the rows (idempotent, so a
    release cut off is finished by running it again). Raises AdoptionRefused when the VMID
    was not adopted or its server is busy."""
    with named_lock(f"zlh_adopt_{vmid}") as held:
        if not held:
            raise AdoptionRefused(f"CT {vmid}: an --apply is working on it right now")
        return _release_locked(vmid, actor=actor)


def _release_locked(vmid: int, *, actor: Actor) -> list[str]:
    adoption = Adoption.objects.filter(vmid=vmid).exclude(state=AdoptionState.RELEASED).first()
    if adoption is None:
        raise AdoptionRefused(f"CT {vmid} was not adopted (or is released already): a server "
                              "of ours is deleted through the API or the admin")
    if adoption.source == "tag":
        # It was ours before the database forgot it: released, its tag and marked records
        # would name a purged server, and purged servers' leftovers are orphans.
        raise AdoptionRefused(f"CT {vmid} was adopted back by its own tag: it is a server of "
                              "ours; delete it through the API or the admin if it must go")
    active = Operation.objects.filter(instance_id=adoption.instance_id,
                                      state__in=ACTIVE_OPERATION_STATES).first()
    if active is not None:
        raise AdoptionRefused(f"CT {vmid}: its server is busy ({active.kind} {active.id}); "
                              "release it when that has ended")
    with transaction.atomic():
        ContainerInstance.objects.filter(pk=adoption.instance_id).update(maintenance_lock=True)
        _advance(adoption, AdoptionState.RELEASING)
    inst = ContainerInstance.objects.select_related("node").get(pk=adoption.instance_id)
    done: list[str] = []
    target = edge_target_for(inst)
    if target is not None:
        clients = EdgeClients()
        for step in reversed(adoption.edge):
            done.append(edge_adoption_undo(target, EdgeStep.of(step), clients))
    pve = ProxmoxClient.from_settings()
    done += _firewall_undo(pve, adoption, inst)
    if adoption.source == "mapping":
        done.append(_untag(pve, adoption, inst))
    _release_rows(adoption, inst, actor, done)
    return done


@transaction.atomic
def _release_rows(adoption: Adoption, inst: ContainerInstance, actor: Actor,
                  done: list[str]) -> None:
    inst = ContainerInstance.objects.select_for_update().get(pk=inst.pk)
    for pk, (state, note) in (adoption.original_allocations or {}).items():
        Allocation.objects.filter(pk=int(pk), instance_id=inst.id).update(
            state=state, note=note or "", instance=None, role="", claimed_at=None,
            released_at=Now(), quarantine_until=None)
    # Anything else it came to hold (a backup's spare VMID) goes the usual way.
    allocation_release_to_quarantine(instance_id=inst.id)
    if inst.node_id and inst.status != InstanceStatus.PURGED:
        Node.objects.filter(pk=inst.node_id).update(
            allocated_memory_mb=F("allocated_memory_mb") - inst.memory_mb)
    ContainerInstance.objects.filter(pk=inst.pk).update(
        status=InstanceStatus.PURGED, live_slug=None, desired_state=DesiredState.PURGED,
        deleted_at=Now(), status_changed_at=Now(), maintenance_lock=False)
    Adoption.objects.filter(pk=adoption.pk).update(state=AdoptionState.RELEASED,
                                                   released_at=Now())
    audit_record(actor=actor, instance_id=inst.id, action="adopt:release",
                 from_status=inst.status, to_status=InstanceStatus.PURGED,
                 data={"vmid": adoption.vmid, "undone": done})
