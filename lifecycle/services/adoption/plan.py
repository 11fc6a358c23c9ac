"""The plan: what adopting each container would claim and change, or why it is skipped. Reads
only (one Proxmox listing, one config read per candidate, one listing per edge system)."""
from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model

from core.ownership import owners_from_tags
from edge.adoption import EdgeListing, edge_adoption_plan, edge_listing
from edge.errors import EdgeError
from edge.services import EdgeTarget

from ...catalog import DEV_RUNTIMES, GAME_VERSIONS, PLANS, PORT_ROLES
from ...choices import AdoptionState, AllocationState, Kind, PoolKind
from ...clients.proxmox import PowerState, ProxmoxClient, parse_tags
from ...models import AccountQuota, Adoption, Allocation, AllocationPool, ContainerInstance, \
    Node
from ...validation import name_errors
from ..accounts import quota_usage
from ..allocations import VMID_POOL_NAME
from .mapping import MAPPING_FIELDS, MappingRow, _row_of, description_meta

#: Proxmox reads at once while planning (config of each candidate).
READ_PARALLELISM = 8
_SIZE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)")
_IP = re.compile(r"(?:^|,)ip=([0-9.]+)/(\d+)(?:,|$)")


@dataclass
class Observed:
    vmid: int
    node: str
    power: str
    tags: str
    hostname: str = ""
    memory_mb: int | None = None
    cores: int | None = None
    disk_gb: int | None = None
    ip: str | None = None
    lock: str | None = None
    meta: dict[str, Any] | None = None
    gone: bool = False


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _disk_gb(rootfs: Any) -> int | None:
    match = _SIZE.search(str(rootfs or ""))
    if not match:
        return None
    scale = {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1, "T": 1024, "": 1 / 1024 ** 3}
    return max(1, round(float(match.group(1)) * scale[match.group(2)]))


def _observed(row: dict[str, Any], config: dict[str, Any] | None) -> Observed:
    ob = Observed(vmid=int(row["vmid"]), node=str(row["node"]), power=str(row.get("status")),
                  tags=str(row.get("tags") or ""), hostname=str(row.get("name") or ""))
    if config is None:
        ob.gone = True
        return ob
    ob.tags = str(config.get("tags") or ob.tags)
    ob.hostname = str(config.get("hostname") or ob.hostname)[:64]
    ob.memory_mb, ob.cores = _int(config.get("memory")), _int(config.get("cores"))
    ob.disk_gb = _disk_gb(config.get("rootfs"))
    match = _IP.search(str(config.get("net0") or ""))
    if match:
        try:
            ob.ip = str(ipaddress.IPv4Address(match.group(1)))
        except ValueError:
            ob.ip = None
    ob.lock = config.get("lock")
    ob.meta = description_meta(config.get("description"))
    return ob


def _read_configs(rows: list[dict[str, Any]]) -> tuple[list[Observed], int]:
    """Each container's config, READ_PARALLELISM at once; (observed, calls)."""
    local = threading.local()
    clients: list[ProxmoxClient] = []
    lock = threading.Lock()

    def read(row: dict[str, Any]) -> Observed:
        pve = getattr(local, "pve", None)
        if pve is None:
            pve = local.pve = ProxmoxClient.from_settings()
            with lock:
                clients.append(pve)
        return _observed(row, pve.ct_config(str(row["node"]), int(row["vmid"])))

    with ThreadPoolExecutor(max_workers=READ_PARALLELISM) as pool:
        out = list(pool.map(read, rows))
    return out, sum(c.calls for c in clients)


# --- the plan -------------------------------------------------------------------------------------
class Verdict:
    ADOPT = "adopt"          # will be adopted
    RESUME = "resume"        # an adoption a crash left half-done: carried on
    ADOPTED = "adopted"      # adopted already: nothing to do
    SKIP = "skip"            # a conflict: not adopted (the reasons say why)


@dataclass
class ContainerPlan:
    vmid: int
    node: str
    power: str
    hostname: str
    source: str = "mapping"
    verdict: str = Verdict.SKIP
    server_id: str | None = None
    owner: str = ""
    name: str = ""
    kind: str = ""
    variant: str = ""
    version: str = ""
    plan: str = ""
    runtime: str = ""
    runtime_version: str = ""
    code_server: bool = False
    memory_mb: int = 0
    cores: int = 0
    disk_gb: int = 0
    ip: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    edge: list[dict[str, Any]] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tags: str = ""
    #: allocation row id -> (role, state before, note before)
    claims: dict[int, tuple[str, str, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["claims"] = {str(k): list(v) for k, v in self.claims.items()}
        return data


@dataclass
class AdoptionPlan:
    containers: list[ContainerPlan]
    #: Containers of ours this database knows (nothing to adopt), and those not considered.
    ours: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in (Verdict.ADOPT, Verdict.RESUME, Verdict.ADOPTED, Verdict.SKIP)}
        for cp in self.containers:
            out[cp.verdict] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"containers": [cp.as_dict() for cp in self.containers], "ours": self.ours,
                "counts": self.counts(), "calls": self.calls, "problems": self.problems}


@dataclass
class _Context:
    nodes: dict[str, Node]
    free_memory: dict[str, int]
    vmid_rows: dict[int, tuple[int, str, Any, str]]
    ip_rows: dict[tuple[int, int], tuple[int, str, Any, str]]
    port_rows: dict[tuple[int, int], tuple[int, str, Any, str]]
    pools: dict[tuple[int, str], int]
    live_slugs: set[str]
    users: set[str]
    listing: EdgeListing | None
    edge_problem: str | None
    taken: set[tuple[str, Any]] = field(default_factory=set)
    owner_usage: dict[str, list[int]] = field(default_factory=dict)


def _spec_source(ob: Observed, row: MappingRow | None) -> dict[str, Any] | None:
    """The server's description: the mapping row, else (tag re-adoption) the metadata line."""
    if row is not None:
        return asdict(row)
    if ob.meta is None:
        return None
    raw = {k: ob.meta.get(k) for k in MAPPING_FIELDS if k in ob.meta}
    raw["vmid"] = ob.vmid
    checked, problems = _row_of({k: ("" if v is None else v) for k, v in raw.items()},
                                f"CT {ob.vmid} description", check_columns=False)
    return asdict(checked) if checked is not None else {"problems": problems}


def _claim(cp: ContainerPlan, ctx: _Context, role: str, key: tuple[str, Any],
           row: tuple[int, str, Any, str] | None, what: str) -> None:
    if row is None:
        cp.conflicts.append(f"{what} is not in our pools (widen them: manage.py vmidpool / "
                            "node)")
        return
    row_id, state, owner, note = row
    if state not in (AllocationState.FREE, AllocationState.CONFLICTED) or owner is not None:
        cp.conflicts.append(f"{what} is already {state}" + (f" by server {owner}" if owner
                                                              else "") + (f" ({note})" if note
                                                                          else ""))
        return
    if key in ctx.taken:
        cp.conflicts.append(f"{what} is wanted by another container of this plan")
        return
    cp.claims[row_id] = (role, state, note)


def _plan_one(ob: Observed, row: MappingRow | None, ctx: _Context, *, source: str,
              server_id: str | None) -> ContainerPlan:
    cp = ContainerPlan(vmid=ob.vmid, node=ob.node, power=ob.power, hostname=ob.hostname,
                       source=source, server_id=server_id, tags=ob.tags)
    if ob.gone:
        cp.conflicts.append("the container disappeared while planning")
        return cp
    spec = _spec_source(ob, row)
    if spec is None:
        cp.conflicts.append("not in the mapping file: its owner, kind and plan are unknown")
        return cp
    if "problems" in spec:
        cp.conflicts += spec["problems"]
        return cp
    cp.owner, cp.kind = spec["owner"], spec["kind"]
    cp.name = spec["name"] or ob.hostname.lower()
    cp.variant, cp.version = spec["variant"], spec["version"]
    cp.runtime, cp.runtime_version = spec["runtime"], spec["runtime_version"]
    cp.code_server = bool(spec["code_server"]) and cp.kind == Kind.DEV
    cp.conflicts += [f"name {cp.name!r}: {p}" for p in name_errors(cp.name)]
    if cp.name in ctx.live_slugs or ("slug", cp.name) in ctx.taken:
        cp.conflicts.append(f"the name {cp.name!r} is taken by another server")
    if cp.kind == Kind.GAME:
        if not cp.variant or not cp.version:
            cp.conflicts.append("a game server needs its variant and version (mapping file)")
        elif cp.version not in GAME_VERSIONS.get(cp.variant, ()):
            cp.warnings.append(f"version {cp.version} of {cp.variant} is not in the catalog: "
                               "kept as it is; a reinstall would need one that is")
    else:
        if not cp.runtime or not cp.runtime_version:
            cp.conflicts.append("a dev container needs its runtime and runtime_version")
        elif cp.runtime_version not in DEV_RUNTIMES.get(cp.runtime, ()):
            cp.warnings.append(f"{cp.runtime} {cp.runtime_version} is not in the catalog")
    if ob.lock:
        cp.conflicts.append(f"the container is locked ({ob.lock}): a task is at work on it")
    if ob.power not in (PowerState.RUNNING, PowerState.STOPPED):
        cp.conflicts.append(f"the container is {ob.power}, neither running nor stopped")
    # Size: the plan given must be the container's size; without one, the plan that is.
    if ob.memory_mb is None or ob.cores is None:
        cp.conflicts.append("the container's memory or cores cannot be read")
    else:
        fits = [name for name, p in PLANS.items()
                if p.memory_mb == ob.memory_mb and p.cores == ob.cores]
        wanted = spec["plan"] or (fits[0] if fits else "")
        if not wanted or wanted not in fits:
            sizes = ", ".join(f"{n} {p.memory_mb} MB/{p.cores} cores" for n, p in PLANS.items())
            cp.conflicts.append(f"size: the container has {ob.memory_mb} MB/{ob.cores} cores; "
                                + (f"plan {wanted} does not match" if wanted else
                                   "no plan fits") + f" ({sizes})")
        else:
            cp.plan = wanted
            cp.memory_mb, cp.cores = ob.memory_mb, ob.cores
            cp.disk_gb = ob.disk_gb or PLANS[wanted].disk_gb
    node = ctx.nodes.get(ob.node)
    if node is None:
        cp.conflicts.append(f"node {ob.node} is not one of ours (manage.py node add)")
        return cp
    _claim(cp, ctx, "vmid", ("vmid", ob.vmid), ctx.vmid_rows.get(ob.vmid), f"VMID {ob.vmid}")
    ip_pool = ctx.pools.get((node.pk, PoolKind.IP))
    if ob.ip is None:
        cp.conflicts.append("net0 has no static IPv4 address")
    else:
        cp.ip = ob.ip
        value = int(ipaddress.IPv4Address(ob.ip))
        _claim(cp, ctx, "ip", ("ip", value), ctx.ip_rows.get((ip_pool, value)), f"IP {ob.ip}")
    roles = PORT_ROLES[cp.kind]
    port = spec["port"]
    reg = ctx.listing.velocity.get(cp.name) if ctx.listing else None
    if port is None and cp.kind == Kind.GAME and reg and cp.ip:
        host, _, reg_port = str(reg.get("address", "")).rpartition(":")
        port = _int(reg_port) if host == cp.ip else None
    if port is None:
        cp.conflicts.append(f"its {roles[0]} port is unknown: give it in the mapping file's "
                            "port column")
    else:
        cp.ports = {roles[0]: port}
        port_pool = ctx.pools.get((node.pk, PoolKind.PORT))
        _claim(cp, ctx, roles[0], ("port", node.pk, port), ctx.port_rows.get((port_pool, port)),
               f"port {port} on {node.name}")
    if cp.memory_mb and ctx.free_memory.get(node.name, 0) < cp.memory_mb:
        cp.conflicts.append(f"node {node.name} has {ctx.free_memory.get(node.name, 0)} MB free "
                            f"for servers; this one needs {cp.memory_mb} MB")
    if cp.kind == Kind.GAME and cp.ip and cp.ports:
        if ctx.listing is None:
            cp.conflicts.append(f"the edge cannot be read ({ctx.edge_problem}): its records "
                                "cannot be judged")
        else:
            target = EdgeTarget(server_id=server_id or "", slug=cp.name, backend_ip=cp.ip,
                                backend_port=cp.ports["game"])
            eplan = edge_adoption_plan(target, ctx.listing,
                                       running=ob.power == PowerState.RUNNING,
                                       server_id=server_id)
            cp.edge = [s.as_dict() for s in eplan.steps]
            cp.already = eplan.already
            cp.conflicts += eplan.conflicts
    if cp.owner not in ctx.users:
        cp.warnings.append(f"account {cp.owner} will be created (no password, no token)")
    if not cp.conflicts:
        cp.verdict = Verdict.ADOPT
        ctx.taken.add(("slug", cp.name))
        ctx.taken.add(("vmid", ob.vmid))
        if cp.ip:
            ctx.taken.add(("ip", int(ipaddress.IPv4Address(cp.ip))))
        for p in cp.ports.values():
            ctx.taken.add(("port", node.pk, p))
        ctx.free_memory[node.name] -= cp.memory_mb
        usage = ctx.owner_usage.setdefault(cp.owner, [0, 0])
        usage[0] += 1
        usage[1] += cp.memory_mb
    return cp


def _rows_by_value(pool_ids: Iterable[int], values: Iterable[int]
                   ) -> dict[tuple[int, int], tuple[int, str, Any, str]]:
    values = list(set(values))
    out = {}
    for start in range(0, len(values), 2000):
        for pk, pool_id, value, state, owner, note in Allocation.objects.filter(
                pool_id__in=list(pool_ids), value__in=values[start:start + 2000]).values_list(
                "id", "pool_id", "value", "state", "instance_id", "note"):
            out[(pool_id, int(value))] = (pk, state, str(owner) if owner else None, note)
    return out


def adoption_plan(mapping: dict[int, MappingRow] | None = None, *,
                  vmids: Iterable[int] | None = None) -> AdoptionPlan:
    """What `--apply` would do, read-only. `vmids`: only these containers."""
    mapping = mapping or {}
    only = set(vmids) if vmids else None
    pve = ProxmoxClient.from_settings()
    resources = [r for r in pve.cluster_resources() if r.get("type") == "lxc"
                 and (only is None or int(r["vmid"]) in only)]
    plan = AdoptionPlan(containers=[])
    owners_seen = {}
    for r in resources:
        owners = owners_from_tags(parse_tags(r.get("tags")))
        if owners:
            owners_seen[int(r["vmid"])] = owners
    known = {str(i) for i in ContainerInstance.objects.filter(
        id__in=list({o for os in owners_seen.values() for o in os})).values_list("id",
                                                                                flat=True)}
    journals = {a.vmid: a for a in Adoption.objects.exclude(
        state=AdoptionState.RELEASED).filter(vmid__in=[int(r["vmid"]) for r in resources])}
    candidates: list[tuple[dict[str, Any], str, str | None]] = []
    for r in resources:
        vmid = int(r["vmid"])
        journal = journals.get(vmid)
        owners = owners_seen.get(vmid, set())
        if journal is not None:
            cp = ContainerPlan(vmid=vmid, node=str(r["node"]), power=str(r.get("status")),
                               hostname=str(r.get("name") or ""), source=journal.source,
                               server_id=str(journal.instance_id),
                               verdict=(Verdict.ADOPTED if journal.state == AdoptionState.DONE
                                        else Verdict.RESUME))
            cp.name = (journal.plan or {}).get("name", cp.hostname)
            cp.owner = (journal.plan or {}).get("owner", "")
            if cp.verdict == Verdict.RESUME:
                cp.warnings.append(f"an earlier --apply stopped at '{journal.state}': "
                                   "carried on from there")
            plan.containers.append(cp)
        elif not owners:
            if vmid in mapping:
                candidates.append((r, "mapping", None))
            else:
                plan.containers.append(ContainerPlan(
                    vmid=vmid, node=str(r["node"]), power=str(r.get("status")),
                    hostname=str(r.get("name") or ""), tags=str(r.get("tags") or ""),
                    conflicts=["not in the mapping file: its owner, kind and plan are "
                               "unknown"]))
        elif len(owners) == 1 and not owners & known:
            candidates.append((r, "tag", next(iter(owners))))
        else:
            plan.ours += 1
    observed, config_calls = _read_configs([c[0] for c in candidates])
    ctx = _context(observed, mapping)
    plan.calls = {"proxmox": pve.calls + config_calls, **(ctx.listing.calls if ctx.listing
                                                          else {})}
    if ctx.edge_problem:
        plan.problems.append(f"the edge cannot be read: {ctx.edge_problem}")
    for (_, source, server_id), ob in zip(candidates, observed):
        plan.containers.append(_plan_one(ob, mapping.get(ob.vmid), ctx, source=source,
                                         server_id=server_id))
    plan.containers.sort(key=lambda cp: cp.vmid)
    _quota_warnings(plan, ctx)
    return plan


def _context(observed: list[Observed], mapping: dict[int, MappingRow]) -> _Context:
    nodes = {n.name: n for n in Node.objects.all()}
    pools = {(node_id, kind): pk for pk, node_id, kind in AllocationPool.objects.filter(
        node__isnull=False).values_list("id", "node_id", "kind")}
    vmid_pool = AllocationPool.objects.filter(name=VMID_POOL_NAME).values_list(
        "id", flat=True).first()
    vmid_rows = {v: row for (_, v), row in _rows_by_value(
        [vmid_pool] if vmid_pool else [], [o.vmid for o in observed]).items()}
    ip_values = [int(ipaddress.IPv4Address(o.ip)) for o in observed if o.ip]
    ip_rows = _rows_by_value([p for (_, k), p in pools.items() if k == PoolKind.IP], ip_values)
    ports = [r.port for r in mapping.values() if r.port] + [
        int(o.meta["port"]) for o in observed
        if o.meta and isinstance(o.meta.get("port"), int)]
    listing, problem = None, None
    try:
        listing = edge_listing()
    except EdgeError as err:
        problem = err.message
    if listing is not None:
        for reg in listing.velocity.values():
            port = _int(str(reg.get("address", "")).rpartition(":")[2])
            if port:
                ports.append(port)
    port_rows = _rows_by_value([p for (_, k), p in pools.items() if k == PoolKind.PORT], ports)
    names = {(mapping[o.vmid].name if o.vmid in mapping and mapping[o.vmid].name
              else str((o.meta or {}).get("name") or o.hostname)).lower() for o in observed}
    live = set(ContainerInstance.objects.filter(live_slug__in=list(names)).values_list(
        "live_slug", flat=True))
    owners = {r.owner for r in mapping.values()} | {
        str(o.meta.get("owner")) for o in observed if o.meta}
    users = set(get_user_model().objects.filter(username__in=list(owners)).values_list(
        "username", flat=True))
    return _Context(nodes=nodes,
                    free_memory={n.name: n.memory_mb - n.allocated_memory_mb
                                 for n in nodes.values()},
                    vmid_rows=vmid_rows, ip_rows=ip_rows, port_rows=port_rows, pools=pools,
                    live_slugs=live, users=users, listing=listing, edge_problem=problem)


def _quota_warnings(plan: AdoptionPlan, ctx: _Context) -> None:
    user_model = get_user_model()
    for owner, (servers, memory) in ctx.owner_usage.items():
        user = user_model.objects.filter(username=owner).first()
        quota = AccountQuota.objects.filter(user=user).first() if user else None
        used = quota_usage(user_id=user.pk) if user else None
        max_servers = quota.max_servers if quota else settings.ZLH_DEFAULT_MAX_SERVERS
        max_memory = quota.max_memory_mb if quota else settings.ZLH_DEFAULT_MAX_MEMORY_MB
        total_servers = servers + (used.servers if used else 0)
        total_memory = memory + (used.memory_mb if used else 0)
        if total_servers > max_servers or total_memory > max_memory:
            for cp in plan.containers:
                if cp.owner == owner and cp.verdict == Verdict.ADOPT:
                    cp.warnings.append(
                        f"account {owner} ends over its quota ({total_servers} servers/"
                        f"{total_memory} MB against {max_servers}/{max_memory} MB): the quota "
                        "is raised to fit (adopted servers are never refused for it)")


