"""The mapping file (VMID -> owner, name, kind, …) and the metadata line provisioning writes
into a container's description; both are read as untrusted input, every problem named."""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...catalog import DEV_RUNTIMES, PLANS
from ...choices import Kind, Variant
from ...errors import MappingInvalid

MAPPING_MAX_BYTES = 20 * 1024 * 1024
MAPPING_MAX_ROWS = 100_000
MAPPING_FIELDS = ("vmid", "owner", "name", "kind", "variant", "version", "plan", "runtime",
                  "runtime_version", "code_server", "port")
_USERNAME = re.compile(r"\A[\w.@+-]{1,150}\Z")
META_PREFIX = "zlh-meta: "
_META_MAX = 2048


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


