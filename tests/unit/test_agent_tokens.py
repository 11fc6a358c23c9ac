"""core/agent_tokens.py: one token per direction and per server, compared in constant time."""
from __future__ import annotations

import uuid

from core.agent_tokens import bearer, control_token, heartbeat_token, new_secret, tokens_equal


def test_tokens_differ_per_direction_per_server_and_per_secret():
    secret, other = new_secret(), new_secret()
    a, b = uuid.uuid4(), uuid.uuid4()
    tokens = {control_token(secret, a), heartbeat_token(secret, a), control_token(secret, b),
              heartbeat_token(secret, b), control_token(other, a), heartbeat_token(other, a)}
    assert len(tokens) == 6
    assert all(len(t) == 64 and secret not in t for t in tokens)
    assert control_token(secret, a) == control_token(secret, str(a))  # stable


def test_secrets_are_32_random_bytes():
    secrets_ = {new_secret() for _ in range(50)}
    assert len(secrets_) == 50 and all(len(s) == 43 for s in secrets_)


def test_bearer_and_comparison():
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    for header in (None, "", "Bearer", "Bearer ", "Basic abc", "Bearer a b", "abc"):
        assert bearer(header) is None
    assert tokens_equal("abc", "abc")
    assert not tokens_equal("abc", "abd") and not tokens_equal(None, "abc")
    assert not tokens_equal("", "") and not tokens_equal("abc", "")
