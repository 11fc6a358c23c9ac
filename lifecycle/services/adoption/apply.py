"""Apply: each planned container adopted through its journal (`Adoption`), one step after the
other, each step idempotent, so a crash anywhere is finished by the next --apply."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.db.models.lookups import LessThanOrEqual

from core.ownership import FLEET_TAG, container_tag
from edge.adoption import EdgeStep, edge_adoption_step
from edge.errors import EdgeError
from edge.services import EdgeClients

from ...choices import AdoptionState, AllocationState, DesiredState, InstanceStatus, Kind, \
    OperationKind
from ...clients.proxmox import PowerState, ProxmoxClient, ProxmoxError, parse_tags
from core.db import named_lock, retry_on_lock_conflict
from ...errors import AdoptionRefused, LifecycleError
from ...firewall import enabled as firewall_enabled
from ...models import AccountQuota, Adoption, Allocation, ContainerInstance, Node
from ..accounts import quota_ensure, quota_usage
from ..actions import server_request
from ..audit import Actor, audit_record
from ..edge import edge_target_for
from ..firewall import Target, firewall_apply, ipsets_apply
from .plan import AdoptionPlan, ContainerPlan, Verdict

_IPSETS_LOCK = threading.Lock()


@dataclass
class Outcome:
    vmid: int
    name: str
    result: str                      # adopted | resumed | adopted already | skipped | failed
    detail: list[str] = field(default_factory=list)
    server_id: str | None = None
    #: Calls made to each outside system for this container.
    calls: dict[str, int] = field(default_factory=dict)


def _owner_user(username: str) -> Any:
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    quota_ensure(user=user)
    return user


@retry_on_lock_conflict
def _claim_rows(cp: ContainerPlan, actor: Actor) -> Adoption:
    """Step 1, one transaction: the server row, its allocations, the node's memory, the
    journal. Raises AdoptionRefused when the world moved since the plan."""
    user = _owner_user(cp.owner)
    with transaction.atomic(durable=True):
        quota = AccountQuota.objects.select_for_update().get(user=user)
        existing = Adoption.objects.filter(vmid=cp.vmid).exclude(
            state=AdoptionState.RELEASED).first()
        if existing is not None:
            return existing  # a concurrent --apply claimed it first: carry on with its row
        if ContainerInstance.objects.filter(live_slug=cp.name).exists():
            raise AdoptionRefused(f"the name {cp.name!r} was taken meanwhile")
        if cp.server_id and ContainerInstance.objects.filter(pk=cp.server_id).exists():
            raise AdoptionRefused(f"server {cp.server_id} exists now")
        rows = {r.pk: r for r in Allocation.objects.select_for_update().filter(
            pk__in=list(cp.claims))}
        for pk, (role, state, _note) in cp.claims.items():
            row = rows.get(pk)
            if row is None or row.instance_id is not None or row.state not in (
                    AllocationState.FREE, AllocationState.CONFLICTED):
                raise AdoptionRefused(f"its {role} was claimed meanwhile")
        node = Node.objects.get(name=cp.node)
        fits = LessThanOrEqual(F("allocated_memory_mb") + cp.memory_mb, F("memory_mb"))
        if not Node.objects.filter(fits, pk=node.pk).update(
                allocated_memory_mb=F("allocated_memory_mb") + cp.memory_mb):
            raise AdoptionRefused(f"node {node.name} has no room for {cp.memory_mb} MB now")
        used = quota_usage(user_id=user.pk)
        raised = {}
        if used.servers + 1 > quota.max_servers:
            raised["max_servers"] = used.servers + 1
        if used.memory_mb + cp.memory_mb > quota.max_memory_mb:
            raised["max_memory_mb"] = used.memory_mb + cp.memory_mb
        if raised:
            AccountQuota.objects.filter(pk=quota.pk).update(**raised)
        status = (InstanceStatus.RUNNING if cp.power == PowerState.RUNNING
                  else InstanceStatus.STOPPED)
        inst = ContainerInstance(
            id=uuid.UUID(cp.server_id) if cp.server_id else uuid.uuid4(), owner=user,
            name=cp.name, slug=cp.name, live_slug=cp.name, kind=cp.kind,
            variant=cp.variant if cp.kind == Kind.GAME else "",
            version=cp.version if cp.kind == Kind.GAME else "", plan=cp.plan,
            memory_mb=cp.memory_mb, cores=cp.cores, disk_gb=cp.disk_gb,
            runtime=cp.runtime if cp.kind == Kind.DEV else "",
            runtime_version=cp.runtime_version if cp.kind == Kind.DEV else "",
            enable_code_server=cp.code_server, node=node, vmid=cp.vmid, ip=cp.ip,
            ports=cp.ports, status=status,
            desired_state=(DesiredState.RUNNING if status == InstanceStatus.RUNNING
                           else DesiredState.STOPPED),
            maintenance_lock=True)
        try:
            inst.save(force_insert=True)
        except IntegrityError as exc:
            raise AdoptionRefused(f"the server row could not be written: {exc}") from exc
        for pk, (role, _state, _note) in cp.claims.items():
            Allocation.objects.filter(pk=pk).update(
                state=AllocationState.CLAIMED, instance_id=inst.id, role=role, claimed_at=Now(),
                released_at=None, quarantine_until=None, note="adopted")
        adoption = Adoption.objects.create(
            instance=inst, vmid=cp.vmid, node=cp.node, source=cp.source,
            original_tags=cp.tags,
            original_allocations={str(pk): [state, note]
                                  for pk, (_role, state, note) in cp.claims.items()},
            edge=cp.edge, plan=cp.as_dict())
        audit_record(actor=actor, instance_id=inst.id, action="adopt:claim", to_status=status,
                     data={"vmid": cp.vmid, "node": cp.node, "ip": cp.ip, "ports": cp.ports,
                           "source": cp.source, "plan": cp.plan, "owner": cp.owner,
                           "quota_raised": raised,
                           "edge": [EdgeStep.of(s).describe() for s in cp.edge]})
    return adoption


def _advance(adoption: Adoption, state: str) -> None:
    Adoption.objects.filter(pk=adoption.pk).update(state=state)
    adoption.state = state


def _tag(pve: ProxmoxClient, adoption: Adoption, inst: ContainerInstance) -> str:
    config = pve.ct_config(adoption.node, adoption.vmid)
    if config is None:
        raise AdoptionRefused(f"CT {adoption.vmid} is no longer on {adoption.node}")
    tags = parse_tags(config.get("tags"))
    mine = container_tag(inst.id)
    if mine in tags:
        return "tag already there"
    tags |= {FLEET_TAG, mine}
    pve.ct_config_set(adoption.node, adoption.vmid, digest=config.get("digest"),
                      tags=";".join(sorted(tags)))
    return f"tagged {mine}"


def _firewall(pve: ProxmoxClient, adoption: Adoption, inst: ContainerInstance,
              ipsets_done: threading.Event) -> str:
    if not firewall_enabled():
        return "firewall off (PROXMOX_FIREWALL)"
    if adoption.original_firewall is None:
        config = pve.ct_config(adoption.node, adoption.vmid) or {}
        options = pve.ct_firewall_options(adoption.node, adoption.vmid)
        original = {"net0": config.get("net0"),
                    "options": {k: options.get(k) for k in ("enable", "policy_in", "policy_out")
                                if options.get(k) is not None}}
        Adoption.objects.filter(pk=adoption.pk).update(original_firewall=original)
        adoption.original_firewall = original
    ipset_changes = []
    with _IPSETS_LOCK:  # the cluster IP sets our rules name: put right once per apply
        if not ipsets_done.is_set():
            ipset_changes = ipsets_apply(pve)
            ipsets_done.set()
    changes, verdict = firewall_apply(pve, Target.of(inst), with_ipsets=False)
    changes = ipset_changes + changes
    if verdict is None or not verdict.ok:
        raise AdoptionRefused("the container firewall could not be put in place: "
                              f"{verdict.problems if verdict else 'container gone'}")
    return "firewall: " + (", ".join(changes) or "already in place")


def _edge(adoption: Adoption, inst: ContainerInstance, clients: EdgeClients) -> list[str]:
    target = edge_target_for(inst)
    if target is None:
        return []
    return [edge_adoption_step(target, EdgeStep.of(s), clients) for s in adoption.edge]


def _finish(adoption: Adoption, inst: ContainerInstance, actor: Actor) -> str:
    with transaction.atomic():
        ContainerInstance.objects.filter(pk=inst.pk).update(maintenance_lock=False)
        _advance(adoption, AdoptionState.DONE)
        audit_record(actor=actor, instance_id=inst.id, action="adopt:done",
                     data={"vmid": adoption.vmid})
    if inst.status != InstanceStatus.RUNNING:
        return "adopted (stopped: its agent gets its credential at the next start)"
    try:
        op = server_request(instance_id=inst.id, kind=OperationKind.ROTATE_CREDENTIAL,
                            actor=actor)
    except LifecycleError as err:
        return f"adopted; its agent's credential not requested now ({err})"
    return f"adopted; its agent is given its own credential (operation {op.id})"


def _carry_on(adoption: Adoption, actor: Actor, ipsets_done: threading.Event,
              calls: dict[str, int]) -> list[str]:
    """Steps 2-5 from wherever the journal says the adoption stopped."""
    inst = ContainerInstance.objects.select_related("node").get(pk=adoption.instance_id)
    pve, edge = ProxmoxClient.from_settings(), EdgeClients()
    done = []
    try:
        if adoption.state == AdoptionState.CLAIMED:
            done.append(_tag(pve, adoption, inst))
            _advance(adoption, AdoptionState.TAGGED)
        if adoption.state == AdoptionState.TAGGED:
            done.append(_firewall(pve, adoption, inst, ipsets_done))
            _advance(adoption, AdoptionState.FIREWALLED)
        if adoption.state == AdoptionState.FIREWALLED:
            done += _edge(adoption, inst, edge)
            _advance(adoption, AdoptionState.EDGE_DONE)
        if adoption.state == AdoptionState.EDGE_DONE:
            done.append(_finish(adoption, inst, actor))
    finally:
        calls.update({"proxmox": pve.calls, **edge.calls()})
    return done


def _adopt_one(cp: ContainerPlan, actor: Actor, ipsets_done: threading.Event) -> Outcome:
    """One container, while holding its named lock: two --apply running at once never work
    on the same container (the lock dies with a killed process, so a resume is not held up)."""
    try:
        with named_lock(f"zlh_adopt_{cp.vmid}") as held:
            if not held:
                return Outcome(cp.vmid, cp.name, "skipped",
                               ["another --apply is adopting it right now"])
            return _adopt_locked(cp, actor, ipsets_done)
    finally:
        close_old_connections()


def _adopt_locked(cp: ContainerPlan, actor: Actor, ipsets_done: threading.Event) -> Outcome:
    out = Outcome(vmid=cp.vmid, name=cp.name, result="adopted", server_id=cp.server_id)
    try:
        journal = Adoption.objects.filter(vmid=cp.vmid).exclude(
            state=AdoptionState.RELEASED).first()
        if journal is not None and journal.state == AdoptionState.DONE:
            return Outcome(cp.vmid, cp.name, "adopted already",
                           ["adopted by another --apply meanwhile"], str(journal.instance_id))
        if journal is not None:
            adoption = journal
            out.result = "resumed" if cp.verdict == Verdict.RESUME else "adopted"
        else:
            try:
                adoption = _claim_rows(cp, actor)
            except AdoptionRefused:
                if Adoption.objects.filter(vmid=cp.vmid).exclude(
                        state=AdoptionState.RELEASED).exists():
                    # Another --apply running at the same time claimed it first.
                    return Outcome(cp.vmid, cp.name, "adopted already",
                                   ["claimed by another --apply running at the same time"])
                raise
        if adoption.state in (AdoptionState.RELEASING,):
            return Outcome(cp.vmid, cp.name, "skipped", ["a release is under way"])
        out.server_id = str(adoption.instance_id)
        out.detail = _carry_on(adoption, actor, ipsets_done, out.calls)
    except (AdoptionRefused, ProxmoxError, EdgeError) as err:
        out.result = "failed"
        out.detail.append(getattr(err, "message", None) or str(err))
    return out


def adoption_apply(plan: AdoptionPlan, *, actor: Actor, parallel: int = 4,
                   progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Adopt every container the plan says to (or carry on with); the others are reported."""
    work = [cp for cp in plan.containers if cp.verdict in (Verdict.ADOPT, Verdict.RESUME)]
    outcomes = [Outcome(cp.vmid, cp.name, "adopted already" if cp.verdict == Verdict.ADOPTED
                        else "skipped", cp.conflicts, cp.server_id)
                for cp in plan.containers if cp not in work]
    ipsets_done = threading.Event()

    def one(cp: ContainerPlan) -> Outcome:
        try:
            outcome = _adopt_one(cp, actor, ipsets_done)
        finally:
            connection.close()
        if progress:
            progress(outcome)
        return outcome

    if parallel <= 1 or len(work) <= 1:
        done = [_adopt_one(cp, actor, ipsets_done) for cp in work]
        for outcome in done:
            if progress:
                progress(outcome)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            done = list(pool.map(one, work))
    return sorted(outcomes + done, key=lambda o: o.vmid)


