"""The repairs: each re-checks its precondition on fresh state, acts (database writes fenced by
the epoch; outside calls only while the epoch is current), then post-checks the live state and
reports what it saw — never a success it did not observe."""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now

from core.clock import db_now
from core.errors import ExternalError
from core.ownership import container_tag, owners_from_tags
from edge.choices import DNS_PARTS, PARTS, Part, Source, Verdict
from edge.services import (
    EdgeClients,
    edge_republish,
    observe_edge_state,
    velocity_registration_is_ours,
    velocity_registration_ours,
    velocity_unregister_ours,
)
from lifecycle.choices import (
    ACTIVE_OPERATION_STATES,
    TERMINAL_OPERATION_STATES,
    TRANSIENT_STATUSES,
    DesiredState,
    InstanceStatus,
    OperationKind,
    OperationState,
)
from lifecycle.clients.agent import AgentClient, AgentError
from lifecycle.clients.proxmox import PowerState, ProxmoxClient, parse_tags
from lifecycle.errors import LifecycleError, TransitionConflict
from lifecycle.models import ContainerInstance, Operation
from lifecycle.services.actions import server_request
from lifecycle.services.audit import Actor
from lifecycle.services.edge import edge_target_for
from lifecycle.services.firewall import (
    Target,
    firewall_apply as apply_firewall,
    firewall_check,
    firewall_read,
    ipsets_apply,
    ipsets_check,
)
from lifecycle.services.moves import UnknownNode, server_record_move
from lifecycle.statemachines.instance import can_transition, instance_transition
from lifecycle.statemachines.operation import operation_mark_stale

from .choices import Action, RepairState
from .lease import FencedOut, current_epoch, fenced
from .models import RepairEvent, ServerObservation
from .observe import NOT_REGISTERED

S = InstanceStatus
logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    state: str
    reason: str = ""
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)


class Skip(Exception):
    """The precondition no longer holds: nothing to do."""


def _instance(event: RepairEvent) -> ContainerInstance:
    inst = ContainerInstance.objects.select_related("node").filter(pk=event.instance_id).first()
    if inst is None:
        raise Skip("the server is gone")
    return inst


def _locked_instance(event: RepairEvent) -> ContainerInstance:
    """The server row, locked until the caller's transaction ends: a new operation (which
    locks the row first, `server_request`) waits until the repair has acted, so "no operation
    is active" stays true while it acts. Call inside `transaction.atomic()`."""
    inst = ContainerInstance.objects.select_for_update().filter(pk=event.instance_id).first()
    if inst is None:
        raise Skip("the server is gone")
    return inst


def _active_op(inst: ContainerInstance) -> Operation | None:
    return Operation.objects.filter(instance=inst, state__in=ACTIVE_OPERATION_STATES).first()


def _require_current(epoch: int) -> None:
    """Before a call outside the database: act only while our epoch is current."""
    if current_epoch() != epoch:
        raise FencedOut(f"epoch {epoch} is no longer current")


def _ours_in_cluster(pve: ProxmoxClient, inst: ContainerInstance) -> dict[str, Any] | None:
    """The cluster's row for the server's VMID if it is a container carrying its tag (on any
    node), else None."""
    for res in pve.cluster_resources():
        if int(res.get("vmid", -1)) == inst.vmid:
            ours = str(inst.id) in owners_from_tags(parse_tags(res.get("tags")))
            return res if ours and res.get("type") == "lxc" else None
    return None


def _power(inst: ContainerInstance) -> tuple[str | None, bool]:
    """(Proxmox power state or None if absent, whether the container is ours). Absent from the
    server's node is only believed once the whole cluster agrees: a container of ours on
    another node is a move to record first (`record_move`), never a reason to call the server
    missing or to recreate it."""
    pve = ProxmoxClient.from_settings()
    cfg = pve.ct_config(inst.node.name, inst.vmid) if inst.vmid and inst.node_id else None
    if cfg is None:
        moved = _ours_in_cluster(pve, inst) if inst.vmid else None
        if moved is not None:
            raise Skip(f"the container is on node {moved.get('node')}, not "
                       f"{inst.node.name if inst.node_id else '-'}: its move is recorded first")
        return None, False
    status = pve.ct_status(inst.node.name, inst.vmid) or {}
    return status.get("status"), str(inst.id) in owners_from_tags(parse_tags(cfg.get("tags")))


def _agent_ready(inst: ContainerInstance) -> bool:
    client = AgentClient.for_server(inst)
    client.timeout = settings.RECONCILER_AGENT_TIMEOUT
    try:
        status = client.status()
        return bool(status.get("ready"))
    except AgentError:
        return False
    finally:
        client.close()


def _sync_target(inst: ContainerInstance) -> str | None:
    """The status the live state says the server is in (None: leave it)."""
    power, ours = _power(inst)
    if power is None:
        return S.FAILED if inst.status == S.PROVISIONING else S.MISSING
    if not ours:
        return None  # a foreign container: an operator decides
    if power == PowerState.RUNNING:
        if _agent_ready(inst):
            return S.RUNNING
        # A provisioning nobody is carrying on is a failed one: the owner (or an operator) can
        # retry it, and the retry adopts the container.
        return S.FAILED if inst.status == S.PROVISIONING else None
    return S.FAILED if inst.status == S.PROVISIONING else S.STOPPED


def _wait_operation(op: Operation, *, timeout: float = 300) -> Operation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op.refresh_from_db()
        if op.state in TERMINAL_OPERATION_STATES:
            return op
        time.sleep(0.3)
    return op


# --- actions ------------------------------------------------------------------------------------
def clear_stale_operation_lock(event: RepairEvent, actor: Actor) -> Outcome:
    inst = _instance(event)
    op = _active_op(inst)
    window = timedelta(seconds=settings.RECONCILER_STALE_OPERATION_SECONDS)
    stale = db_now() - window  # a running op whose lease expired before this (DB clock)
    if op is None or not (op.state == OperationState.RUNNING and op.lease_expires_at
                          and op.lease_expires_at < stale):
        raise Skip("no stale operation any more")
    before = {"operation": str(op.id), "state": op.state, "status": inst.status}
    try:
        target = _sync_target(inst) if inst.status in TRANSIENT_STATUSES else None
    except Skip:
        target = None  # the container moved: the status is synced once the move is recorded
    with fenced(event.epoch):
        operation_mark_stale(operation_id=op.id, lease_expired_before=stale,
                             reason=f"cleared by {actor.label}")
        if target and can_transition(inst.status, target):
            instance_transition(instance_id=inst.id, expected=inst.status, to=target, actor=actor,
                                action="reconciler:sync_status")
    op.refresh_from_db()
    inst.refresh_from_db()
    after = {"state": op.state, "active_slot": op.active_slot, "status": inst.status}
    ok = op.state == OperationState.STALE and op.active_slot is None
    return Outcome(RepairState.SUCCEEDED if ok else RepairState.FAILED, before=before, after=after)


def sync_status(event: RepairEvent, actor: Actor) -> Outcome:
    inst = _instance(event)
    if _active_op(inst) is not None:
        raise Skip("an operation is active on the server")
    target = _sync_target(inst)
    if target is None or target == inst.status:
        raise Skip(f"status {inst.status} agrees with what is observed now")
    if not can_transition(inst.status, target):
        raise Skip(f"{inst.status} -> {target} is not a transition the reconciler may make")
    before = {"status": inst.status}
    with fenced(event.epoch):
        instance_transition(instance_id=inst.id, expected=inst.status, to=target, actor=actor,
                            action="reconciler:sync_status")
    inst.refresh_from_db()
    seen = _sync_target(inst)  # post-check: the live state still says the same
    ok = inst.status == target and seen in (target, None)
    return Outcome(RepairState.SUCCEEDED if ok else RepairState.FAILED, before=before,
                   after={"status": inst.status, "observed": seen})


def _edge_repair(parts: tuple[str, ...]) -> Callable[[RepairEvent, Actor], Outcome]:
    def repair(event: RepairEvent, actor: Actor) -> Outcome:
        clients = EdgeClients()
        # The server's row stays locked from the check to the act: an operation requested
        # meanwhile (a stop unregistering from Velocity) waits for the repair instead of
        # having its work undone by it. The calls are bounded by the clients' timeouts.
        with transaction.atomic():
            inst = _locked_instance(event)
            target = edge_target_for(inst)
            if inst.status != S.RUNNING or target is None or _active_op(inst) is not None:
                raise Skip("the server is not a running game server (or is busy)")
            before = observe_edge_state(target, clients=clients).parts
            if all(before.get(p) == Verdict.OK for p in parts):
                raise Skip("the edge is right again")
            _require_current(event.epoch)
            report = edge_republish(target, clients=clients)
        after = report.observed.parts if report.observed else {}
        ok = all(after.get(p) == Verdict.OK for p in parts)
        return Outcome(RepairState.SUCCEEDED if ok else RepairState.FAILED,
                       reason="; ".join(report.problems)[:300], before=before, after=after)
    return repair


def velocity_unregister(event: RepairEvent, actor: Actor) -> Outcome:
    """A stopped, deleted (…) server still registered with Velocity: unregistered, like its
    stop or delete would have. Only a registration of ours (our forced host) is touched."""
    clients = EdgeClients()
    with transaction.atomic():  # the row stays locked until it is done (see _edge_repair)
        inst = _locked_instance(event)
        if (inst.status not in NOT_REGISTERED or inst.maintenance_lock
                or _active_op(inst) is not None):
            raise Skip(f"the server is {inst.status} (or busy): its registration is its own")
        _require_current(event.epoch)
        removed = velocity_unregister_ours(inst.slug, clients=clients)
    still = velocity_registration_ours(inst.slug, clients=clients)
    if not removed and still is None:
        raise Skip("no registration of ours any more")
    return Outcome(RepairState.FAILED if still else RepairState.SUCCEEDED,
                   before={"registered": True, "status": inst.status},
                   after={"registered": still is not None})


def record_move(event: RepairEvent, actor: Actor) -> Outcome:
    """The container is ours, on another node than the row says: the row follows it (node,
    memory accounting, audit) — nothing in Proxmox is touched. The operator heard about it
    through the finding's alert, which the move shares, so once."""
    inst = _instance(event)
    pve = ProxmoxClient.from_settings()
    found = _ours_in_cluster(pve, inst) if inst.vmid else None
    if found is None:
        raise Skip("no container of ours holds the server's VMID any more")
    node = str(found.get("node"))
    before = {"node": inst.node.name if inst.node_id else None, "observed_node": node}
    if before["node"] == node:
        raise Skip(f"the server already names node {node}")
    try:
        with fenced(event.epoch):
            server_record_move(instance_id=inst.id, to_node=node, actor=actor,
                               seen_by=actor.label,
                               alert_key=f"finding:{event.finding_type}:{event.subject}")
    except UnknownNode as exc:
        return Outcome(RepairState.FAILED, reason=exc.message, before=before)
    inst = _instance(event)
    seen = _ours_in_cluster(pve, inst)  # post-check: still there, where the row says now
    after = {"node": inst.node.name, "observed_node": seen.get("node") if seen else None}
    ok = seen is not None and after["node"] == after["observed_node"] == node
    return Outcome(RepairState.SUCCEEDED if ok else RepairState.FAILED, before=before,
                   after=after)


def firewall_apply(event: RepairEvent, actor: Actor) -> Outcome:
    """The container's firewall (or the cluster IP sets its rules name) differs from the
    desired state: ours is put back — net0's flag, the options, our marked rules, the IP
    sets; rules without our marker are never touched. The verdict read afterwards is stored
    on the server's observation (what the next cycles judge by until it is checked again)."""
    pve = ProxmoxClient.from_settings()
    if event.instance_id is None:  # the cluster IP sets
        before = ipsets_check(pve)
        if not before:
            raise Skip("the IP sets are as desired again")
        _require_current(event.epoch)
        changes = ipsets_apply(pve)
        after = ipsets_check(pve)
        return Outcome(RepairState.FAILED if after else RepairState.SUCCEEDED,
                       reason="; ".join(changes)[:300], before={"ipsets": before},
                       after={"ipsets": after})
    inst = _instance(event)
    if _active_op(inst) is not None or inst.maintenance_lock or not (inst.vmid and inst.node_id):
        raise Skip("the server is busy (its operation sets the firewall up itself)")
    target = Target.of(inst)
    seen = firewall_read(pve, target)
    if seen is None or str(inst.id) not in owners_from_tags(parse_tags(seen[0].get("tags"))):
        raise Skip("no container of ours on the server's node")
    before = firewall_check(pve, target)
    if before is not None and before.ok:
        _store_firewall(inst.id, before)
        raise Skip("the firewall is as desired again")
    _require_current(event.epoch)
    changes, after = apply_firewall(pve, target)
    if after is None:
        raise Skip("the container went away")
    _store_firewall(inst.id, after)
    return Outcome(RepairState.SUCCEEDED if after.ok else RepairState.FAILED,
                   reason="; ".join(changes)[:300],
                   before={"problems": before.problems if before else []},
                   after={"firewall": after.as_dict()})


def _store_firewall(instance_id: Any, verdict: Any) -> None:
    """The verdict just read becomes the server's stored one (the database's clock)."""
    updated = ServerObservation.objects.filter(instance_id=instance_id).update(
        firewall=verdict.as_dict(), firewall_checked_at=Now())
    if not updated:
        ServerObservation.objects.get_or_create(
            instance_id=instance_id, defaults={"firewall": verdict.as_dict()})
        ServerObservation.objects.filter(instance_id=instance_id).update(
            firewall_checked_at=Now())


def _enforce_power(event: RepairEvent, actor: Actor, *, desired: str, kind: str,
                   found: str, goal: str, believed: str) -> Outcome:
    """The container's power disagrees with what the user wants: a normal operation of `kind`
    (start or graceful stop) puts it right. `found`/`goal` are the power before and after;
    `believed` is the status the database may still claim although `found` is true."""
    inst = _instance(event)
    power, ours = _power(inst)
    if not (inst.status in (S.RUNNING, S.STOPPED) and inst.desired_state == desired
            and power == found and ours and _active_op(inst) is None):
        raise Skip(f"the container no longer needs a {kind}")
    with fenced(event.epoch):
        if inst.status == believed:  # the database believed otherwise: say what is true first
            instance_transition(instance_id=inst.id, expected=believed, to=_STATUS_OF[found],
                                actor=actor, action="reconciler:sync_status")
        op = server_request(instance_id=inst.id, kind=kind, actor=actor)
    op = _wait_operation(op)
    inst.refresh_from_db()  # the operation may have followed the container to another node
    power, _ = _power(inst)
    ok = (op.state == OperationState.SUCCEEDED and power == goal
          and inst.status == _STATUS_OF[goal])
    return Outcome(RepairState.SUCCEEDED if ok else RepairState.FAILED,
                   reason="" if ok else f"{kind} operation {op.state}",
                   before={"power": found, "operation": str(op.id)},
                   after={"power": power, "status": inst.status, "operation": op.state})


_STATUS_OF = {PowerState.RUNNING: S.RUNNING, PowerState.STOPPED: S.STOPPED}


def start_container(event: RepairEvent, actor: Actor) -> Outcome:
    """Wanted running, found stopped: a normal start operation."""
    return _enforce_power(event, actor, desired=DesiredState.RUNNING, kind=OperationKind.START,
                          found=PowerState.STOPPED, goal=PowerState.RUNNING, believed=S.RUNNING)


def start_node_servers(event: RepairEvent, actor: Actor) -> Outcome:
    """A node's servers that should run were found stopped together (the node restarted):
    each still in that state gets its normal start operation now, and the node's start limit
    (PROXMOX_NODE_LIMIT_START) staggers them in the workers, so the node is not flooded and no
    worker waits for a place. Waits, bounded, for all of them and reports once for the node
    (a start that fails for good is reported by its operation, as any)."""
    ids = [str(i) for i in event.before.get("servers") or []]
    node = event.before.get("node", "")
    pve = ProxmoxClient.from_settings()
    listing = {int(r["vmid"]): r for r in pve.cluster_resources() if r.get("type") == "lxc"}
    ops, skipped = [], []
    for inst in ContainerInstance.objects.select_related("node").filter(pk__in=ids):
        ct = listing.get(inst.vmid) or {}
        if not (str(inst.id) in owners_from_tags(parse_tags(ct.get("tags")))
                and ct.get("node") == inst.node.name and ct.get("status") == PowerState.STOPPED
                and inst.status in (S.RUNNING, S.STOPPED)
                and inst.desired_state == DesiredState.RUNNING
                and not inst.maintenance_lock and not inst.suspended
                and _active_op(inst) is None):
            skipped.append(inst.slug)
            continue
        try:
            with fenced(event.epoch):
                if inst.status == S.RUNNING:  # say what is true first
                    instance_transition(instance_id=inst.id, expected=S.RUNNING, to=S.STOPPED,
                                        actor=actor, action="reconciler:sync_status")
                ops.append(server_request(instance_id=inst.id, kind=OperationKind.START,
                                          actor=actor))
        except (LifecycleError, TransitionConflict) as err:
            skipped.append(f"{inst.slug} ({err})")
    if not ops:
        raise Skip(f"none of the servers of {node} needs a start any more")
    ids_started = [op.id for op in ops]
    deadline = time.monotonic() + min(1800.0, 300.0 + 10.0 * len(ops))
    while time.monotonic() < deadline and Operation.objects.filter(
            pk__in=ids_started, state__in=ACTIVE_OPERATION_STATES).exists():
        time.sleep(1.0)
    states = Counter(Operation.objects.filter(pk__in=ids_started).values_list("state",
                                                                             flat=True))
    done = states.get(OperationState.SUCCEEDED, 0)
    ok = done == len(ops)
    return Outcome(RepairState.SUCCEEDED if ok else RepairState.FAILED,
                   reason="" if ok else f"{len(ops) - done} of {len(ops)} starts on {node} "
                                        f"did not succeed ({dict(states)})",
                   before={"requested": len(ops), "skipped": skipped[:20]},
                   after={"node": node, "started": done, "operations": dict(states)})


def stop_container(event: RepairEvent, actor: Actor) -> Outcome:
    """Wanted stopped (the user stopped it), found running: a normal, graceful stop."""
    return _enforce_power(event, actor, desired=DesiredState.STOPPED, kind=OperationKind.STOP,
                          found=PowerState.RUNNING, goal=PowerState.STOPPED, believed=S.STOPPED)


def recreate_container(event: RepairEvent, actor: Actor) -> Outcome:
    inst = _instance(event)
    power, _ = _power(inst)
    if power is not None or _active_op(inst) is not None or inst.status not in (
            S.MISSING, S.RUNNING, S.STOPPED):
        raise Skip("the container is there again, or the server is busy")
    with fenced(event.epoch):
        if inst.status != S.MISSING:
            instance_transition(instance_id=inst.id, expected=inst.status, to=S.MISSING,
                                actor=actor, action="reconciler:sync_status")
        op = server_request(instance_id=inst.id, kind=OperationKind.PROVISION, actor=actor)
    op = _wait_operation(op)
    inst.refresh_from_db()
    ok = op.state == OperationState.SUCCEEDED and inst.status == S.RUNNING
    return Outcome(RepairState.SUCCEEDED if ok else RepairState.FAILED,
                   before={"power": None}, after={"status": inst.status, "operation": op.state})


def destroy_orphan(event: RepairEvent, actor: Actor) -> Outcome:
    details = event.before
    vmid, node, owner = int(details["vmid"]), details["node"], details["owner"]
    if ContainerInstance.objects.filter(pk=owner).exclude(status=S.PURGED).exists():
        raise Skip("its server exists after all")
    pve = ProxmoxClient.from_settings()
    cfg = pve.ct_config(node, vmid)
    if cfg is None or container_tag(owner) not in parse_tags(cfg.get("tags")):
        raise Skip("the orphan is gone or not ours")
    _require_current(event.epoch)
    status = pve.ct_status(node, vmid) or {}
    if status.get("status") == PowerState.RUNNING:
        pve.task_wait(pve.ct_stop(node, vmid), timeout=settings.PROXMOX_TASK_TIMEOUT)
    result = pve.task_wait(pve.ct_destroy(node, vmid), timeout=settings.PROXMOX_TASK_TIMEOUT)
    gone = pve.ct_config(node, vmid) is None
    return Outcome(RepairState.SUCCEEDED if gone else RepairState.FAILED,
                   reason="" if gone else result.exitstatus, after={"present": not gone})


def delete_edge_orphan(event: RepairEvent, actor: Actor) -> Outcome:
    orphan = event.before
    clients = EdgeClients()
    _require_current(event.epoch)
    source = orphan["source"]
    if source == Source.CLOUDFLARE:
        found = clients.cloudflare.delete_record(orphan["id"])
        still = any(r["id"] == orphan["id"] for r in clients.cloudflare.list_records(
            name=orphan["name"], type=orphan["type"]))
    elif source == Source.TECHNITIUM:
        found = clients.technitium.delete_a(orphan["name"], orphan["ip"])
        still = any((r.get("rData") or {}).get("ipAddress") == orphan["ip"]
                    for r in clients.technitium.records(orphan["name"]))
    else:
        with transaction.atomic():
            # A server that took the name since the cycle looked owns the registration now.
            if ContainerInstance.objects.select_for_update().filter(
                    live_slug=orphan["name"].lower()).exists():
                raise Skip("a server of that name exists now (its registration is its own)")
            current = next((s for s in clients.velocity.servers()
                            if s.get("name", "").lower() == orphan["name"].lower()), None)
            if current is not None and not velocity_registration_is_ours(orphan["name"],
                                                                         current):
                raise Skip("the registration is not ours (never touched)")
            found = clients.velocity.unregister(orphan["name"])
        still = any(s["name"] == orphan["name"] for s in clients.velocity.servers())
    if not found and not still:
        raise Skip("already gone")
    return Outcome(RepairState.FAILED if still else RepairState.SUCCEEDED,
                   after={"present": still})


def purge(event: RepairEvent, actor: Actor) -> Outcome:
    inst = _instance(event)
    if inst.status != S.DELETED or _active_op(inst) is not None:
        raise Skip("the server is not waiting for a purge")
    with fenced(event.epoch):
        op = server_request(instance_id=inst.id, kind=OperationKind.PURGE, actor=actor)
    op = _wait_operation(op)
    inst.refresh_from_db()
    ok = inst.status == S.PURGED
    return Outcome(RepairState.SUCCEEDED if ok else RepairState.FAILED,
                   after={"status": inst.status, "operation": op.state})


REPAIRS: dict[str, Callable[[RepairEvent, Actor], Outcome]] = {
    Action.CLEAR_STALE_OPERATION_LOCK: clear_stale_operation_lock,
    Action.SYNC_STATUS: sync_status,
    Action.EDGE_REPUBLISH: _edge_repair(PARTS),
    Action.DNS_REPUBLISH: _edge_repair(DNS_PARTS),
    Action.VELOCITY_REGISTER: _edge_repair((Part.VELOCITY,)),
    Action.VELOCITY_UNREGISTER: velocity_unregister,
    Action.RECORD_MOVE: record_move,
    Action.FIREWALL_APPLY: firewall_apply,
    Action.START_CONTAINER: start_container,
    Action.START_NODE_SERVERS: start_node_servers,
    Action.STOP_CONTAINER: stop_container,
    Action.RECREATE_CONTAINER: recreate_container,
    Action.DESTROY_ORPHAN: destroy_orphan,
    Action.DELETE_EDGE_ORPHAN: delete_edge_orphan,
    Action.PURGE: purge,
}


def execute(event: RepairEvent) -> Outcome:
    actor = Actor.reconciler(event.epoch)
    try:
        return REPAIRS[event.action](event, actor)
    except Skip as exc:
        return Outcome(RepairState.SKIPPED, reason=str(exc))
    except FencedOut as exc:
        return Outcome(RepairState.SKIPPED, reason=f"fenced out: {exc}")
    except ExternalError as exc:  # an outside system failed: an observed failure, recorded
        logger.warning("repair %s (%s) failed: %s", event.pk, event.action, exc)
        return Outcome(RepairState.FAILED,
                       reason=f"{type(exc).__name__}: {exc.message}"[:300])
    except Exception as exc:  # our own code failed: a platform error, recorded apart
        logger.exception("repair %s (%s) errored", event.pk, event.action)
        return Outcome(RepairState.ERRORED, reason=f"{type(exc).__name__}: {exc}"[:300])
