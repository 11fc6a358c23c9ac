"""Masking of secrets before anything is stored, shown, logged or sent.

Two rules: a value under a secret-looking key is masked whole; a value that looks like a
credential (a URL with a password, a Discord webhook URL, a bearer token, a long random string)
is masked wherever it appears, also inside free text such as exception messages.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

_SECRET_KEY_RE = re.compile(
    r"(token|secret|passw(or)?d|passwd|pwd|api[_-]?key|private[_-]?key|access[_-]?key|webhook"
    r"|authori[sz]ation|cookie|credential|signature|dsn|^key$|_key$)",
    re.IGNORECASE,
)
# Keys that match the pattern above but carry no secret.
_SAFE_KEYS = frozenset({"idempotency_key", "dedupe_key", "alert_key", "key_hash_prefix"})

_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host -> scheme://user:***@host
    (re.compile(r"(?P<pre>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?P<post>@)", re.I),
     r"\g<pre>" + MASK + r"\g<post>"),
    # Discord webhook URLs carry their token in the path.
    (re.compile(r"(?P<pre>/api/(?:v\d+/)?webhooks/\d+/)[A-Za-z0-9_.-]+"), r"\g<pre>" + MASK),
    # Authorization schemes: Bearer/Basic credentials and Proxmox API tokens.
    (re.compile(r"(?P<pre>\b(?:Bearer|Basic)\s+)[^\s,;'\"]+", re.I), r"\g<pre>" + MASK),
    (re.compile(r"(?P<pre>PVEAPIToken[= ])[^\s,;'\"]+", re.I), r"\g<pre>" + MASK),
    # JSON Web Tokens (the browser-IDE tokens among them): header.payload.signature.
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), MASK),
    # Well-known token shapes (ours included), whatever their length.
    (re.compile(r"\b(?:zlh_[A-Za-z0-9_-]{16,}|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}"
                r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
                r"|xox[abposr]-[A-Za-z0-9-]{10,}|glpat-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16})"),
     MASK),
    # key=value / key: value pairs in free text (secret=..., password: ...).
    (re.compile(r"(?P<pre>\b(?:[a-z_]*(?:token|secret|password|passwd|api_key))\s*[=:]\s*)"
                r"(?P<q>['\"]?)[^\s'\",;&]+", re.I),
     r"\g<pre>\g<q>" + MASK),
    # Long random-looking tokens: mixed case and digits (slugs and UUIDs are lowercase ids).
    (re.compile(r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])"
                r"(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{24,}"), MASK),
    # Long hex strings (hashes, hex-encoded keys).
    (re.compile(r"(?<![A-Za-z0-9])[0-9a-fA-F]{40,}(?![A-Za-z0-9])"), MASK),
)


def is_secret_key(key: str) -> bool:
    return key.lower() not in _SAFE_KEYS and bool(_SECRET_KEY_RE.search(key))


def redact_text(text: str) -> str:
    for pattern, replacement in _VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(value: Any, *, _depth: int = 0) -> Any:
    """A copy of `value` (JSON-like) with secrets masked; never mutates its argument."""
    if _depth > 20:
        return MASK
    if isinstance(value, Mapping):
        out = {}
        # A {"name": "password", "value": "..."} pair: the name says the value is secret.
        label = value.get("name", value.get("key"))
        pair_secret = isinstance(label, str) and is_secret_key(label)
        for key, item in value.items():
            if pair_secret and key == "value" and item not in (None, ""):
                out[str(key)] = MASK
                continue
            key_s = str(key)
            if is_secret_key(key_s) and item not in (None, "", {}, []):
                out[key_s] = MASK
            else:
                out[key_s] = redact(item, _depth=_depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item, _depth=_depth + 1) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


class RedactingFilter:
    """A logging filter that masks secrets in every message and traceback it lets through."""

    def filter(self, record: Any) -> bool:
        import logging

        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the raw message
            message = str(record.msg)
        record.msg = redact_text(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
