"""The edge side of adopting a game server made outside the control plane (`manage.py adopt`).

An adopted server's DNS records and Velocity registration already exist, made by the old API
or by hand, without our ownership marker. Planning judges them against what the server's edge
must be (`edge.services`): a record that matches exactly is marked ours (only its comment
changes), a missing one is created, anything that points elsewhere is a conflict and the
server is not adopted. Every change is a step that remembers what it replaced, so a release
puts each record and registration back as it was. Steps are idempotent: a crashed adoption
runs them again.

Velocity registrations carry no marker: a registration is ours when it names our forced host
`<slug>.<zone>` (`velocity_registration_is_ours`). A stopped server is not registered (the
stop flow unregisters it), so a stopped server's registration is taken down and remembered.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings

from core.ownership import owner_from_comment

from .clients.cloudflare import CloudflareClient
from .services import (
    EdgeClients,
    EdgeReport,
    EdgeTarget,
    _cf_a_wanted,
    _cf_matches,
    _cf_srv_wanted,
    _index_cf,
    _index_tech,
    _index_velocity,
    _publish_cf,
    _publish_technitium,
    _publish_velocity,
)


class StepKind:
    MARK = "mark"          # a matching record without our marker: our marker put in its comment
    CREATE = "create"      # missing: created with our marker
    REGISTER = "register"  # Velocity: registered (it was missing)
    UNREGISTER = "unregister"  # Velocity: a stopped server's registration taken down


@dataclass
class EdgeStep:
    source: str          # cloudflare | technitium | velocity
    kind: str            # StepKind
    rtype: str = ""      # A | SRV (DNS)
    name: str = ""
    record_id: str = ""  # Cloudflare's id of a marked record
    #: What it was before: a record's comment (mark), a registration (unregister).
    prior: Any = None
    ttl: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, data: dict[str, Any]) -> "EdgeStep":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})

    def describe(self) -> str:
        what = f"{self.rtype} {self.name}" if self.rtype else f"{self.source} {self.name}"
        return f"{self.kind} {what}" + (f" (was {self.prior!r})" if self.kind == StepKind.MARK
                                          else "")


@dataclass
class EdgePlan:
    steps: list[EdgeStep] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    #: Records already carrying this server's marker (a re-adoption by tag).
    already: list[str] = field(default_factory=list)


@dataclass
class EdgeListing:
    """One listing of each edge system, indexed by name (the planning input)."""

    cloudflare: dict[tuple[str, str], list[dict]]
    technitium: dict[str, list[dict]]
    velocity: dict[str, dict]
    calls: dict[str, int]


def edge_listing(clients: EdgeClients | None = None) -> EdgeListing:
    """Three calls (Cloudflare paged): the whole zone, the internal zone, Velocity."""
    clients = clients or EdgeClients()
    cf = _index_cf(clients.cloudflare.list_records())
    tech = _index_tech(clients.technitium.records())
    vel = _index_velocity(clients.velocity.servers())
    return EdgeListing(cloudflare=cf, technitium=tech, velocity=vel, calls=clients.calls())


def _other_owner(comment: str | None, mine: str | None) -> str | None:
    owner = owner_from_comment(comment)
    return owner if owner is not None and owner != mine else None


def edge_adoption_plan(target: EdgeTarget, listing: EdgeListing, *, running: bool,
                       server_id: str | None = None) -> EdgePlan:
    """What adopting `target` does to its edge (`server_id`: the id its records would already
    carry, for a re-adoption by tag; None for a container that never was ours)."""
    plan = EdgePlan()
    mine = server_id
    for wanted in (_cf_a_wanted(target), _cf_srv_wanted(target)):
        key = (wanted["type"], wanted["name"].lower())
        records = listing.cloudflare.get(key, [])
        what = f"{wanted['type']} {wanted['name']}"
        foreign_owner = [r for r in records if _other_owner(r.get("comment"), mine)]
        wrong = [r for r in records if not _cf_matches(r, wanted)]
        if foreign_owner:
            plan.conflicts.append(f"{what} carries the marker of another server "
                                  f"({foreign_owner[0].get('comment')})")
        elif wrong:
            r = wrong[0]
            shown = r.get("content") if wanted["type"] == "A" else r.get("data")
            plan.conflicts.append(f"{what} points elsewhere ({shown!r}, proxied "
                                  f"{r.get('proxied')}); ours would be "
                                  f"{wanted.get('content') or wanted['data']}")
        elif len(records) > 1:
            plan.conflicts.append(f"{what} exists {len(records)} times")
        elif records:
            r = records[0]
            if mine and r.get("comment") == target.owner_comment:
                plan.already.append(what)
            else:
                plan.steps.append(EdgeStep("cloudflare", StepKind.MARK, wanted["type"],
                                           wanted["name"], record_id=str(r["id"]),
                                           prior=r.get("comment")))
        elif running:
            plan.steps.append(EdgeStep("cloudflare", StepKind.CREATE, wanted["type"],
                                       wanted["name"]))
    internal = [r for r in listing.technitium.get(target.internal_fqdn.lower(), [])
                if r.get("type") == "A"]
    what = f"internal A {target.internal_fqdn}"
    elsewhere = [r for r in internal
                 if (r.get("rData") or {}).get("ipAddress") != target.backend_ip]
    if any(_other_owner(r.get("comments"), mine) for r in internal):
        plan.conflicts.append(f"{what} carries the marker of another server")
    elif elsewhere:
        plan.conflicts.append(f"{what} points to "
                              f"{(elsewhere[0].get('rData') or {}).get('ipAddress')}, the "
                              f"container is {target.backend_ip}")
    elif len(internal) > 1:
        plan.conflicts.append(f"{what} exists {len(internal)} times")
    elif internal:
        r = internal[0]
        if mine and r.get("comments") == target.owner_comment:
            plan.already.append(what)
        else:
            plan.steps.append(EdgeStep("technitium", StepKind.MARK, "A", target.internal_fqdn,
                                       prior=r.get("comments"), ttl=r.get("ttl")))
    elif running:
        plan.steps.append(EdgeStep("technitium", StepKind.CREATE, "A", target.internal_fqdn))
    reg = listing.velocity.get(target.slug.lower())
    if reg is None:
        if running:
            plan.steps.append(EdgeStep("velocity", StepKind.REGISTER, name=target.slug))
    elif reg.get("address") != target.backend or target.fqdn not in reg.get("hosts", []):
        plan.conflicts.append(f"Velocity registration {target.slug} -> {reg.get('address')} "
                              f"(hosts {reg.get('hosts')}) differs from {target.backend} "
                              f"with forced host {target.fqdn}")
    elif not running:
        plan.steps.append(EdgeStep("velocity", StepKind.UNREGISTER, name=target.slug,
                                   prior={"address": reg.get("address"),
                                          "hosts": list(reg.get("hosts") or [])}))
    else:
        plan.already.append(f"Velocity {target.slug}")
    return plan


def _cf_record(cf: CloudflareClient, step: EdgeStep) -> dict[str, Any] | None:
    return next((r for r in cf.list_records(name=step.name, type=step.rtype)
                 if str(r.get("id")) == step.record_id), None)


def edge_adoption_step(target: EdgeTarget, step: EdgeStep, clients: EdgeClients) -> str:
    """Carry out one step (idempotent: done already counts as done); returns what happened.
    A record changed by someone since the plan is left alone and said so."""
    mine = target.owner_comment
    report = EdgeReport(server_id=target.server_id, ok=True)
    if step.source == "cloudflare":
        wanted = _cf_a_wanted(target) if step.rtype == "A" else _cf_srv_wanted(target)
        if step.kind == StepKind.CREATE:
            _publish_cf(clients, wanted, report)
            return "; ".join(report.actions + report.problems) or f"{step.rtype} present"
        record = _cf_record(clients.cloudflare, step)
        if record is None:
            return f"{step.rtype} {step.name} is gone: nothing to mark"
        if record.get("comment") == mine:
            return f"{step.rtype} {step.name} already ours"
        if record.get("comment") != step.prior or not _cf_matches(record, wanted):
            return f"{step.rtype} {step.name} changed since the plan: left alone"
        clients.cloudflare.patch_record(step.record_id, {"comment": mine})
        return f"marked {step.rtype} {step.name}"
    if step.source == "technitium":
        if step.kind == StepKind.CREATE:
            _publish_technitium(clients, target, report)
            return "; ".join(report.actions + report.problems) or "internal A present"
        found = [r for r in clients.technitium.records(target.internal_fqdn)
                 if r.get("type") == "A"]
        if any(r.get("comments") == mine for r in found):
            return f"internal A {step.name} already ours"
        if (len(found) != 1 or found[0].get("comments") != step.prior
                or (found[0].get("rData") or {}).get("ipAddress") != target.backend_ip):
            return f"internal A {step.name} changed since the plan: left alone"
        clients.technitium.add_a(target.internal_fqdn, target.backend_ip,
                                 ttl=step.ttl or settings.EDGE_TTL, comments=mine,
                                 overwrite=True)
        return f"marked internal A {step.name}"
    if step.kind == StepKind.REGISTER:
        _publish_velocity(clients, target, report)
        return "; ".join(report.actions) or f"{target.slug} registered"
    current = _index_velocity(clients.velocity.servers()).get(target.slug.lower())
    if current is None:
        return f"{target.slug} not registered"
    if current.get("address") != target.backend:
        return f"{target.slug} changed since the plan: left alone"
    clients.velocity.unregister(target.slug)
    return f"unregistered {target.slug} (stopped)"


def edge_adoption_undo(target: EdgeTarget, step: EdgeStep, clients: EdgeClients) -> str:
    """Undo one step (a release): the record or registration as it was before adoption.
    Only what still carries our marker (or our registration) is changed."""
    mine = target.owner_comment
    if step.source == "cloudflare":
        name, rtype = step.name, step.rtype
        ours = [r for r in clients.cloudflare.list_records(name=name, type=rtype)
                if r.get("comment") == mine]
        if step.kind == StepKind.MARK:
            for r in ours:
                if str(r.get("id")) == step.record_id:
                    clients.cloudflare.patch_record(step.record_id, {"comment": step.prior})
                    return f"{rtype} {name}: comment put back"
            return f"{rtype} {name}: not ours any more"
        for r in ours:
            clients.cloudflare.delete_record(r["id"])
        return f"{rtype} {name}: deleted what adoption created ({len(ours)})"
    if step.source == "technitium":
        found = [r for r in clients.technitium.records(target.internal_fqdn)
                 if r.get("type") == "A" and r.get("comments") == mine]
        for r in found:
            ip = (r.get("rData") or {}).get("ipAddress")
            if step.kind == StepKind.MARK:
                clients.technitium.add_a(target.internal_fqdn, ip,
                                         ttl=step.ttl or r.get("ttl") or settings.EDGE_TTL,
                                         comments=step.prior or "", overwrite=True)
            else:
                clients.technitium.delete_a(target.internal_fqdn, ip)
        return f"internal A {step.name}: " + ("put back" if found else "not ours any more")
    current = _index_velocity(clients.velocity.servers()).get(target.slug.lower())
    if step.kind == StepKind.REGISTER:
        if current is not None and current.get("address") == target.backend:
            clients.velocity.unregister(target.slug)
            return f"unregistered {target.slug}"
        return f"{target.slug}: not registered by us any more"
    if current is None:
        prior = step.prior or {}
        clients.velocity.register(target.slug, prior.get("address", target.backend),
                                  list(prior.get("hosts") or [target.fqdn]))
        return f"registered {target.slug} again"
    return f"{target.slug}: registered meanwhile, left as it is"
