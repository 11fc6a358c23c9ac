"""Publishing a game server's edge, and seeing what is really there.

For a server `slug` with id `uuid` in zone Z:
  Cloudflare  A   slug.Z                  -> Velocity's public IP (not proxied)
  Cloudflare  SRV _minecraft._tcp.slug.Z  -> 0 5 <Velocity port> slug.Z
  Technitium  A   slug.<internal zone>    -> the container IP
  Velocity    slug -> container IP:port, forced host slug.Z
DNS records carry the ownership comment `zlh:<uuid>` (core.ownership): a record without it is
foreign and is never changed or deleted, only reported. Everything here works on plain values (EdgeTarget); nothing imports
the lifecycle app.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from core.health import Health
from core.http import per_thread_client
from core.ownership import owner_from_comment, record_comment

from .choices import PARTS, Part, Source, Verdict
from .clients.cloudflare import CloudflareClient
from .clients.technitium import TechnitiumClient
from .clients.velocity import VelocityClient
from .errors import EdgeError



@dataclass(frozen=True)
class EdgeTarget:
    server_id: str
    slug: str
    backend_ip: str
    backend_port: int

    @property
    def fqdn(self) -> str:
        return f"{self.slug}.{settings.EDGE_ZONE}"

    @property
    def srv_name(self) -> str:
        return f"_minecraft._tcp.{self.fqdn}"

    @property
    def internal_fqdn(self) -> str:
        return f"{self.slug}.{settings.TECHNITIUM_ZONE}"

    @property
    def owner_comment(self) -> str:
        return record_comment(self.server_id)

    @property
    def backend(self) -> str:
        return f"{self.backend_ip}:{self.backend_port}"


@dataclass
class EdgeObservation:
    server_id: str
    parts: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(self.parts.get(p) == Verdict.OK for p in PARTS)

    @property
    def drift(self) -> list[str]:
        return [p for p in PARTS if self.parts.get(p) != Verdict.OK]


@dataclass
class EdgeReport:
    server_id: str
    ok: bool
    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    observed: EdgeObservation | None = None


@dataclass
class BulkObservation:
    by_server: dict[str, EdgeObservation]
    #: Records and registrations carrying our marker for a server not in the targets.
    orphans: list[dict[str, Any]]
    #: Source -> Health (unknown: its listing failed, so no verdicts or findings from it).
    sources: dict[str, str]
    calls: dict[str, int]
    #: Every Velocity registration we own (our forced host `<name>.<EDGE_ZONE>`), by name,
    #: whether or not its server is among the targets: a stopped or deleted server must not
    #: have one, and only a full view finds it. Empty when Velocity is unknown.
    registrations: dict[str, dict[str, Any]] = field(default_factory=dict)


_EDGE_SETTINGS = (
    "CLOUDFLARE_API_URL", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_ZONE_ID", "CLOUDFLARE_TIMEOUT",
    "CLOUDFLARE_PAGE_SIZE", "CLOUDFLARE_MAX_RETRY_WAIT", "TECHNITIUM_URL", "TECHNITIUM_TOKEN",
    "TECHNITIUM_ZONE", "TECHNITIUM_TIMEOUT", "VELOCITY_BRIDGE_URL", "VELOCITY_BRIDGE_TOKEN",
    "VELOCITY_TIMEOUT")


class EdgeClients:
    """One client per edge system, built from settings."""

    def __init__(self, *, on_wait: Callable[[], None] | None = None) -> None:
        self.cloudflare = CloudflareClient(
            base_url=settings.CLOUDFLARE_API_URL, token=settings.CLOUDFLARE_API_TOKEN,
            zone_id=settings.CLOUDFLARE_ZONE_ID, timeout=settings.CLOUDFLARE_TIMEOUT,
            page_size=settings.CLOUDFLARE_PAGE_SIZE,
            max_retry_wait=settings.CLOUDFLARE_MAX_RETRY_WAIT, on_wait=on_wait)
        self.technitium = TechnitiumClient(
            base_url=settings.TECHNITIUM_URL, token=settings.TECHNITIUM_TOKEN,
            zone=settings.TECHNITIUM_ZONE, timeout=settings.TECHNITIUM_TIMEOUT)
        self.velocity = VelocityClient(base_url=settings.VELOCITY_BRIDGE_URL,
                                       token=settings.VELOCITY_BRIDGE_TOKEN,
                                       timeout=settings.VELOCITY_TIMEOUT)

    @classmethod
    def shared(cls, *, on_wait: Callable[[], None] | None = None) -> "EdgeClients":
        """This thread's clients for the settings in force, so that a worker's flows reuse
        their HTTP sessions (connections, TLS) from one operation to the next; per thread, as
        a session is not to be shared between threads. `on_wait` replaces the previous user's.
        Their call counters run on: count differences, or build your own EdgeClients."""
        clients = per_thread_client("edge", _EDGE_SETTINGS, cls)
        clients.cloudflare.on_wait = on_wait
        return clients

    def calls(self) -> dict[str, int]:
        return {"cloudflare": self.cloudflare.calls, "technitium": self.technitium.calls,
                "velocity": self.velocity.calls}


# --- evaluating what is there against what should be -------------------------------------------
def _cf_a_wanted(t: EdgeTarget) -> dict[str, Any]:
    return {"type": "A", "name": t.fqdn, "content": settings.VELOCITY_PUBLIC_IP,
            "ttl": settings.EDGE_TTL, "proxied": False, "comment": t.owner_comment}


def _cf_srv_wanted(t: EdgeTarget) -> dict[str, Any]:
    return {"type": "SRV", "name": t.srv_name, "ttl": settings.EDGE_TTL,
            "comment": t.owner_comment,
            "data": {"priority": 0, "weight": 5, "port": settings.VELOCITY_PUBLIC_PORT,
                     "target": t.fqdn}}


def _cf_matches(record: dict[str, Any], wanted: dict[str, Any]) -> bool:
    if wanted["type"] == "SRV":
        data = record.get("data") or {}
        return (int(data.get("port", -1)) == wanted["data"]["port"]
                and str(data.get("target", "")).rstrip(".") == wanted["data"]["target"]
                and int(data.get("priority", -1)) == 0)
    return record.get("content") == wanted["content"] and record.get("proxied") is False


def _judge(records: list[dict[str, Any]], matches: Callable[[dict[str, Any]], bool],
           is_ours: Callable[[dict[str, Any]], bool]) -> str:
    ours = [r for r in records if is_ours(r)]
    if any(matches(r) for r in ours):
        return Verdict.OK
    if ours:
        return Verdict.WRONG
    return Verdict.FOREIGN if records else Verdict.MISSING


def evaluate(t: EdgeTarget, *, cf: dict[tuple[str, str], list[dict]] | None,
             tech: dict[str, list[dict]] | None,
             velocity: dict[str, dict] | None) -> EdgeObservation:
    """Compare one server's wanted edge with listings indexed by name (None = source unknown)."""
    obs = EdgeObservation(server_id=t.server_id)
    mine = t.owner_comment
    if cf is None:
        obs.parts[Part.CLOUDFLARE_A] = obs.parts[Part.CLOUDFLARE_SRV] = Verdict.UNKNOWN
    else:
        for part, wanted in ((Part.CLOUDFLARE_A, _cf_a_wanted(t)),
                             (Part.CLOUDFLARE_SRV, _cf_srv_wanted(t))):
            found = cf.get((wanted["type"], wanted["name"]), [])
            obs.parts[part] = _judge(found, lambda r, w=wanted: _cf_matches(r, w),
                                     lambda r: r.get("comment") == mine)
            for r in found:
                if r.get("comment") != mine:
                    obs.problems.append(f"foreign {r['type']} record at {r['name']} "
                                        f"({r.get('content')!r}, comment {r.get('comment')!r})")
    if tech is None:
        obs.parts[Part.TECHNITIUM_A] = Verdict.UNKNOWN
    else:
        found = [r for r in tech.get(t.internal_fqdn, []) if r.get("type") == "A"]
        obs.parts[Part.TECHNITIUM_A] = _judge(
            found, lambda r: (r.get("rData") or {}).get("ipAddress") == t.backend_ip,
            lambda r: r.get("comments") == mine)
        for r in found:
            if r.get("comments") != mine:
                obs.problems.append(f"foreign internal A record at {t.internal_fqdn} "
                                    f"({(r.get('rData') or {}).get('ipAddress')})")
    if velocity is None:
        obs.parts[Part.VELOCITY] = Verdict.UNKNOWN
    else:
        reg = velocity.get(t.slug.lower())
        if reg is None:
            obs.parts[Part.VELOCITY] = Verdict.MISSING
        elif reg.get("address") == t.backend and t.fqdn in reg.get("hosts", []):
            obs.parts[Part.VELOCITY] = Verdict.OK
        else:
            obs.parts[Part.VELOCITY] = Verdict.WRONG
    return obs


def _index_cf(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        out.setdefault((r["type"], r["name"].rstrip(".").lower()), []).append(r)
    return out


def _index_tech(records: Iterable[dict[str, Any]]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["name"].rstrip(".").lower(), []).append(r)
    return out


def velocity_registration_is_ours(name: str, registration: dict[str, Any]) -> bool:
    hosts = registration.get("hosts")
    ours = f"{name}.{settings.EDGE_ZONE}".lower()
    return isinstance(hosts, list) and any(str(h).lower() == ours for h in hosts)


def _index_velocity(servers: Iterable[dict[str, Any]]) -> dict[str, dict]:
    return {s["name"].lower(): s for s in servers}


# --- observe ---------------------------------------------------------------------------------
def observe_edge_state(target: EdgeTarget, *, clients: EdgeClients | None = None) -> EdgeObservation:
    """What is live for one server: a few lookups by name (not a full listing)."""
    clients = clients or EdgeClients()
    cf_records = (clients.cloudflare.list_records(name=target.fqdn, type="A")
                  + clients.cloudflare.list_records(name=target.srv_name, type="SRV"))
    tech = clients.technitium.records(target.internal_fqdn)
    servers = clients.velocity.servers()
    return evaluate(target, cf=_index_cf(cf_records), tech=_index_tech(tech),
                    velocity=_index_velocity(servers))


def observe_edge_bulk(targets: Iterable[EdgeTarget], *,
                      clients: EdgeClients | None = None) -> BulkObservation:
    """What is live for many servers: one (paged) listing per source, whatever their number.
    A source whose listing fails is "unknown" and contributes no verdicts."""
    clients = clients or EdgeClients()
    targets = list(targets)
    sources: dict[str, str] = {}
    cf = tech = vel = None
    try:
        # One paged listing of the zone: our records and any foreign ones at our names.
        cf = _index_cf(clients.cloudflare.list_records())
        sources[Source.CLOUDFLARE] = Health.HEALTHY
    except EdgeError:
        sources[Source.CLOUDFLARE] = Health.UNKNOWN
    try:
        tech = _index_tech(clients.technitium.records())
        sources[Source.TECHNITIUM] = Health.HEALTHY
    except EdgeError:
        sources[Source.TECHNITIUM] = Health.UNKNOWN
    try:
        vel = _index_velocity(clients.velocity.servers())
        sources[Source.VELOCITY] = Health.HEALTHY
    except EdgeError:
        sources[Source.VELOCITY] = Health.UNKNOWN
    by_server = {t.server_id: evaluate(t, cf=cf, tech=tech, velocity=vel) for t in targets}
    known_ids = {t.server_id for t in targets}
    known_slugs = {t.slug.lower() for t in targets}
    orphans: list[dict[str, Any]] = []
    for records in (cf or {}).values():
        for r in records:
            owner = owner_from_comment(r.get("comment"))
            if owner is not None and owner not in known_ids:
                orphans.append({"source": Source.CLOUDFLARE, "type": r["type"], "name": r["name"],
                                "id": r["id"], "owner": owner})
    for name, records in (tech or {}).items():
        for r in records:
            owner = owner_from_comment(r.get("comments"))
            if owner is not None and owner not in known_ids:
                orphans.append({"source": Source.TECHNITIUM, "type": r.get("type"), "name": name,
                                "owner": owner,
                                "ip": (r.get("rData") or {}).get("ipAddress")})
    # Velocity registrations carry no comment: ours are the ones with our forced host
    # `<name>.<zone>`. Anything else (the operator's lobby, a hand-made entry) is not ours,
    # never an orphan, never deleted.
    registrations = {name: reg for name, reg in (vel or {}).items()
                     if velocity_registration_is_ours(name, reg)}
    for name, reg in registrations.items():
        if name not in known_slugs:
            orphans.append({"source": Source.VELOCITY, "name": name,
                            "address": reg.get("address")})
    return BulkObservation(by_server=by_server, orphans=orphans, sources=sources,
                           calls=clients.calls(), registrations=registrations)


# --- publish / unpublish ------------------------------------------------------------------------
def _publish_cf(clients: EdgeClients, wanted: dict[str, Any], report: EdgeReport) -> None:
    cfc = clients.cloudflare
    found = cfc.list_records(name=wanted["name"], type=wanted["type"])
    ours = [r for r in found if r.get("comment") == wanted["comment"]]
    foreign = [r for r in found if r.get("comment") != wanted["comment"]]
    good = [r for r in ours if _cf_matches(r, wanted)]
    keep = good[0] if good else (ours[0] if ours else None)
    for extra in ours:
        if extra is not keep:  # duplicates of our own record: one is enough
            cfc.delete_record(extra["id"])
            report.actions.append(f"deleted duplicate {wanted['type']} {wanted['name']}")
    if keep is not None and not good:
        changes = {k: v for k, v in wanted.items() if k not in ("type", "name")}
        cfc.patch_record(keep["id"], changes)
        report.actions.append(f"corrected {wanted['type']} {wanted['name']}")
        return
    if keep is not None:
        return
    if foreign:
        report.problems.append(
            f"foreign {wanted['type']} record at {wanted['name']} (no zlh marker): left "
            "untouched, ours not created")
        return
    try:
        cfc.create_record(wanted)
        report.actions.append(f"created {wanted['type']} {wanted['name']}")
    except EdgeError as err:
        if err.kind != "exists":
            raise
        report.problems.append(f"an identical {wanted['type']} {wanted['name']} without our "
                               "marker exists: left untouched")


def _publish_technitium(clients: EdgeClients, t: EdgeTarget, report: EdgeReport) -> None:
    found = [r for r in clients.technitium.records(t.internal_fqdn) if r.get("type") == "A"]
    ours = [r for r in found if r.get("comments") == t.owner_comment]
    if any((r.get("rData") or {}).get("ipAddress") == t.backend_ip for r in ours) and len(ours) == 1:
        return
    if len(found) > len(ours):
        report.problems.append(f"foreign internal A record at {t.internal_fqdn}: left untouched")
        return
    clients.technitium.add_a(t.internal_fqdn, t.backend_ip, ttl=settings.EDGE_TTL,
                             comments=t.owner_comment, overwrite=True)
    report.actions.append(f"set internal A {t.internal_fqdn} -> {t.backend_ip}")


def _publish_velocity(clients: EdgeClients, t: EdgeTarget, report: EdgeReport,
                      registered: dict[str, dict] | None = None) -> None:
    if registered is None:
        registered = _index_velocity(clients.velocity.servers())
    current = registered.get(t.slug.lower())
    if current is not None and current.get("address") == t.backend and t.fqdn in current.get(
            "hosts", []):
        return
    if current is not None:  # Velocity refuses a changed address until unregistered
        clients.velocity.unregister(t.slug)
        report.actions.append(f"unregistered stale {t.slug} ({current.get('address')})")
    clients.velocity.register(t.slug, t.backend, [t.fqdn])
    report.actions.append(f"registered {t.slug} -> {t.backend}")


def edge_publish(target: EdgeTarget, *, clients: EdgeClients | None = None) -> EdgeReport:
    """Make the edge match: create or correct our records, never touch foreign ones.
    Idempotent: publishing twice leaves exactly one of each."""
    clients = clients or EdgeClients()
    report = EdgeReport(server_id=target.server_id, ok=False)
    _publish_cf(clients, _cf_a_wanted(target), report)
    _publish_cf(clients, _cf_srv_wanted(target), report)
    _publish_technitium(clients, target, report)
    _publish_velocity(clients, target, report)
    report.ok = not report.problems
    return report


def edge_republish(target: EdgeTarget, *, clients: EdgeClients | None = None) -> EdgeReport:
    """Publish, then look again: `ok` only when the live state was seen to match."""
    clients = clients or EdgeClients()
    report = edge_publish(target, clients=clients)
    report.observed = observe_edge_state(target, clients=clients)
    report.ok = report.observed.ok
    if not report.ok:
        report.problems.append(f"after publishing, still not right: {report.observed.drift}")
    return report


def edge_unpublish(target: EdgeTarget, *, clients: EdgeClients | None = None) -> EdgeReport:
    """Remove our records and registration; foreign ones stay. Gone already counts as done."""
    clients = clients or EdgeClients()
    report = EdgeReport(server_id=target.server_id, ok=True)
    for name, rtype in ((target.fqdn, "A"), (target.srv_name, "SRV")):
        for r in clients.cloudflare.list_records(name=name, type=rtype):
            if r.get("comment") == target.owner_comment:
                clients.cloudflare.delete_record(r["id"])
                report.actions.append(f"deleted {rtype} {name}")
    for r in clients.technitium.records(target.internal_fqdn):
        if r.get("type") == "A" and r.get("comments") == target.owner_comment:
            clients.technitium.delete_a(target.internal_fqdn, r["rData"]["ipAddress"])
            report.actions.append(f"deleted internal A {target.internal_fqdn}")
    velocity_unregister(target, clients=clients, report=report)
    return report


def velocity_unregister(target: EdgeTarget, *, clients: EdgeClients | None = None,
                        report: EdgeReport | None = None) -> None:
    """Unregister the server from Velocity if it is registered with our backend address."""
    clients = clients or EdgeClients()
    current = _index_velocity(clients.velocity.servers()).get(target.slug.lower())
    if current is not None and current.get("address") == target.backend:
        clients.velocity.unregister(target.slug)
        if report is not None:
            report.actions.append(f"unregistered {target.slug}")


def velocity_registration_ours(name: str, *, clients: EdgeClients | None = None,
                               ) -> dict[str, Any] | None:
    """The registration under `name` if it is ours (our forced host), else None."""
    clients = clients or EdgeClients()
    current = _index_velocity(clients.velocity.servers()).get(name.lower())
    if current is None or not velocity_registration_is_ours(name, current):
        return None
    return current


def velocity_unregister_ours(name: str, *, clients: EdgeClients | None = None) -> bool:
    """Remove the registration under `name` whatever its address, but only if it is ours (our
    forced host): a stale one of a stopped or deleted server. One that is not ours (the
    operator's lobby) is never touched. Returns whether one was removed."""
    clients = clients or EdgeClients()
    if velocity_registration_ours(name, clients=clients) is None:
        return False
    return clients.velocity.unregister(name)


def velocity_resync(targets: Iterable[EdgeTarget], *,
                    clients: EdgeClients | None = None) -> dict[str, Any]:
    """Register every given (running) server with Velocity: one listing, then only the missing
    or changed ones. Registrations of other names are reported, not removed."""
    clients = clients or EdgeClients()
    registered = _index_velocity(clients.velocity.servers())
    wanted = {t.slug.lower(): t for t in targets}
    report = EdgeReport(server_id="*", ok=True)
    for t in wanted.values():
        _publish_velocity(clients, t, report, registered)
    extra = sorted(set(registered) - set(wanted))
    return {"servers": len(wanted), "changed": len(report.actions), "extra": extra,
            "actions": report.actions, "calls": clients.velocity.calls}
