"""What can be ordered: plans and their sizes, game versions per variant, dev runtimes, the ports
each kind needs, and names nobody may take. One place, read by validation and placement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .choices import Kind, Plan, Variant


@dataclass(frozen=True)
class PlanSpec:
    memory_mb: int
    cores: int
    disk_gb: int


PLANS: dict[str, PlanSpec] = {
    Plan.VANILLA: PlanSpec(memory_mb=2048, cores=2, disk_gb=8),
    Plan.MODDED: PlanSpec(memory_mb=4096, cores=2, disk_gb=16),
    Plan.HEAVY: PlanSpec(memory_mb=8192, cores=4, disk_gb=32),
}

@dataclass(frozen=True)
class BackupPolicy:
    """When a plan's servers are backed up by schedule, and which scheduled backups are kept
    (as vzdump's prune options: the newest `keep_last`, the newest of each of the last
    `keep_daily` days and of the last `keep_weekly` ISO weeks; the rest are removed)."""

    interval_seconds: int
    keep_last: int
    keep_daily: int
    keep_weekly: int


BACKUP_POLICIES: dict[str, BackupPolicy] = {
    Plan.VANILLA: BackupPolicy(interval_seconds=24 * 3600, keep_last=2, keep_daily=7,
                               keep_weekly=4),
    Plan.MODDED: BackupPolicy(interval_seconds=24 * 3600, keep_last=2, keep_daily=7,
                              keep_weekly=4),
    Plan.HEAVY: BackupPolicy(interval_seconds=12 * 3600, keep_last=3, keep_daily=7,
                             keep_weekly=4),
}

GAME_VERSIONS: dict[str, tuple[str, ...]] = {
    Variant.VANILLA: ("1.20.1", "1.20.4", "1.20.6", "1.21", "1.21.1", "1.21.4"),
    Variant.FABRIC: ("1.20.1", "1.20.4", "1.20.6", "1.21", "1.21.1", "1.21.4"),
    Variant.PAPER: ("1.20.4", "1.20.6", "1.21.1", "1.21.4"),
}

DEV_RUNTIMES: dict[str, tuple[str, ...]] = {
    "python": ("3.11", "3.12", "3.13"),
    "node": ("20", "22"),
    "go": ("1.22", "1.23"),
    "java": ("17", "21"),
    "dotnet": ("8", "9"),
}


#: How a runtime is named to users.
RUNTIME_LABELS: dict[str, str] = {
    "python": "Python", "node": "Node.js", "go": "Go", "java": "Java", "dotnet": ".NET",
}


def plans_for_kind(kind: str) -> tuple[str, ...]:
    """The plans a new server of `kind` may use. A dev container needs at least
    DEV_MIN_MEMORY_MB (code-server, a language server and a build together fill 2 GB)."""
    from django.conf import settings

    if kind == Kind.DEV:
        return tuple(name for name, spec in PLANS.items()
                     if spec.memory_mb >= settings.DEV_MIN_MEMORY_MB)
    return tuple(PLANS)

def catalog_document() -> dict[str, Any]:
    """Everything a portal offers, as the API serves it (GET /api/v1/catalog): the plans with
    their sizes and backup policies, which plans each kind may use, the game variants with their
    versions and the dev runtimes with theirs. Built from the tables above, nothing else."""
    return {
        "plans": [
            {"name": name, "label": Plan(name).label, "memory_mb": spec.memory_mb,
             "cores": spec.cores, "disk_gb": spec.disk_gb,
             "backups": {"interval_hours": BACKUP_POLICIES[name].interval_seconds // 3600,
                         "keep_last": BACKUP_POLICIES[name].keep_last,
                         "keep_daily": BACKUP_POLICIES[name].keep_daily,
                         "keep_weekly": BACKUP_POLICIES[name].keep_weekly}}
            for name, spec in PLANS.items()
        ],
        "kinds": [{"name": kind.value, "label": kind.label, "plans": list(plans_for_kind(kind))}
                  for kind in Kind],
        "variants": [{"name": name, "label": Variant(name).label, "versions": list(versions)}
                     for name, versions in GAME_VERSIONS.items()],
        "runtimes": [{"name": name, "label": RUNTIME_LABELS[name], "versions": list(versions)}
                     for name, versions in DEV_RUNTIMES.items()],
    }


#: Ports claimed from the node's pool for each kind, by role.
PORT_ROLES: dict[str, tuple[str, ...]] = {
    Kind.GAME: ("game",),
    Kind.DEV: ("ide",),
}

#: Names that would collide with our own hostnames or routes.
RESERVED_NAMES = frozenset(
    {
        "www", "api", "app", "admin", "panel", "portal", "status", "mail", "smtp", "imap", "pop",
        "ftp", "ns", "ns1", "ns2", "ns3", "dns", "mc", "play", "join", "proxy", "velocity", "lobby",
        "hub", "dev", "ide", "code", "git", "cdn", "static", "assets", "media", "docs", "help",
        "support", "billing", "auth", "login", "oauth", "sso", "zlh", "zerolaghub", "root",
        "localhost", "test", "staging", "prod", "internal", "node", "pve", "proxmox", "grafana",
        "prometheus", "metrics", "discord", "webhook",
    }
)
#: Prefixes used by routes we generate (`dev-<vmid>` for dev containers).
RESERVED_PREFIXES = ("dev-", "xn--", "zlh-")
