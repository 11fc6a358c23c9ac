"""The agents' own endpoint: `POST /api/v1/agents/{server_id}/heartbeat`.

Not the portal's: no portal token works here, and no agent token works on the portal API. The
agent presents `Authorization: Bearer <heartbeat token>`, derived from its server's secret
(`core/agent_tokens.py`); another server's token, a control token, a wrong or missing one, and
a server that does not exist all get the same 401, so an unauthenticated caller learns nothing
about which servers exist. The body is checked only once the caller is authenticated.
"""
from __future__ import annotations

import json
import uuid

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.agent_tokens import bearer

from ..services.agent_credentials import heartbeat_version
from ..services.heartbeats import InvalidHeartbeat, heartbeat_receive
from .errors import error_body
from .serializers import ErrorSerializer

def _refused() -> Response:
    return Response(error_body("authentication_failed", "Invalid agent token."),
                    status=status.HTTP_401_UNAUTHORIZED,
                    headers={"WWW-Authenticate": 'Bearer realm="agent"'})


class HeartbeatView(APIView):
    """An agent's status, pushed every AGENT_HEARTBEAT_INTERVAL_SECONDS."""

    authentication_classes: list = []  # the agent token is checked below, per server
    permission_classes = [AllowAny]
    throttle_classes: list = []  # limited per server: one write per half interval

    @extend_schema(
        request=inline_serializer("Heartbeat", {
            "sequence": serializers.IntegerField(),
            "state": serializers.CharField(),
            "provisioningComplete": serializers.BooleanField(),
            "ready": serializers.BooleanField(),
            "crashCount": serializers.IntegerField(),
            "lastCrash": serializers.DictField(allow_null=True),
            "memoryUsedMb": serializers.IntegerField(), "memoryLimitMb": serializers.IntegerField(),
            "diskUsedMb": serializers.IntegerField(), "diskLimitMb": serializers.IntegerField(),
            "playersOnline": serializers.IntegerField(),
            "agentVersion": serializers.CharField(),
        }),
        responses={202: inline_serializer("HeartbeatReceived", {
            "written": serializers.BooleanField(), "reason": serializers.CharField(),
            "intervalSeconds": serializers.IntegerField()}),
            400: OpenApiResponse(ErrorSerializer, description="Not a heartbeat; nothing written"),
            401: OpenApiResponse(ErrorSerializer, description="Not this server's agent token")},
        auth=[])
    def post(self, request, server_id: str):
        try:
            instance_id = uuid.UUID(server_id)
        except ValueError:
            instance_id = None
        presented = bearer(request.META.get("HTTP_AUTHORIZATION"))
        version = heartbeat_version(instance_id=instance_id, presented=presented) \
            if instance_id is not None else None
        if version is None:
            return _refused()
        try:
            data = json.loads(request.body or b"null")
        except (ValueError, UnicodeDecodeError):
            return Response(error_body("parse_error", "The body is not JSON; nothing was "
                                                      "written."), status=400)
        try:
            received = heartbeat_receive(instance_id=instance_id, version=version, data=data)
        except InvalidHeartbeat as exc:
            return Response(error_body(exc.code, exc.message, exc.fields), status=400)
        return Response({"written": received.written, "reason": received.reason,
                         "intervalSeconds": settings.AGENT_HEARTBEAT_INTERVAL_SECONDS},
                        status=status.HTTP_202_ACCEPTED)
