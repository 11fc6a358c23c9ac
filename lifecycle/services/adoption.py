"""Taking over containers made outside the control plane (`manage.py adopt`), and giving them
back (`adopt --release`).

Two kinds of container can be adopted:
- **untagged** containers (made by the old API or by hand), described by a mapping file
  (VMID -> owner, name, kind, variant/version or runtime, plan, port), so an export of the old
  database can feed it;
- containers carrying our tag for a server this database does not know (the database was
  restored from a dump older than the server): they keep their server id, and what the
  mapping file does not say is read from the metadata line provisioning writes into the
  container's description (`container_description`), so re-adopting them needs no mapping.

`adoption_plan` reads everything once (one Proxmox listing plus one config read per candidate,
one listing per edge system, a handful of queries) and says, per container, what adopting it
claims and changes, or why it is skipped. `adoption_apply` adopts the containers planned for
it, one at a time per thread:

1. one transaction (the account's quota row locked, as creates do): the server row in the
   observed state (running/stopped, under a maintenance lock so the reconciler keeps its hands
   off until the end), its VMID, IP and port claimed under row locks, the node's memory
   reserved, and the `Adoption` journal row with everything the container had;
2. our tag added to the container's tags (the others kept), guarded by the config's digest;
3. the container firewall put in place (when PROXMOX_FIREWALL is on; what it was is kept);
4. the edge steps (`edge.adoption`): exactly matching records marked, missing ones made;
5. the maintenance lock lifted, and a running server's agent given its own credential (a
   `rotate_credential` operation).

Nothing is created, started, stopped, restarted or destroyed. A crash anywhere leaves the
journal row in the last state reached; the next `--apply` carries on from there (each step is
idempotent). A second `--apply` finds every container adopted and changes nothing.
`adoption_release` undoes it all in the reverse order and leaves the server row as a purged
tombstone (its history stays readable), its allocations as they were before adoption.
"""
from __future__ import annotations

import csv
import io
import ipaddress
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.db.models.lookups import LessThanOrEqual

from core.ownership import FLEET_TAG, container_tag, owners_from_tags
from edge.adoption import EdgeListing, EdgeStep, edge_adoption_plan, edge_adoption_step, \
    edge_adoption_undo, edge_listing
from edge.errors import EdgeError
from edge.services import EdgeClients, EdgeTarget

from ..catalog import DEV_RUNTIMES, GAME_VERSIONS, PLANS, PORT_ROLES
from ..choices import (
    ACTIVE_OPERATION_STATES,
    AdoptionState,
    AllocationState,
    DesiredState,
    InstanceStatus,
    Kind,
    OperationKind,
    PoolKind,
    Variant,
)
from ..clients.proxmox import PowerState, ProxmoxClient, ProxmoxError, parse_tags
from ..db import named_lock, retry_on_lock_conflict
from ..errors import LifecycleError
from ..firewall import enabled as firewall_enabled
from ..firewall import parse_marker
from ..models import AccountQuota, Adoption, Allocation, AllocationPool, ContainerInstance, \
    Node, Operation
from ..validation import name_errors
from .accounts import quota_ensure, quota_usage
from .allocations import VMID_POOL_NAME
from .audit import Actor, audit_record
from .edge import edge_target_for
from .firewall import Target, firewall_apply, ipsets_apply

logger = logging.getLogger(__name__)

MAPPING_MAX_BYTES = 20 * 1024 * 1024
MAPPING_MAX_ROWS = 100_000
MAPPING_FIELDS = ("vmid", "owner", "name", "kind", "variant", "version", "plan", "runtime",
                  "runtime_version", "code_server", "port")
_USERNAME = re.compile(r"\A[\w.@+-]{1,150}\Z")
META_PREFIX = "zlh-meta: "
_META_MAX = 2048
#: Proxmox reads at once while planning (config of each candidate).
READ_PARALLELISM = 8
_IPSETS_LOCK = threading.Lock()


class MappingInvalid(LifecycleError):
    """The mapping file cannot be used; `problems` names each bad line."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class AdoptionRefused(LifecycleError):
    """Something changed since the plan (a value claimed meanwhile, a name taken)."""


# --- the metadata provisioning writes into a container's description ---------------------------
def container_description(inst: Any) -> str:
    """The description a container is created with: a line for people, and a metadata line
    from which a re-adoption by tag rebuilds the server row (nothing secret in it)."""
    meta = {"owner": inst.owner.get_username(), "name": inst.slug, "kind": inst.kind,
            "variant": inst.variant, "version": inst.version, "plan": inst.plan,
            "runtime": inst.runtime, "runtime_version": inst.runtime_version,
            "code_server": inst.enable_code_server,
            "port": next(iter((inst.ports or {}).values()), None)}
    return (f"ZeroLagHub {inst.kind} server {inst.slug} ({inst.id})\n"
            f"{META_PREFIX}{json.dumps(meta, sort_keys=True, separators=(',', ':'))}")


def description_meta(description: Any) -> dict[str, Any] | None:
    """The metadata line of a description, checked like a mapping row; None without one. The
    description is anyone's to edit in the Proxmox panel: read as untrusted input."""
    if not isinstance(description, str):
        return None
    for line in description[:16_384].splitlines():
        if line.startswith(META_PREFIX) and len(line) <= _META_MAX:
            try:
                data = json.loads(line[len(META_PREFIX):])
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


# --- the mapping file -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MappingRow:
    vmid: int
    owner: str
    name: str = ""
    kind: str = Kind.GAME
    variant: str = ""
    version: str = ""
    plan: str = ""
    runtime: str = ""
    runtime_version: str = ""
    code_server: bool = False
    port: int | None = None


def _row_of(raw: dict[str, Any], where: str, *,
            check_columns: bool = True) -> tuple[MappingRow | None, list[str]]:
    problems = []
    unknown = sorted(set(raw) - set(MAPPING_FIELDS))
    if unknown and check_columns:
        problems.append(f"{where}: unknown column(s) {', '.join(map(str, unknown))} "
                        f"(known: {', '.join(MAPPING_FIELDS)})")

    def text(key: str, limit: int = 32) -> str:
        value = raw.get(key)
        value = "" if value is None else str(value).strip()
        if len(value) > limit:
            problems.append(f"{where}: {key} is longer than {limit} characters")
        return value

    def number(key: str, lo: int, hi: int) -> int | None:
        value = raw.get(key)
        if value in (None, ""):
            return None
        try:
            n = int(str(value).strip())
        except ValueError:
            problems.append(f"{where}: {key} {value!r} is not a whole number")
            return None
        if not lo <= n <= hi:
            problems.append(f"{where}: {key} {n} is outside {lo}..{hi}")
        return n

    vmid = number("vmid", 100, 999_999_999)
    if vmid is None and not any(p.startswith(f"{where}: vmid") for p in problems):
        problems.append(f"{where}: vmid is required")
    owner = text("owner", 150)
    if not _USERNAME.match(owner):
        problems.append(f"{where}: owner {owner!r} is not a valid username "
                        "(letters, digits and @.+-_, up to 150)")
    kind = text("kind") or Kind.GAME
    if kind not in Kind.values:
        problems.append(f"{where}: kind {kind!r} is not one of {', '.join(Kind.values)}")
    variant = text("variant")
    if kind == Kind.GAME and variant and variant not in Variant.values:
        problems.append(f"{where}: variant {variant!r} is not one of {', '.join(Variant.values)}")
    plan = text("plan")
    if plan and plan not in PLANS:
        problems.append(f"{where}: plan {plan!r} is not one of {', '.join(PLANS)}")
    runtime = text("runtime")
    if kind == Kind.DEV and runtime and runtime not in DEV_RUNTIMES:
        problems.append(f"{where}: runtime {runtime!r} is not one of {', '.join(DEV_RUNTIMES)}")
    flag = text("code_server").lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no"):
        problems.append(f"{where}: code_server {flag!r} is not a yes/no value")
    row = MappingRow(vmid=vmid or 0, owner=owner, name=text("name").lower(), kind=kind,
                     variant=variant, version=text("version"), plan=plan, runtime=runtime,
                     runtime_version=text("runtime_version", 16),
                     code_server=flag in ("1", "true", "yes"),
                     port=number("port", 1, 65535))
    return (None if problems else row), problems


def mapping_parse(text: str, *, fmt: str) -> dict[int, MappingRow]:
    """VMID -> row, from CSV (a header line naming the columns) or JSON (a list of objects, or
    {"servers": [...]}). Every bad line is named; nothing is used unless all are good."""
    if len(text.encode()) > MAPPING_MAX_BYTES:
        raise MappingInvalid("mapping file too large", [f"over {MAPPING_MAX_BYTES} bytes"])
    if fmt == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MappingInvalid("mapping file is not JSON", [str(exc)]) from exc
        if isinstance(data, dict):
            data = data.get("servers")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise MappingInvalid("mapping file", ['JSON must be a list of objects, or '
                                                  '{"servers": [objects]}'])
        raws = [(f"item {i}", r) for i, r in enumerate(data, start=1)]
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "vmid" not in [f.strip() for f in reader.fieldnames]:
            raise MappingInvalid("mapping file", ["CSV must start with a header line naming "
                                                  f"its columns ({', '.join(MAPPING_FIELDS)})"])
        header = [str(f).strip() for f in reader.fieldnames]
        unknown = sorted(set(header) - set(MAPPING_FIELDS))
        if unknown:
            raise MappingInvalid("mapping file", [
                f"line 1: unknown column(s) {', '.join(unknown)} (known: "
                f"{', '.join(MAPPING_FIELDS)})"])
        raws = [(f"line {reader.line_num}", {str(k).strip(): v for k, v in r.items()
                                              if k is not None})
                for r in reader]
    if len(raws) > MAPPING_MAX_ROWS:
        raise MappingInvalid("mapping file", [f"more than {MAPPING_MAX_ROWS} rows"])
    rows: dict[int, MappingRow] = {}
    problems: list[str] = []
    seen: set[str] = set()
    for where, raw in raws:
        row, bad = _row_of(raw, where)
        problems += bad
        vmid = str(raw.get("vmid", "")).strip()
        if vmid and vmid in seen:
            problems.append(f"{where}: VMID {vmid} appears twice")
        seen.add(vmid)
        if row is not None:
            rows[row.vmid] = row
    if problems:
        raise MappingInvalid(f"{len(problems)} problem(s) in the mapping file", problems)
    return rows


def mapping_load(path: str | Path) -> dict[int, MappingRow]:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MappingInvalid(f"cannot read {path}", [str(exc)]) from exc
    if size > MAPPING_MAX_BYTES:
        raise MappingInvalid("mapping file too large", [f"{size} bytes, over {MAPPING_MAX_BYTES}"])
    fmt = "json" if path.suffix.lower() == ".json" else "csv"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingInvalid(f"cannot read {path}", [str(exc)]) from exc
    return mapping_parse(text, fmt=fmt)


# --- what Proxmox shows ---------------------------------------------------------------------------
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


_SIZE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)")
_IP = re.compile(r"(?:^|,)ip=([0-9.]+)/(\d+)(?:,|$)")


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


# --- apply ----------------------------------------------------------------------------------------
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
    from .actions import server_request  # noqa: PLC0415 - actions imports this module's peers

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


# --- release --------------------------------------------------------------------------------------
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
    adoption = Adoption.objects.filter(vmid=vmid).exclude(state=AdoptionState.RELEASED).first()
    if adoption is None:
        raise AdoptionRefused(f"CT {vmid} was not adopted (or is released already): a server "
                              "of ours is deleted through the API or the admin")
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
    from .allocations import allocation_release_to_quarantine  # noqa: PLC0415

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
