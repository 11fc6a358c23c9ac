"""The fleet at a glance (the panel's Fleet overview): what it shows, read in a fixed number of
queries whatever the fleet's size, and the small SVG charts that draw it (server-rendered, no
script, nothing fetched at run time). Every figure links to the filtered list behind it."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import Count, Max
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from core.clock import db_now
from lifecycle.choices import AllocationState, InstanceStatus, OperationState, PoolKind
from lifecycle.models import Allocation, ContainerInstance, Node, Operation
from reconciler.models import ControllerRun, Finding

#: Bar colours: a failure red, a success green, the rest the panel's blue.
RED, GREEN, BLUE, GREY = "#c62828", "#2e7d32", "#1565c0", "#9e9e9e"
STATUS_COLOURS = {InstanceStatus.RUNNING: GREEN, InstanceStatus.FAILED: RED,
                  InstanceStatus.MISSING: RED, InstanceStatus.STOPPED: GREY}


@dataclass
class Bar:
    label: str
    value: float
    href: str
    colour: str = BLUE
    #: What the bar's end says (defaults to the value).
    text: str = ""


def _changelist(name: str, **filters: Any) -> str:
    url = reverse(f"admin:{name}_changelist")
    return f"{url}?{urlencode(filters)}" if filters else url


def fleet_overview() -> dict[str, Any]:
    """Everything the page shows: about ten queries."""
    now = db_now()
    day_ago = now - timedelta(hours=24)
    by_status = dict(ContainerInstance.objects.values_list("status")
                     .annotate(n=Count("id")).values_list("status", "n"))
    status_bars = [Bar(label, by_status.get(value, 0),
                       _changelist("lifecycle_containerinstance", status__exact=value),
                       STATUS_COLOURS.get(value, BLUE))
                   for value, label in InstanceStatus.choices if by_status.get(value)]

    used: dict[tuple[int, str], int] = {}
    total: dict[tuple[int, str], int] = {}
    for node_id, kind, state, n in (Allocation.objects.filter(pool__node__isnull=False)
                                    .values_list("pool__node_id", "pool__kind", "state")
                                    .annotate(n=Count("id"))
                                    .values_list("pool__node_id", "pool__kind", "state", "n")):
        total[(node_id, kind)] = total.get((node_id, kind), 0) + n
        if state != AllocationState.FREE:
            used[(node_id, kind)] = used.get((node_id, kind), 0) + n
    nodes = []
    for node in Node.objects.order_by("name"):
        servers = _changelist("lifecycle_containerinstance", node__id__exact=node.pk)
        rows = [("memory", node.allocated_memory_mb, node.memory_mb, "MB")]
        rows += [(label, used.get((node.pk, kind), 0), total.get((node.pk, kind), 0), "")
                 for label, kind in (("IPs", PoolKind.IP), ("ports", PoolKind.PORT))]
        nodes.append({"name": node.name, "enabled": node.enabled, "href": servers, "bars": [
            Bar(label, (u / t) if t else 0.0, servers,
                RED if t and u / t > 0.9 else BLUE,
                f"{u:,} of {t:,} {unit}".strip() + (f" ({u / t:.0%})" if t else ""))
            for label, u, t, unit in rows]})

    in_flight = dict(Operation.objects.filter(state__in=(OperationState.QUEUED,
                                                         OperationState.RUNNING))
                     .values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
    failed = dict(Operation.objects.filter(
        state__in=(OperationState.FAILED, OperationState.ERRORED), finished_at__gte=day_ago)
        .values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
    flight_bars = [Bar(kind, n, _changelist("lifecycle_operation", kind__exact=kind,
                                            state__exact=OperationState.RUNNING))
                   for kind, n in sorted(in_flight.items())]
    failed_bars = [Bar(kind, n, _changelist("lifecycle_operation", kind__exact=kind,
                                            state__exact=OperationState.FAILED), RED)
                   for kind, n in sorted(failed.items())]

    # The last day in 48 half-hours: the slowest cycle of each, and the findings first seen.
    slots = [day_ago + timedelta(minutes=30 * i) for i in range(48)]
    slowest = [0.0] * 48
    for started, finished in (ControllerRun.objects.filter(started_at__gte=day_ago,
                                                           finished_at__isnull=False)
                              .values_list("started_at", "finished_at")):
        i = min(47, int((started - day_ago).total_seconds() // 1800))
        slowest[i] = max(slowest[i], (finished - started).total_seconds())
    new_findings = [0] * 48
    for (first,) in Finding.objects.filter(first_seen__gte=day_ago).values_list("first_seen"):
        new_findings[min(47, int((first - day_ago).total_seconds() // 1800))] += 1
    open_by_type = dict(Finding.objects.filter(open=True).values_list("finding_type")
                        .annotate(n=Count("id")).values_list("finding_type", "n"))
    last_cycle = ControllerRun.objects.aggregate(at=Max("started_at"))["at"]
    runs_url = _changelist("reconciler_controllerrun")
    findings_url = _changelist("reconciler_finding")
    return {
        "now": now,
        "servers_total": sum(by_status.values()),
        "status_bars": status_bars,
        "nodes": nodes,
        "flight_bars": flight_bars,
        "failed_bars": failed_bars,
        "failed_total": sum(failed.values()),
        "cycles": [Bar(f"{t:%H:%M}", v, runs_url, RED if v > 60 else BLUE, f"{v:.1f} s")
                   for t, v in zip(slots, slowest)],
        "findings": [Bar(f"{t:%H:%M}", v, findings_url, RED if v else BLUE, str(v))
                     for t, v in zip(slots, new_findings)],
        "open_findings": [Bar(ftype, n, _changelist("reconciler_finding", open__exact=1,
                                                     finding_type__exact=ftype), RED)
                          for ftype, n in sorted(open_by_type.items())],
        "last_cycle": last_cycle,
    }


# --- charts ------------------------------------------------------------------------------------
def hbars(bars: list[Bar], *, width: int = 520, row: int = 22, scale: float | None = None,
          label_width: int = 150, text_width: int = 140) -> SafeString:
    """Horizontal bars, one per row, each a link; `scale` is the value of a full bar (default:
    the largest)."""
    if not bars:
        return format_html('<p class="zlh-empty">none</p>')
    full = scale or max(b.value for b in bars) or 1
    room = width - label_width - text_width
    rows = format_html_join("", (
        '<a href="{}"><g transform="translate(0,{})">'
        '<text x="0" y="15" font-size="12">{}</text>'
        '<rect x="{}" y="3" width="{}" height="15" rx="2" fill="#e0e0e0"/>'
        '<rect x="{}" y="3" width="{}" height="15" rx="2" fill="{}"/>'
        '<text x="{}" y="15" font-size="12">{}</text></g></a>'), (
        (b.href, i * row, b.label, label_width, room, label_width,
         max(1 if b.value else 0, round(room * min(1.0, b.value / full))), b.colour,
         label_width + room + 6, b.text or f"{b.value:,.0f}")
        for i, b in enumerate(bars)))
    return format_html('<svg class="zlh-chart" width="{}" height="{}" role="img">{}</svg>',
                       width, row * len(bars) + 4, rows)


def columns(bars: list[Bar], *, height: int = 90, width: int = 520,
            title: str = "") -> SafeString:
    """Vertical columns over time (oldest left), each a link with its value as a tooltip."""
    top = max((b.value for b in bars), default=0) or 1
    step = width / max(1, len(bars))
    cols = format_html_join("", (
        '<a href="{}"><rect x="{}" y="{}" width="{}" height="{}" fill="{}">'
        '<title>{}: {}</title></rect></a>'), (
        (b.href, f"{i * step:.1f}", f"{height - h:.1f}", f"{max(1.0, step - 1):.1f}",
         f"{h:.1f}", b.colour, b.label, b.text or b.value)
        for i, b in enumerate(bars)
        for h in (max(1.0 if b.value else 0.0, height * b.value / top),)))
    axis = format_html('<text x="0" y="{}" font-size="10">{}</text>'
                       '<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>',
                       height + 12, bars[0].label if bars else "", width, height + 12,
                       bars[-1].label if bars else "")
    return format_html('<svg class="zlh-chart" width="{}" height="{}" role="img" '
                       'aria-label="{}">{}{}<text x="{}" y="10" font-size="10" '
                       'text-anchor="end">max {}</text></svg>', width, height + 16, title,
                       cols, axis, width, _fmt(top))


def _fmt(value: float) -> str:
    return f"{value:,.1f}" if value < 100 and value != int(value) else f"{value:,.0f}"


def render(data: dict[str, Any]) -> dict[str, Any]:
    """The page's charts as SVG, ready for the template."""
    return {
        "status_chart": hbars(data["status_bars"]),
        "node_charts": [{**node, "chart": hbars(node["bars"], scale=1.0, label_width=70,
                                                width=520, text_width=200)}
                        for node in data["nodes"]],
        "flight_chart": hbars(data["flight_bars"]),
        "failed_chart": hbars(data["failed_bars"]),
        "cycles_chart": columns(data["cycles"], title="slowest cycle per half hour"),
        "findings_chart": columns(data["findings"], title="findings first seen per half hour"),
        "open_findings_chart": hbars(data["open_findings"]),
    }
