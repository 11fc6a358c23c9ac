"""GET /metrics (the Prometheus text format, for a scraper holding METRICS_TOKEN) and the
panel's Fleet overview.

Off (404, as if there were no such page) while METRICS_TOKEN is empty, so the fleet's numbers are
never public by accident; with it, a request without the token gets 401. Compared in constant
time; the token is never logged."""
from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseNotFound
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from core.metrics import HTTP_REQUESTS, HTTP_SECONDS, OUTSIDE_CALL_SECONDS, OUTSIDE_CALLS

from .collectors import FleetCollector
from .overview import fleet_overview, render

_FLEET = FleetCollector()


def _registry() -> CollectorRegistry:
    """The fleet (from the database) and the counts made in processes: every process's of this
    host with METRICS_DIR, else this process's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FLEET)
    if settings.METRICS_DIR:
        MultiProcessCollector(registry, path=settings.METRICS_DIR)
    else:
        registry.register(_OwnProcess())
    return registry


class _OwnProcess:
    def collect(self):
        for collector in (OUTSIDE_CALLS, OUTSIDE_CALL_SECONDS, HTTP_REQUESTS, HTTP_SECONDS):
            yield from collector.collect()


@require_GET
def metrics(request):
    token = settings.METRICS_TOKEN
    if not token:
        return HttpResponseNotFound("metrics are off (METRICS_TOKEN is not set)",
                                    content_type="text/plain")
    given = request.META.get("HTTP_AUTHORIZATION", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        response = HttpResponse("a bearer token is needed", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    response = HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


def fleet(request):
    """The panel's Fleet overview (staff with the view permission on servers)."""
    if not request.user.has_perm("lifecycle.view_containerinstance"):
        raise PermissionDenied
    data = fleet_overview()
    context = {**admin.site.each_context(request), "title": "Fleet overview", **data,
               **render(data)}
    return TemplateResponse(request, "admin/observability/fleet.html", context)
