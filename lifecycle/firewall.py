"""The container firewall as desired state: what each container's Proxmox firewall must say,
and how what Proxmox says is judged against it. Pure: no I/O (applying and reading it is
`lifecycle.services.firewall`).

Every container is created with the firewall on its network device (`net0 …,firewall=1`) and
gets, per container:

- options: firewall enabled, incoming policy DROP (nothing reaches the container unless a rule
  lets it: not other containers, not the internet), outgoing ACCEPT (dev containers and game
  servers fetch what they need);
- one ACCEPT rule per role, each to one TCP port from one cluster IP set:
  - `agent`: the agent port, from `zlh-control` (the control plane's addresses);
  - `game`: the game port, from `zlh-velocity` (Velocity's addresses);
  - `ide`: the IDE port, from `zlh-ide-proxy` (the IDE proxy's addresses).

The sources are cluster IP sets, not addresses in each container's rules, so a changed
address is one IP set to correct, not ten thousand containers. Our rules carry the marker
`zlh:<server id>:<role>` in their comment; a rule without it is someone else's (an operator's
in the Proxmox panel) and is never touched, only reported. A rule with the marker of another
server (a VMID used before) or of ours but different from what is desired is replaced.

The guest firewall only filters while the datacenter firewall is enabled; that switch also
filters the nodes themselves, so it is the operator's to turn on (reported when off), never
ours.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from .choices import Kind

MARKER_PREFIX = "zlh:"
_MARKER = re.compile(r"^zlh:([0-9a-f-]{36}):([a-z-]{1,32})$")

#: The cluster IP sets our rules take their sources from, and the settings that fill them.
IPSET_SETTINGS = {
    "zlh-control": "FIREWALL_CONTROL_PLANE_SOURCES",
    "zlh-velocity": "FIREWALL_VELOCITY_SOURCES",
    "zlh-ide-proxy": "FIREWALL_IDE_PROXY_SOURCES",
}
#: Role of a rule -> (port role in ContainerInstance.ports or None for the agent, IP set).
ROLES = {
    "agent": (None, "zlh-control"),
    "game": ("game", "zlh-velocity"),
    "ide": ("ide", "zlh-ide-proxy"),
}
#: The container's firewall options (values as PVE answers them).
OPTIONS = {"enable": 1, "policy_in": "DROP", "policy_out": "ACCEPT"}
#: Fields of a rule compared with the desired one.
RULE_FIELDS = ("type", "action", "proto", "dport", "source", "enable")


def enabled() -> bool:
    return bool(settings.PROXMOX_FIREWALL)


def agent_port() -> int:
    """The port the control plane speaks to agents on (from AGENT_URL_TEMPLATE)."""
    parts = urlsplit(settings.AGENT_URL_TEMPLATE.format(ip="192.0.2.1", vmid=0))
    return parts.port or (443 if parts.scheme == "https" else 80)


def marker(server_id: Any, role: str) -> str:
    return f"{MARKER_PREFIX}{server_id}:{role}"


def parse_marker(comment: str | None) -> tuple[str, str] | None:
    """(server id, role) of one of our rules' comments, None for anyone else's."""
    found = _MARKER.match((comment or "").strip())
    return (found.group(1), found.group(2)) if found else None


def desired_ipsets() -> dict[str, set[str]]:
    """IP set name -> the addresses (CIDRs) it must hold, from the settings."""
    return {name: {normal_cidr(a) for a in getattr(settings, key) if str(a).strip()}
            for name, key in IPSET_SETTINGS.items()}


def normal_cidr(address: str) -> str:
    """One spelling per address, as PVE stores them: a single host without its /32, a network
    by its network address ("10.0.0.7/24" -> "10.0.0.0/24"). Not an address: as given (PVE
    will refuse it, and the repair reports that)."""
    text = str(address).strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return text
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def desired_rules(server_id: Any, kind: str, ports: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The rules one server's container must have (as PVE answers them)."""
    ports = ports or {}
    roles = ["agent"] + (["game"] if kind == Kind.GAME else ["ide"])
    rules = []
    for role in roles:
        port_role, ipset = ROLES[role]
        port = agent_port() if port_role is None else ports.get(port_role)
        if port is None:
            continue  # no port of that role (yet): nothing to open
        rules.append({"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": str(port),
                      "source": f"+{ipset}", "enable": 1, "comment": marker(server_id, role)})
    return rules


def net0_has_firewall(net0: str | None) -> bool:
    return "firewall=1" in _net_options(net0)


def net0_with_firewall(net0: str) -> str:
    """`net0` with `firewall=1` (every other option, the MAC address included, kept)."""
    options = [o for o in _net_options(net0) if not o.startswith("firewall=")]
    return ",".join(options + ["firewall=1"])


def _net_options(net0: str | None) -> list[str]:
    return [o.strip() for o in (net0 or "").split(",") if o.strip()]


@dataclass
class Verdict:
    """What one container's firewall looks like against what is desired."""

    #: What differs from the desired state (empty: as desired).
    problems: list[str] = field(default_factory=list)
    #: Rules without our marker: someone else's, reported, never touched.
    foreign: list[str] = field(default_factory=list)
    #: Positions of our rules that must go (wrong, duplicated, or another server's marker).
    remove: list[int] = field(default_factory=list)
    #: Desired rules that are missing.
    add: list[dict[str, Any]] = field(default_factory=list)
    options_wrong: bool = False
    net0_wrong: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"state": "ok" if self.ok else "drift", "problems": self.problems[:10],
                "foreign": self.foreign[:10]}


def judge(server_id: Any, kind: str, ports: dict[str, Any] | None, *,
          config: dict[str, Any], options: dict[str, Any],
          rules: list[dict[str, Any]]) -> Verdict:
    """Compare a container's config (net0), firewall options and rules with the desired state."""
    verdict = Verdict()
    if not net0_has_firewall(config.get("net0")):
        verdict.net0_wrong = True
        verdict.problems.append("net0 has no firewall=1")
    wrong = {k: options.get(k) for k, v in OPTIONS.items()
             if str(options.get(k, "")).upper() != str(v).upper()}
    if wrong:
        verdict.options_wrong = True
        verdict.problems.append("options " + ", ".join(f"{k}={v}" for k, v in wrong.items()))
    wanted = {r["comment"]: r for r in desired_rules(server_id, kind, ports)}
    kept: set[str] = set()
    for rule in rules:
        owner = parse_marker(rule.get("comment"))
        if owner is None:
            verdict.foreign.append(_describe(rule))
            continue
        comment = marker(*owner)
        want = wanted.get(comment)
        if want is not None and comment not in kept and all(
                str(rule.get(k, "")) == str(want[k]) for k in RULE_FIELDS):
            kept.add(comment)
            continue
        verdict.remove.append(int(rule["pos"]))
        why = ("another server's" if owner[0] != str(server_id)
               else "duplicate" if comment in kept else "changed" if want else "unwanted")
        verdict.problems.append(f"rule {rule['pos']} ({owner[1]}): {why}")
    for comment, want in wanted.items():
        if comment not in kept:
            verdict.add.append(want)
            verdict.problems.append(f"rule {comment.rsplit(':', 1)[1]} missing")
    return verdict


def _describe(rule: dict[str, Any]) -> str:
    parts = [str(rule.get(k)) for k in ("type", "action", "proto", "dport", "source", "macro")
             if rule.get(k) not in (None, "")]
    return " ".join(parts)
