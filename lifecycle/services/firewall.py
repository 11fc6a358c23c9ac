"""The container firewall in Proxmox: read it, judge it (`lifecycle.firewall`), put it right.

Used by provisioning (before the container first starts, so the agent port is closed to
everyone but the control plane before the agent takes its credential) and by the reconciler's
`firewall_apply` repair. Every change is guarded by the digest PVE gave with what was read:
if someone edits the same firewall meanwhile, PVE refuses and the next attempt reads again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..clients.proxmox import ProxmoxClient, ProxmoxError, PveErrorKind
from ..firewall import (
    OPTIONS,
    Verdict,
    desired_ipsets,
    judge,
    net0_with_firewall,
    normal_cidr,
)

logger = logging.getLogger(__name__)

#: Bound on the read-delete rounds of one apply (a firewall with more rules of ours than this
#: is put right over several attempts).
MAX_ROUNDS = 20


@dataclass(frozen=True)
class Target:
    """One server's container, as much as the firewall needs of it."""

    server_id: Any
    kind: str
    ports: dict[str, Any]
    node: str
    vmid: int

    @classmethod
    def of(cls, inst: Any) -> "Target":
        return cls(server_id=inst.id, kind=inst.kind, ports=inst.ports or {},
                   node=inst.node.name, vmid=inst.vmid)


def ipsets_check(pve: ProxmoxClient) -> dict[str, dict[str, list[str]]]:
    """IP set name -> {"missing": [...], "extra": [...]} for each set that is not as desired
    (a set that does not exist misses all its addresses)."""
    existing = set(pve.ipsets())
    out = {}
    for name, wanted in desired_ipsets().items():
        # normal spelling -> as PVE stores it (what a delete must name)
        stored = ({normal_cidr(e["cidr"]): e["cidr"] for e in pve.ipset(name)
                   if not e.get("nomatch")} if name in existing else {})
        have = set(stored)
        if name not in existing or have != wanted:
            out[name] = {"missing": sorted(wanted - have),
                         "extra": sorted(stored[c] for c in have - wanted),
                         "exists": name in existing}
    return out


def ipsets_apply(pve: ProxmoxClient) -> list[str]:
    """Make the cluster IP sets hold exactly the configured addresses; returns what changed.

    The sets are shared by every container, so provisions running at once (and the reconciler)
    may put the same set right at the same moment: a set or address someone else has just
    created, or an address someone else has just removed, is what we wanted, not a failure."""
    changes = []
    for name, diff in ipsets_check(pve).items():
        if not diff["exists"]:
            if _tolerating(PveErrorKind.ALREADY_EXISTS, pve.ipset_create, name,
                           comment="ZeroLagHub: managed by the control plane"):
                changes.append(f"created {name}")
        for cidr in diff["missing"]:
            if _tolerating(PveErrorKind.ALREADY_EXISTS, pve.ipset_add, name, cidr):
                changes.append(f"{name} +{cidr}")
        for cidr in diff["extra"]:
            if _tolerating(PveErrorKind.NOT_FOUND, pve.ipset_remove, name, cidr):
                changes.append(f"{name} -{cidr}")
    return changes


def _tolerating(kind: str, call: Any, *args: Any, **kwargs: Any) -> bool:
    """Run `call`; False (instead of raising) when it failed with `kind` because a concurrent
    writer got there first."""
    try:
        call(*args, **kwargs)
    except ProxmoxError as err:
        if err.kind != kind:
            raise
        logger.info("%s: already done by someone else (%s)", getattr(call, "__name__", call), err)
        return False
    return True


def firewall_read(pve: ProxmoxClient, target: Target) -> tuple[dict, dict, list] | None:
    """(config, firewall options, rules) of the container, or None when it does not exist on
    its node."""
    config = pve.ct_config(target.node, target.vmid)
    if config is None:
        return None
    return (config, pve.ct_firewall_options(target.node, target.vmid),
            pve.ct_firewall_rules(target.node, target.vmid))


def firewall_check(pve: ProxmoxClient, target: Target) -> Verdict | None:
    """The container's firewall judged (3 calls), None when the container is not there."""
    seen = firewall_read(pve, target)
    if seen is None:
        return None
    config, options, rules = seen
    return judge(target.server_id, target.kind, target.ports, config=config, options=options,
                 rules=rules)


def firewall_apply(pve: ProxmoxClient, target: Target, *,
                   with_ipsets: bool = True) -> tuple[list[str], Verdict | None]:
    """Put the container's firewall in the desired state (IP sets first: our rules name them).
    Returns (what was changed, the verdict read afterwards; None if the container is gone).
    Rules without our marker are left as they are."""
    changes = ipsets_apply(pve) if with_ipsets else []
    for _ in range(MAX_ROUNDS):
        seen = firewall_read(pve, target)
        if seen is None:
            return changes, None
        config, options, rules = seen
        verdict = judge(target.server_id, target.kind, target.ports, config=config,
                        options=options, rules=rules)
        if verdict.ok:
            return changes, verdict
        if verdict.net0_wrong:
            pve.ct_config_set(target.node, target.vmid, digest=config.get("digest"),
                              net0=net0_with_firewall(str(config.get("net0") or "")))
            changes.append("net0 firewall=1")
        if verdict.options_wrong:
            pve.ct_firewall_options_set(target.node, target.vmid, **OPTIONS)
            changes.append("options " + ", ".join(f"{k}={v}" for k, v in OPTIONS.items()))
        if verdict.remove:
            # One at a time, the highest position first, each against the digest of the rules
            # as just read: positions and digest change with every delete.
            pos = max(verdict.remove)
            digest = next((r.get("digest") for r in rules if r.get("digest")), "")
            pve.ct_firewall_rule_delete(target.node, target.vmid, pos, digest=digest)
            changes.append(f"removed rule {pos}")
            continue  # read again before adding: the rules changed
        for rule in verdict.add:
            pve.ct_firewall_rule_add(target.node, target.vmid, **rule)
            changes.append(f"added rule {rule['comment'].rsplit(':', 1)[1]}")
    seen = firewall_read(pve, target)
    if seen is None:
        return changes, None
    config, options, rules = seen
    return changes, judge(target.server_id, target.kind, target.ports, config=config,
                          options=options, rules=rules)
