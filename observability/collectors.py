"""The fleet as Prometheus metrics, read from the source of truth at scrape time.

Everything here is counted in MariaDB (and the queue depths in Redis) when Prometheus scrapes,
so any process that serves /metrics gives the same numbers, whichever worker did the work and
however many processes there are: no per-process state to merge. Counters are counts of rows
that only ever grow (finished operations and repairs, sent notifications); the duration
histograms are cumulative over the finished operations the same way. Labels are bounded sets
(kinds, states, node names, channels, queues, finding types, repair actions): never a server id.

A fixed number of queries per scrape, whatever the fleet's size (a test pins it).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection
from django.db.models import Count, Min, Sum
from prometheus_client.utils import floatToGoString
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from core.clock import db_now
from lifecycle.choices import (
    ACTIVE_OPERATION_STATES,
    TERMINAL_OPERATION_STATES,
    WAITING_FOR_READY,
    InstanceStatus,
    OperationKind,
    OperationState,
)
from lifecycle.models import AgentHeartbeat, ContainerInstance, Operation
from lifecycle.selectors import node_capacity_list
from notifications.models import ChannelState, Notification
from reconciler.choices import Action, RepairState, RunOutcome
from reconciler.models import Breaker, ControllerRun, Finding, RepairEvent

logger = logging.getLogger(__name__)

#: Seconds from claim to the end of an operation (a provision takes minutes at real speed).
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
#: Seconds from request to claim (what a burst or a full node makes operations wait).
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900)
#: Reconciler cycles (the interval is 60 s: a cycle near it is overrunning).
CYCLE_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120)
#: From a notification's event to Discord's confirmation.
DELIVERY_BUCKETS = (1, 5, 15, 60, 300, 900, 3600)
#: Age of the newest heartbeat of each running server.
HEARTBEAT_BUCKETS = (30, 60, 120, 300, 900, 3600)
_TERMINAL_REPAIRS = (RepairState.SUCCEEDED, RepairState.FAILED, RepairState.ERRORED)


class FleetCollector:
    """A prometheus_client collector: `collect()` reads the database each scrape."""

    def collect(self) -> Iterator[Any]:
        now = db_now()
        yield from self._servers()
        yield from self._nodes()
        yield from self._operations()
        yield from self._reconciler(now)
        yield from self._notifications(now)
        yield from self._heartbeats(now)
        yield from self._queues()

    # --- servers and nodes ------------------------------------------------------------------
    def _servers(self) -> Iterator[Any]:
        g = GaugeMetricFamily("zlh_servers", "Servers by status and kind.",
                              labels=["status", "kind"])
        for status, kind, n in (ContainerInstance.objects.values_list("status", "kind")
                                .annotate(n=Count("id")).values_list("status", "kind", "n")):
            g.add_metric([status, kind], n)
        yield g

    def _nodes(self) -> Iterator[Any]:
        nodes = node_capacity_list()
        servers = GaugeMetricFamily("zlh_node_servers", "Servers placed on the node.",
                                    labels=["node"])
        memory = GaugeMetricFamily("zlh_node_memory_mb", "Memory the node may hand out "
                                   "(capacity) and has reserved for servers (allocated).",
                                   labels=["node", "kind"])
        ips = GaugeMetricFamily("zlh_node_free_ips", "Free container IPs.", labels=["node"])
        ports = GaugeMetricFamily("zlh_node_free_ports", "Free game ports.", labels=["node"])
        enabled = GaugeMetricFamily("zlh_node_enabled", "1 while the node takes new servers.",
                                    labels=["node"])
        for node in nodes:
            name = node["name"]
            servers.add_metric([name], node["servers"])
            memory.add_metric([name, "capacity"], node["memory_mb"])
            memory.add_metric([name, "allocated"], node["allocated_memory_mb"])
            ips.add_metric([name], node["free_ips"])
            ports.add_metric([name], node["free_ports"])
            enabled.add_metric([name], 1 if node["enabled"] else 0)
        yield from (servers, memory, ips, ports, enabled)

    # --- operations ---------------------------------------------------------------------------
    def _operations(self) -> Iterator[Any]:
        in_flight = GaugeMetricFamily("zlh_operations_in_flight",
                                      "Operations queued or running.", labels=["kind", "state"])
        waiting = GaugeMetricFamily(
            "zlh_operations_waiting",
            "Operations queued to look again later, holding no worker, by what they wait for "
            "(ready: their game installing; place: a node's Proxmox task limit).",
            labels=["kind", "waiting_for"])
        counts: Counter[tuple[str, str]] = Counter()
        waits: Counter[tuple[str, str]] = Counter()
        for kind, state, key, n in (Operation.objects.filter(state__in=ACTIVE_OPERATION_STATES)
                                    .values_list("kind", "state", "waiting_for")
                                    .annotate(n=Count("id"))
                                    .values_list("kind", "state", "waiting_for", "n")):
            counts[kind, state] += n
            if key and state == OperationState.QUEUED:
                waits[kind, "ready" if key == WAITING_FOR_READY else "place"] += n
        for labels, n in sorted(counts.items()):
            in_flight.add_metric(list(labels), n)
        for labels, n in sorted(waits.items()):
            waiting.add_metric(list(labels), n)
        yield in_flight
        yield waiting
        done = CounterMetricFamily("zlh_operations", "Operations finished, by outcome.",
                                   labels=["kind", "outcome"])
        retries = CounterMetricFamily("zlh_operation_retries",
                                      "Attempts beyond the first, of finished operations.",
                                      labels=["kind"])
        # Every kind and outcome from zero, so that the first failure of a kind is an
        # increase Prometheus sees (a series born at 1 is not).
        counts = {(kind, state): 0 for kind in OperationKind.values
                  for state in sorted(TERMINAL_OPERATION_STATES)}
        extra: dict[str, int] = {kind: 0 for kind in OperationKind.values}
        for kind, state, n, attempts in (
                Operation.objects.filter(state__in=TERMINAL_OPERATION_STATES)
                .values_list("kind", "state")
                .annotate(n=Count("id"), attempts=Sum("attempt"))
                .values_list("kind", "state", "n", "attempts")):
            counts[(kind, state)] = n
            extra[kind] = extra.get(kind, 0) + max(0, (attempts or 0) - n)
        for (kind, state), n in sorted(counts.items()):
            done.add_metric([kind, state], n)
        for kind, n in sorted(extra.items()):
            retries.add_metric([kind], n)
        yield done
        yield retries
        yield self._durations("zlh_operation_run_seconds",
                              "From claim to the end, of finished operations.",
                              "started_at", "finished_at", RUN_BUCKETS)
        yield self._durations("zlh_operation_wait_seconds",
                              "From request to first claim, of operations that were claimed.",
                              "created_at", "started_at", WAIT_BUCKETS)

    @staticmethod
    def _durations(name: str, doc: str, start: str, end: str, buckets: tuple[float, ...], *,
                   table: str = Operation._meta.db_table, label: str | None = "kind",
                   where: str = "") -> HistogramMetricFamily:
        """A cumulative histogram (per `label` column) of `end - start` over `table`'s rows
        that have both, in one pass."""
        cases = ", ".join(f"SUM(d <= {b})" for b in buckets)
        group = label or "''"
        condition = f"{start} IS NOT NULL AND {end} IS NOT NULL" + (f" AND {where}" if where
                                                                   else "")
        sql = (f"SELECT g, COUNT(*), COALESCE(SUM(d), 0), {cases} FROM ("
               f"SELECT {group} AS g, "
               f"GREATEST(0, TIMESTAMPDIFF(MICROSECOND, {start}, {end})) / 1e6 AS d "
               f"FROM {table} WHERE {condition}) t GROUP BY g ORDER BY g")
        family = HistogramMetricFamily(name, doc, labels=[label] if label else [])
        with connection.cursor() as cursor:
            cursor.execute(sql)
            for value, count, total, *le in cursor.fetchall():
                pairs = [(floatToGoString(b), int(c or 0)) for b, c in zip(buckets, le)]
                family.add_metric([value] if label else [], pairs + [("+Inf", int(count))],
                                  sum_value=float(total))
        return family

    # --- the reconciler -----------------------------------------------------------------------
    def _reconciler(self, now) -> Iterator[Any]:
        open_findings = GaugeMetricFamily("zlh_findings_open", "Open findings, by type.",
                                          labels=["type"])
        for ftype, n in (Finding.objects.filter(open=True).values_list("finding_type")
                         .annotate(n=Count("id")).values_list("finding_type", "n")):
            open_findings.add_metric([ftype], n)
        yield open_findings
        repairs = CounterMetricFamily("zlh_repairs", "Repairs finished, by action and outcome.",
                                      labels=["action", "outcome"])
        finished = {(action, state): 0 for action in Action.values for state in _TERMINAL_REPAIRS}
        for action, state, n in (RepairEvent.objects.filter(state__in=_TERMINAL_REPAIRS)
                                 .values_list("action", "state").annotate(n=Count("id"))
                                 .values_list("action", "state", "n")):
            finished[(action, state)] = n
        for (action, state), n in sorted(finished.items()):
            repairs.add_metric([action, str(state)], n)
        yield repairs
        breakers = GaugeMetricFamily("zlh_breaker_open",
                                     "1 while the repair action's breaker is open or "
                                     "half-open.", labels=["action", "state"])
        for action, state in Breaker.objects.values_list("action", "state"):
            breakers.add_metric([action, state], 0 if state == "closed" else 1)
        yield breakers
        cycles = CounterMetricFamily("zlh_reconciler_cycles", "Reconciler cycles, by outcome.",
                                     labels=["outcome"])
        for outcome, n in (ControllerRun.objects.values_list("outcome")
                           .annotate(n=Count("id")).values_list("outcome", "n")):
            cycles.add_metric([outcome], n)
        yield cycles
        last = (ControllerRun.objects.filter(outcome=RunOutcome.COMPLETED,
                                             finished_at__isnull=False)
                .order_by("-started_at").values("started_at", "finished_at").first())
        duration = GaugeMetricFamily("zlh_reconciler_last_cycle_seconds",
                                     "How long the last completed cycle took.")
        age = GaugeMetricFamily("zlh_reconciler_last_cycle_age_seconds",
                                "Seconds since the last completed cycle started.")
        if last:
            duration.add_metric([], (last["finished_at"] - last["started_at"]).total_seconds())
            age.add_metric([], max(0.0, (now - last["started_at"]).total_seconds()))
        yield duration
        yield age
        yield self._durations("zlh_reconciler_cycle_seconds",
                              "How long reconciler cycles took (the finished ones).",
                              "started_at", "finished_at", CYCLE_BUCKETS,
                              table=ControllerRun._meta.db_table, label=None)

    # --- notifications ------------------------------------------------------------------------
    def _notifications(self, now) -> Iterator[Any]:
        totals = CounterMetricFamily("zlh_notifications", "Notifications, by channel and "
                                     "delivery state.", labels=["channel", "state"])
        pending = GaugeMetricFamily("zlh_notifications_oldest_pending_seconds",
                                    "Age of the oldest notification not yet delivered.",
                                    labels=["channel"])
        oldest: dict[str, Any] = {}
        for channel, state, n, first in (
                Notification.objects.values_list("channel", "state")
                .annotate(n=Count("id"), first=Min("created_at"))
                .values_list("channel", "state", "n", "first")):
            totals.add_metric([channel, state], n)
            if state == "pending":
                oldest[channel] = first
        for channel, first in sorted(oldest.items()):
            pending.add_metric([channel], max(0.0, (now - first).total_seconds()))
        disabled = GaugeMetricFamily("zlh_notification_channel_disabled",
                                     "1 while the channel's webhook is refused.",
                                     labels=["channel"])
        for channel, off in ChannelState.objects.values_list("channel", "disabled"):
            disabled.add_metric([channel], 1 if off else 0)
        yield from (totals, pending, disabled)
        yield self._durations("zlh_notification_delivery_seconds",
                              "From the event to Discord's confirmation, per channel.",
                              "created_at", "sent_at", DELIVERY_BUCKETS,
                              table=Notification._meta.db_table, label="channel",
                              where="state = 'sent'")

    # --- agents ---------------------------------------------------------------------------------
    def _heartbeats(self, now) -> Iterator[Any]:
        """How old the newest heartbeat of each running server is (never: +Inf only)."""
        family = GaugeHistogramMetricFamily(
            "zlh_agent_heartbeat_age_seconds",
            "Running servers by the age of their agent's newest heartbeat.")
        running = ContainerInstance.objects.filter(status=InstanceStatus.RUNNING)
        ages = [(now - at).total_seconds() for at in AgentHeartbeat.objects.filter(
            server__in=running).values_list("received_at", flat=True)]
        total = running.count()
        buckets = [(floatToGoString(b), sum(1 for a in ages if a <= b))
                   for b in HEARTBEAT_BUCKETS]
        family.add_metric([], buckets + [("+Inf", total)], gsum_value=float(sum(ages)))
        yield family

    # --- queues ---------------------------------------------------------------------------------
    def _queues(self) -> Iterator[Any]:
        depth = GaugeMetricFamily("zlh_queue_depth", "Messages waiting in each Celery queue.",
                                  labels=["queue"])
        up = GaugeMetricFamily("zlh_broker_up", "1 when the broker answered this scrape.")
        queues = sorted(q.name for q in (current_app.conf.task_queues or ()))
        try:
            import redis

            client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2,
                                          socket_connect_timeout=2)
            try:
                pipe = client.pipeline()
                for queue in queues:
                    pipe.llen(queue)
                for queue, n in zip(queues, pipe.execute()):
                    depth.add_metric([queue], int(n))
            finally:
                client.close()
            up.add_metric([], 1)
        except Exception as exc:  # the broker down is a value to show, not a failed scrape
            logger.warning("metrics: broker unreachable: %s", type(exc).__name__)
            up.add_metric([], 0)
        yield depth
        yield up
