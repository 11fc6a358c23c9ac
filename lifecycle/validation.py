"""Validation of what a user may order: names as DNS labels and the catalog of kinds, variants,
versions, plans and runtimes. Shared by the API serializers and the services, so the admin and
management commands get the same readable errors as the portal.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from .catalog import (
    DEV_RUNTIMES,
    GAME_VERSIONS,
    PLANS,
    RESERVED_NAMES,
    RESERVED_PREFIXES,
    plans_for_kind,
)
from .choices import Kind
from .errors import InvalidRequest

NAME_MIN, NAME_MAX = 3, 32
_LABEL_RE = re.compile(r"\A[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")  # \Z: no trailing newline
IDEMPOTENCY_KEY_MAX = 128
_IDEMPOTENCY_KEY_RE = re.compile(r"\A[\x21-\x7e]{1,128}\Z")


def name_errors(name: Any) -> list[str]:
    """Readable reasons why `name` is not an acceptable server name (empty list: it is)."""
    if not isinstance(name, str):
        return ["Must be a string."]
    problems = []
    if not NAME_MIN <= len(name) <= NAME_MAX:
        problems.append(f"Must be {NAME_MIN} to {NAME_MAX} characters long.")
    if not _LABEL_RE.match(name):
        problems.append(
            "Use lowercase letters, digits and hyphens only, starting and ending with a letter "
            "or digit (it becomes a DNS name)."
        )
    if name in RESERVED_NAMES:
        problems.append(f"'{name}' is reserved.")
    for prefix in RESERVED_PREFIXES:
        if name.startswith(prefix):
            problems.append(f"Names starting with '{prefix}' are reserved.")
    if "--" in name:
        problems.append("Two hyphens in a row are not allowed.")
    return problems


def idempotency_key_errors(key: str) -> list[str]:
    if not _IDEMPOTENCY_KEY_RE.match(key):
        return [
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters "
            "without spaces."
        ]
    return []


@dataclass(frozen=True)
class ServerSpec:
    """A validated, normalised create request."""

    name: str
    kind: str
    plan: str
    variant: str = ""
    version: str = ""
    runtime: str = ""
    runtime_version: str = ""
    enable_code_server: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice(value: Any, allowed: Any, what: str) -> list[str]:
    allowed = list(allowed)
    if value in allowed:
        return []
    return [f"Unknown {what} {value!r}; choose one of: {', '.join(map(str, allowed))}."]


def plan_kind_errors(plan: str, kind: str) -> list[str]:
    """Why a server of `kind` may not use `plan` (empty list: it may)."""
    allowed = plans_for_kind(kind)
    if plan in allowed:
        return []
    label = Kind(kind).label.lower()
    if not allowed:
        return [f"No plan is offered for a {label}."]
    return [f"The {plan} plan ({PLANS[plan].memory_mb} MB) is too small for a {label}; "
            f"choose one of: {', '.join(allowed)}."]


def server_spec_validate(data: dict[str, Any]) -> ServerSpec:
    """Check a create body against the catalog; raise InvalidRequest with field errors."""
    fields: dict[str, list[str]] = {}

    def err(field: str, problems: list[str]) -> None:
        if problems:
            fields.setdefault(field, []).extend(problems)

    for field in ("name", "kind", "plan", "variant", "version", "runtime", "runtime_version"):
        value = data.get(field)
        if value is not None and not isinstance(value, str):
            err(field, ["Must be a string."])
    if fields:
        raise InvalidRequest("The server request is not valid.", fields=fields)

    name = data.get("name")
    kind = data.get("kind")
    plan = data.get("plan")
    if name is None:
        err("name", ["This field is required."])
    else:
        err("name", name_errors(name))
    if kind is None:
        err("kind", ["This field is required."])
    else:
        err("kind", _choice(kind, Kind.values, "kind"))
    if plan is None:
        err("plan", ["This field is required."])
    else:
        err("plan", _choice(plan, PLANS, "plan"))
    if plan in PLANS and kind in Kind.values:
        err("plan", plan_kind_errors(plan, kind))

    variant = data.get("variant") or ""
    version = data.get("version") or ""
    runtime = data.get("runtime") or ""
    runtime_version = data.get("runtime_version") or ""
    code_server = data.get("enable_code_server", False)
    if not isinstance(code_server, bool):
        err("enable_code_server", ["Must be true or false."])
        code_server = False

    if kind == Kind.GAME:
        if not variant:
            err("variant", ["Required for a game server."])
        else:
            err("variant", _choice(variant, GAME_VERSIONS, "variant"))
        if not version:
            err("version", ["Required for a game server."])
        elif variant in GAME_VERSIONS:
            err("version", _choice(version, GAME_VERSIONS[variant], f"{variant} version"))
        for field, value in (("runtime", runtime), ("runtime_version", runtime_version)):
            if value:
                err(field, ["Only for dev containers."])
        if code_server:
            err("enable_code_server", ["Only for dev containers."])
    elif kind == Kind.DEV:
        for field, value in (("variant", variant), ("version", version)):
            if value:
                err(field, ["Only for game servers."])
        if not runtime:
            err("runtime", ["Required for a dev container."])
        else:
            err("runtime", _choice(runtime, DEV_RUNTIMES, "runtime"))
        if not runtime_version:
            err("runtime_version", ["Required for a dev container."])
        elif runtime in DEV_RUNTIMES:
            err("runtime_version", _choice(runtime_version, DEV_RUNTIMES[runtime],
                                           f"{runtime} version"))

    if fields:
        raise InvalidRequest("The server request is not valid.", fields=fields)
    return ServerSpec(
        name=name, kind=kind, plan=plan, variant=variant, version=version, runtime=runtime,
        runtime_version=runtime_version, enable_code_server=code_server,
    )
