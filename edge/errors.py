"""Errors of the edge systems (Cloudflare, Technitium, Velocity): `kind` says what happened,
`retryable` whether trying again can help (see core.errors)."""
from __future__ import annotations

from core.errors import ExternalError


class EdgeError(ExternalError):
    system = "edge"
