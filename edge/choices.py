"""The edge's vocabulary: its sources, the parts of one server's edge, and the verdict on each."""
from __future__ import annotations

from enum import StrEnum


class Source(StrEnum):
    CLOUDFLARE = "cloudflare"
    TECHNITIUM = "technitium"
    VELOCITY = "velocity"


class Part(StrEnum):
    """One piece of a game server's edge."""

    CLOUDFLARE_A = "cloudflare_a"      # A slug.<zone> -> Velocity's public IP
    CLOUDFLARE_SRV = "cloudflare_srv"  # SRV _minecraft._tcp.slug.<zone>
    TECHNITIUM_A = "technitium_a"      # A slug.<internal zone> -> the container IP
    VELOCITY = "velocity"              # the registration slug -> IP:port


PARTS = tuple(Part)
DNS_PARTS = (Part.CLOUDFLARE_A, Part.CLOUDFLARE_SRV, Part.TECHNITIUM_A)


class Verdict(StrEnum):
    """What is live for one part compared with what should be."""

    OK = "ok"            # ours and right
    MISSING = "missing"  # nothing there
    WRONG = "wrong"      # ours, but pointing elsewhere
    FOREIGN = "foreign"  # only a record without our marker: never touched, reported
    UNKNOWN = "unknown"  # the source could not be listed


#: Verdicts a republish can fix.
REPAIRABLE = frozenset({Verdict.MISSING, Verdict.WRONG})
