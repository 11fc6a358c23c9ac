"""Liveness and readiness probes (no authentication, no throttling)."""
from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_db() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return None
    except Exception as exc:
        return f"database: {type(exc).__name__}"


def _check_redis() -> str | None:
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
        )
        try:
            client.ping()
        finally:
            client.close()
        return None
    except Exception as exc:
        return f"redis: {type(exc).__name__}"


@require_GET
def readyz(request):
    checks = {"database": _check_db(), "redis": _check_redis()}
    failed = {name: problem for name, problem in checks.items() if problem}
    body = {
        "status": "ok" if not failed else "unavailable",
        "checks": {name: ("ok" if not problem else "failing") for name, problem in checks.items()},
    }
    if failed:
        body["problems"] = list(failed.values())
    return JsonResponse(body, status=200 if not failed else 503)
