"""`GET /api/v1/servers/{id}/status`: what is observed of a server, with when and how.

The portal's status is what the control plane *saw*, never what it assumes: the container's
power and node and the edge (from the reconciler's latest completed cycle, ServerObservation),
the container firewall (from its latest check), and the agent (from its latest heartbeat). Each
part is `unknown` only when it is, with the reason: no cycle has completed yet, the source could
not be read in the latest cycle (the last known value is given beside), the server is newer than
the latest observation, or the agent's heartbeat is missing or stale.

It lives in the reconciler because the reconciler produces these observations; the route is
mounted beside the lifecycle API (zlh/urls.py) with the same authentication and owner scoping.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from core.clock import db_now
from core.health import Health
from edge.choices import Source, Verdict
from lifecycle import selectors
from lifecycle.api.serializers import ErrorSerializer, OperationSerializer
from lifecycle.choices import DesiredState, InstanceStatus, Kind
from lifecycle.firewall import enabled as firewall_enabled
from lifecycle.models import AgentHeartbeat, ContainerInstance, Operation

from .choices import RunOutcome
from .models import ControllerRun, ServerObservation
from .observe import ObservedSource, heartbeat_stale_after

#: Cycles whose observations count (a mass-drift cycle observed everything; it only did not act).
OBSERVING_OUTCOMES = (RunOutcome.COMPLETED, RunOutcome.MASS_DRIFT)
EDGE_SOURCES = (Source.CLOUDFLARE, Source.TECHNITIUM, Source.VELOCITY)


class PartSerializer(serializers.Serializer):
    state = serializers.CharField(help_text="the observed state, or 'unknown'")
    observed_at = serializers.DateTimeField(allow_null=True,
                                            help_text="when this was last seen")
    since = serializers.DateTimeField(allow_null=True, required=False,
                                      help_text="since when it has been in this state")
    reason = serializers.CharField(allow_null=True, help_text="why it is unknown")
    details = serializers.DictField(required=False)


class StatusSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=InstanceStatus.choices)
    desired_state = serializers.ChoiceField(choices=DesiredState.choices)
    status_changed_at = serializers.DateTimeField()
    power = PartSerializer()
    agent = PartSerializer()
    edge = PartSerializer()
    firewall = PartSerializer()
    last_error = serializers.JSONField(allow_null=True)
    operation = OperationSerializer(allow_null=True)


def _part(state: str, observed_at: datetime | None, *, reason: str | None = None,
          since: datetime | None = None, **details: Any) -> dict[str, Any]:
    part = {"state": state, "observed_at": observed_at, "reason": reason}
    if since is not None:
        part["since"] = since
    if details:
        part["details"] = details
    return part


def latest_observing_run() -> ControllerRun | None:
    return ControllerRun.objects.filter(outcome__in=OBSERVING_OUTCOMES).only(
        "pk", "started_at", "sources").order_by("-started_at").first()


def power_part(server: ContainerInstance, run: ControllerRun | None,
               obs: ServerObservation | None) -> dict[str, Any]:
    if run is None:
        return _part("unknown", None, reason="the reconciler has not completed a cycle yet")
    known = {"last_known": obs.power, "last_known_since": obs.power_since} \
        if obs is not None and obs.power else {}
    if (run.sources or {}).get(ObservedSource.PROXMOX) != Health.HEALTHY:
        return _part("unknown", None, reason="Proxmox could not be read in the latest cycle "
                     f"({run.started_at.isoformat()})", **known)
    if obs is None or not obs.power:
        return _part("unknown", None, reason="not observed yet: the server is newer than "
                     "the latest cycle")
    return _part(obs.power, run.started_at, since=obs.power_since, node=obs.node)


def edge_part(server: ContainerInstance, run: ControllerRun | None,
              obs: ServerObservation | None) -> dict[str, Any]:
    if server.kind != Kind.GAME:
        return _part("none", None, reason=None, why="dev containers are reached through the "
                     "IDE route and have no records of their own")
    if run is None:
        return _part("unknown", None, reason="the reconciler has not completed a cycle yet")
    down = [s for s in EDGE_SOURCES if (run.sources or {}).get(s) != Health.HEALTHY]
    if down:
        return _part("unknown", None, reason=f"{', '.join(down)} could not be read in the "
                     f"latest cycle ({run.started_at.isoformat()})")
    if obs is None:
        return _part("unknown", None, reason="not observed yet: the server is newer than "
                     "the latest cycle")
    if not obs.edge:
        return _part("none", run.started_at, since=obs.edge_since,
                     why="not published: only running game servers are")
    verdicts = set(obs.edge.values())
    state = "ok" if verdicts == {Verdict.OK} else (
        "unknown" if Verdict.UNKNOWN in verdicts else "drift")
    return _part(state, run.started_at, since=obs.edge_since, parts=obs.edge)


def firewall_part(server: ContainerInstance, obs: ServerObservation | None) -> dict[str, Any]:
    """The container firewall as last checked (a few servers are checked per cycle, so this is
    as old as `observed_at` says). What is wrong is named; other people's rules are the
    operator's business and are not shown."""
    if not firewall_enabled():
        return _part("none", None, why="the container firewall is off (PROXMOX_FIREWALL)")
    if obs is None or not obs.firewall or obs.firewall_checked_at is None:
        return _part("unknown", None, reason="not checked yet: the reconciler checks "
                     f"{settings.RECONCILER_FIREWALL_CHECKS} containers' firewalls per cycle")
    return _part(obs.firewall.get("state", "unknown"), obs.firewall_checked_at,
                 problems=obs.firewall.get("problems", []))


def agent_part(server: ContainerInstance, hb: AgentHeartbeat | None,
               now: datetime) -> dict[str, Any]:
    """From the agent's latest heartbeat; its age is judged by the database clock that wrote
    `received_at`."""
    if hb is None:
        return _part("unknown", None, reason="no heartbeat received from this server's agent")
    age = max(0.0, (now - hb.received_at).total_seconds())
    facts = {
        "heartbeat_age_seconds": round(age, 1),
        "ready": hb.ready,
        "provisioning_complete": hb.provisioning_complete,
        "crash_count": hb.crash_count,
        "last_crash": hb.last_crash,
        "memory_used_mb": hb.memory_used_mb,
        "memory_limit_mb": hb.memory_limit_mb,
        "disk_used_mb": hb.disk_used_mb,
        "disk_limit_mb": hb.disk_limit_mb,
        "players_online": hb.players_online,
    }
    stale = heartbeat_stale_after()
    if age > stale:
        return _part("unknown", hb.received_at,
                     reason=f"the last heartbeat is {age:.0f} s old (stale after {stale:.0f} s)",
                     last_known=hb.state, **facts)
    return _part(hb.state, hb.received_at, **facts)


class ServerStatusView(APIView):
    @extend_schema(responses={200: StatusSerializer,
                              404: OpenApiResponse(ErrorSerializer, description="Not found")},
                   operation_id="servers_status_retrieve", tags=["servers"])
    def get(self, request, pk):
        server = selectors.server_get_for(user=request.user, server_id=pk)
        if server is None:
            raise NotFound("No such server.")
        run = latest_observing_run()
        obs = ServerObservation.objects.filter(instance_id=server.id).first()
        op = Operation.objects.filter(instance_id=server.id).order_by("-created_at").first()
        data = {
            "id": server.id,
            "status": server.status,
            "desired_state": server.desired_state,
            "status_changed_at": server.status_changed_at,
            "power": power_part(server, run, obs),
            "agent": agent_part(server, AgentHeartbeat.objects.filter(
                server_id=server.id).first(), db_now()),
            "edge": edge_part(server, run, obs),
            "firewall": firewall_part(server, obs),
            "last_error": server.last_error,
            "operation": OperationSerializer(op).data if op else None,
        }
        return Response(StatusSerializer(data).data)
