"""Looking at the real Redis broker the tests use (its own database, see tests/settings.py)."""
from __future__ import annotations

import json

import redis
from django.conf import settings


def client() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=5)


def queued_messages(queue: str) -> list[dict]:
    """Every message waiting in `queue` (kombu keeps one Redis list per queue and priority)."""
    r = client()
    out = []
    for key in r.scan_iter(match=f"{queue}*"):
        if r.type(key) != b"list":
            continue
        out.extend(json.loads(raw) for raw in r.lrange(key, 0, -1))
    return out


def queued_task_ids(queue: str) -> list[str]:
    return [m["headers"]["id"] for m in queued_messages(queue)]


def flush() -> None:
    client().flushdb()
