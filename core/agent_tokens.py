"""The tokens derived from a container's agent secret, one per direction.

Each server has its own agent secret (`lifecycle.models.AgentCredential`). It never travels
after enrolment: each side proves it holds it with a token derived from it and from the
server's id, different per direction, so a party that sees one direction's token can neither
speak the other direction nor speak for another server:

- control plane → agent: `Authorization: Bearer <control_token(secret, server_id)>`;
- agent → control plane (heartbeats): `Authorization: Bearer <heartbeat_token(...)>`.

Both are hex HMAC-SHA256. The control plane and the devstack's agent stand-in both use this
module, so the derivation lives in exactly one place. Compare with `tokens_equal` (constant
time), never with `==`.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

CONTROL = "zlh-agent/control/"
HEARTBEAT = "zlh-agent/heartbeat/"


def new_secret() -> str:
    """A fresh agent secret: 32 random bytes, URL-safe text."""
    return secrets.token_urlsafe(32)


def _derive(secret: str, purpose: str, server_id: object) -> str:
    return hmac.new(secret.encode(), f"{purpose}{server_id}".encode(), hashlib.sha256).hexdigest()


def control_token(secret: str, server_id: object) -> str:
    """What the control plane presents to the agent of `server_id`."""
    return _derive(secret, CONTROL, server_id)


def heartbeat_token(secret: str, server_id: object) -> str:
    """What the agent of `server_id` presents to the control plane."""
    return _derive(secret, HEARTBEAT, server_id)


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def tokens_equal(presented: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing token never matches."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
