"""Metrics counted inside the processes that make the outside calls (Prometheus' client).

With METRICS_DIR set (settings.py exports it as PROMETHEUS_MULTIPROC_DIR before anything imports
prometheus_client), every process of a host — gunicorn's workers, each Celery worker process,
beat — writes its counts to files there, and /metrics adds them up (prometheus_client's
multi-process mode): the same totals whichever process made a call. Without it, /metrics shows
the serving process's own counts only.

Labels are bounded: the outside system, the method and the path with every segment that holds
a digit or is long (ids, VMIDs, node names, tokens) replaced by `{}`, and the outcome class.
"""
from __future__ import annotations

import re
import time

from prometheus_client import Counter, Histogram

OUTSIDE_CALLS = Counter(
    "zlh_outside_calls", "Calls to outside systems, by system, endpoint class and outcome.",
    ["system", "endpoint", "outcome"])
OUTSIDE_CALL_SECONDS = Histogram(
    "zlh_outside_call_seconds", "Latency of calls to outside systems, answer read included.",
    ["system"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
_OPAQUE = re.compile(r"\d|^.{25,}$")
#: API versions stay as they are (`api2`, `v4`, `v10`).
_VERSION = re.compile(r"^(api\d|v\d{1,2})$")


def endpoint_class(method: str, path: str) -> str:
    """`GET /api2/json/nodes/{}/lxc/{}/status/current`: ids, names with digits and tokens
    folded, so the label has a bounded set of values."""
    parts = [("{}" if _OPAQUE.search(part) and not _VERSION.match(part) else part)
             for part in path.split("?")[0].split("/")]
    return f"{method.upper()} {'/'.join(parts)[:120]}"


def outcome_class(status: int | None, error: BaseException | None = None) -> str:
    if error is not None:
        name = type(error).__name__.lower()
        return "timeout" if "timeout" in name or "slow" in name else \
            "too_large" if "large" in name else "error"
    return f"{status // 100}xx" if status else "error"


def record_call(system: str, method: str, path: str, seconds: float, *, status: int | None = None,
                error: BaseException | None = None) -> None:
    """Count one outside call; never raises (metrics must not break a call)."""
    try:
        OUTSIDE_CALLS.labels(system, endpoint_class(method, path),
                             outcome_class(status, error)).inc()
        OUTSIDE_CALL_SECONDS.labels(system).observe(max(0.0, seconds))
    except Exception:  # noqa: BLE001 - a full disk under METRICS_DIR, say
        pass


HTTP_REQUESTS = Counter(
    "zlh_http_requests", "Requests served, by view, method and status class.",
    ["view", "method", "status"])
HTTP_SECONDS = Histogram(
    "zlh_http_request_seconds", "Time to answer a request, by view.", ["view"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    """Counts every request by its URL pattern's name (a bounded set: never the path, which
    holds ids), method and status class, and times it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.monotonic()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = (match.view_name if match is not None else "") or "unmatched"
        method = request.method if request.method in _METHODS else "other"
        try:
            HTTP_REQUESTS.labels(view[:100], method, f"{response.status_code // 100}xx").inc()
            HTTP_SECONDS.labels(view[:100]).observe(time.monotonic() - started)
        except Exception:  # noqa: BLE001 - metrics never break a request
            pass
        return response
