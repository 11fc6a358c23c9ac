"""Portal API views: parse input, call a service or selector, shape the answer."""
from __future__ import annotations

import uuid

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.response import Response
from rest_framework.generics import GenericAPIView
from rest_framework.views import APIView

from .. import selectors
from ..catalog import catalog_document
from ..models import Operation, ServerSchedule
from ..services.accounts import quota_ensure, quota_usage
from ..services.backups import (
    backup_delete_request,
    backup_limits,
    backup_request,
    backup_restore_as_new,
    backup_restore_request,
    backup_usage,
)
from ..choices import BackupState, OperationKind
from ..operation_kinds import SPECS, OperationSpec
from ..services.actions import server_request
from ..services.audit import Actor
from ..services.edge import velocity_resync_request
from ..services.console import LOG_TAIL_DEFAULT, LOG_TAIL_MAX, server_console, server_logs
from ..services.ide_tokens import ide_token_issue, ide_tokens_revoked
from ..services.resizes import server_resize_request
from ..services.schedules import (
    profile_set_time_zone,
    schedule_create,
    schedule_delete,
    schedule_update,
    time_zone_of,
)
from ..services.servers import server_create
from .serializers import (
    BackupCreateInput,
    CatalogSerializer,
    ConsoleInput,
    ConsoleOutputSerializer,
    IdeRevokedSerializer,
    IdeTokenSerializer,
    BackupSerializer,
    ErrorSerializer,
    VelocityResyncSerializer,
    RestoreAsNewInput,
    RestoreInput,
    NodeSerializer,
    OperationSerializer,
    ProfileInput,
    ProfileSerializer,
    QuotaSerializer,
    ResizeInput,
    ScheduleInput,
    ScheduleSerializer,
    ServerCreateInput,
    ServerLogsSerializer,
    ServerSerializer,
)
from .auth import IdeProxyAuthentication, IsIdeProxy
from .throttling import (
    AnonBurstThrottle,
    ConsoleThrottle,
    CreateThrottle,
    IdeTokenThrottle,
    UserBurstThrottle,
)

_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid input"),
    401: OpenApiResponse(ErrorSerializer, description="Not authenticated"),
    404: OpenApiResponse(ErrorSerializer, description="Not found"),
    429: OpenApiResponse(ErrorSerializer, description="Throttled"),
}
_ERRORS[403] = OpenApiResponse(ErrorSerializer, description="Not allowed")
_CONFLICT = OpenApiResponse(ErrorSerializer, description="Not allowed in this state, or an "
                                                         "operation is in progress")
IDEMPOTENCY_PARAM = OpenApiParameter(
    "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    description="Retrying with the same key and body returns the same server; the same key "
                "with another body is refused with 422.",
)


IF_NONE_MATCH_PARAM = OpenApiParameter(
    "If-None-Match", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    description="The ETag of the answer you have: 304 with no body when it is still current.",
)
_NOT_MODIFIED = OpenApiResponse(None, description="Not modified: the ETag still matches")
#: Seconds a cache may keep the catalog without asking again.
CATALOG_MAX_AGE = 300


def _server_for(request, server_id):
    """The caller's server (any server for staff), else 404 as if it did not exist."""
    server = selectors.server_get_for(user=request.user, server_id=server_id)
    if server is None:
        raise NotFound("No such server.")
    return server


def _created(result) -> Response:
    """202 with the new server (and its provision), or the one an Idempotency-Key replays."""
    server = result.instance
    server._operation = result.operation
    headers = {"Location": f"/api/v1/servers/{server.id}"}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    return Response(ServerSerializer(server).data, status=status.HTTP_202_ACCEPTED,
                    headers=headers)


class ServerViewSet(viewsets.GenericViewSet):
    serializer_class = ServerSerializer
    lookup_value_regex = r"[0-9a-fA-F-]{32,36}"

    def get_queryset(self):
        return selectors.server_list_for(user=self.request.user)

    def get_throttles(self):
        if self.action == "create":
            return [UserBurstThrottle(), CreateThrottle()]
        return super().get_throttles()

    def _get_server(self, pk):
        try:
            server_id = uuid.UUID(str(pk))
        except ValueError:
            raise NotFound("No such server.") from None
        return _server_for(self.request, server_id)

    @extend_schema(parameters=[IF_NONE_MATCH_PARAM],
                   responses={200: ServerSerializer(many=True), 304: _NOT_MODIFIED, **_ERRORS})
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ServerSerializer(page, many=True).data)

    @extend_schema(parameters=[IF_NONE_MATCH_PARAM],
                   responses={200: ServerSerializer, 304: _NOT_MODIFIED, **_ERRORS})
    def retrieve(self, request, pk=None):
        return Response(ServerSerializer(self._get_server(pk)).data)

    @extend_schema(
        request=ServerCreateInput,
        parameters=[IDEMPOTENCY_PARAM],
        responses={
            202: ServerSerializer,
            409: OpenApiResponse(ErrorSerializer, description="Quota exceeded or name taken"),
            422: OpenApiResponse(ErrorSerializer, description="Idempotency-Key reused"),
            503: OpenApiResponse(ErrorSerializer, description="No capacity"),
            **_ERRORS,
        },
    )
    def create(self, request):
        body = ServerCreateInput(data=request.data)
        body.is_valid(raise_exception=True)
        result = server_create(
            owner=request.user,
            data=body.validated_data,
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
        return _created(result)

    # --- actions: each answers 202 with the operation that carries it out ------------------
    def _act(self, request, pk, kind, params=None):
        server = self._get_server(pk)
        op = server_request(instance_id=server.id, kind=kind,
                            actor=Actor.for_user(request.user), params=params)
        return Response(OperationSerializer(op).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/api/v1/operations/{op.id}"})

    @extend_schema(responses={202: OperationSerializer, 409: _CONFLICT, **_ERRORS},
                   description=SPECS[OperationKind.DELETE].description)
    def destroy(self, request, pk=None):
        return self._act(request, pk, OperationKind.DELETE)


#: Input of the kinds that take a body (the others take none).
_PARAMS = {OperationKind.RESTORE: RestoreInput}


def _operation_endpoint(spec: OperationSpec):
    """POST /servers/{id}/<spec.api_action>: request the operation, answer 202 with it."""
    body = _PARAMS.get(spec.kind)

    def endpoint(self, request, pk=None):
        params = None
        if body is not None:
            data = body(data=request.data or {})
            data.is_valid(raise_exception=True)
            params = data.validated_data
        return self._act(request, pk, spec.kind, params=params)

    endpoint.__name__ = spec.api_action
    endpoint.__doc__ = spec.description
    responses = {202: OperationSerializer, 409: _CONFLICT, **_ERRORS}
    extra = {}
    if spec.staff_only:
        responses[403] = _ERRORS[403]
        extra["permission_classes"] = [IsAdminUser]
    endpoint = action(detail=True, methods=["post"], url_path=spec.api_action.replace("_", "-"),
                      **extra)(endpoint)
    return extend_schema(request=body, responses=responses)(endpoint)


for _spec in SPECS.values():
    if _spec.api_action:
        setattr(ServerViewSet, _spec.api_action, _operation_endpoint(_spec))


def _backup_for(request, server_id, backup_id):
    """The backup, only if it is of this server and the server is the caller's (else 404:
    another account's backup ids do not exist for you)."""
    server = _server_for(request, server_id)
    backup = server.backups.filter(pk=backup_id).exclude(state=BackupState.DELETED).first()
    if backup is None:
        raise NotFound("No such backup.")
    return backup


class ServerBackupsView(GenericAPIView):
    """A server's world backups: list them, or take one now."""

    serializer_class = BackupSerializer

    @extend_schema(responses={200: BackupSerializer(many=True), **_ERRORS},
                   description="The server's backups, newest first (deleted ones are left "
                               "out).")
    def get(self, request, server_id):
        server = _server_for(request, server_id)
        page = self.paginate_queryset(server.backups.exclude(state=BackupState.DELETED)
                                      .order_by("-created_at"))
        return self.get_paginated_response(BackupSerializer(page, many=True).data)

    @extend_schema(request=BackupCreateInput,
                   responses={202: BackupSerializer,
                              409: OpenApiResponse(ErrorSerializer, description=(
                                  "Backup quota reached, the server is not running or "
                                  "stopped, or another operation is in progress")),
                              **_ERRORS},
                   description="Back up the server now (a running server keeps running). "
                               "Answers 202 with the backup; its `operation` carries it out.")
    def post(self, request, server_id):
        server = _server_for(request, server_id)
        body = BackupCreateInput(data=request.data or {})
        body.is_valid(raise_exception=True)
        backup, op = backup_request(instance_id=server.id, actor=Actor.for_user(request.user),
                                    notes=body.validated_data["notes"])
        return Response(BackupSerializer(backup).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/api/v1/servers/{server.id}/backups/{backup.id}"})


class ServerBackupDetailView(APIView):
    @extend_schema(responses={200: BackupSerializer, **_ERRORS})
    def get(self, request, server_id, backup_id):
        return Response(BackupSerializer(_backup_for(request, server_id, backup_id)).data)

    @extend_schema(responses={202: BackupSerializer,
                              409: OpenApiResponse(ErrorSerializer, description=(
                                  "The backup is still being made, or a restore reads it")),
                              **_ERRORS},
                   description="Delete the backup: its archive is removed from the backup "
                               "storage (202; the backup is `deleting` until it is gone).")
    def delete(self, request, server_id, backup_id):
        backup = _backup_for(request, server_id, backup_id)
        backup = backup_delete_request(backup_id=backup.id, actor=Actor.for_user(request.user))
        return Response(BackupSerializer(backup).data, status=status.HTTP_202_ACCEPTED)


class ServerBackupRestoreView(APIView):
    @extend_schema(request=None,
                   responses={202: OperationSerializer,
                              409: OpenApiResponse(ErrorSerializer, description=(
                                  "The backup is not ready (being made, failed, deleted), "
                                  "the server is not running or stopped, or another "
                                  "operation is in progress")),
                              **_ERRORS},
                   description="Restore the server from this backup, in place: a backup of "
                               "the current state is taken first, the archive is restored "
                               "into a new container, and the server is switched to it (IP, "
                               "ports and address stay; a running server runs again).")
    def post(self, request, server_id, backup_id):
        backup = _backup_for(request, server_id, backup_id)
        op = backup_restore_request(backup_id=backup.id, actor=Actor.for_user(request.user))
        return Response(OperationSerializer(op).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/api/v1/operations/{op.id}"})


class ServerBackupRestoreAsNewView(APIView):
    throttle_classes = [UserBurstThrottle, CreateThrottle]

    @extend_schema(request=RestoreAsNewInput, parameters=[IDEMPOTENCY_PARAM],
                   responses={202: ServerSerializer,
                              409: OpenApiResponse(ErrorSerializer, description=(
                                  "The backup is not ready, the quota is used up, or the name "
                                  "is taken")),
                              422: OpenApiResponse(ErrorSerializer,
                                                   description="Idempotency-Key reused"),
                              503: OpenApiResponse(ErrorSerializer, description="No capacity"),
                              **_ERRORS},
                   description="Make a new server from this backup (also the final backup of "
                               "a purged server): the same game and plan, its own name, "
                               "address, VMID, IP and ports; the world comes from the backup. "
                               "Counts against the server quota like any create.")
    def post(self, request, server_id, backup_id):
        backup = _backup_for(request, server_id, backup_id)
        body = RestoreAsNewInput(data=request.data or {})
        body.is_valid(raise_exception=True)
        result = backup_restore_as_new(backup_id=backup.id, owner=backup.owner,
                                       name=body.validated_data["name"],
                                       idempotency_key=request.headers.get("Idempotency-Key"))
        return _created(result)


class OperationDetailView(APIView):
    @extend_schema(responses={200: OperationSerializer, **_ERRORS})
    def get(self, request, pk):
        op = selectors.operation_get_for(user=request.user, operation_id=pk)
        if op is None:
            raise NotFound("No such operation.")
        return Response(OperationSerializer(op).data)


class QuotaView(APIView):
    @extend_schema(responses={200: QuotaSerializer, 401: _ERRORS[401]})
    def get(self, request):
        quota = quota_ensure(user=request.user)
        used = quota_usage(user_id=request.user.pk)
        limits = backup_limits(quota)
        backups = backup_usage(user_id=request.user.pk)
        return Response(QuotaSerializer({
            "max_backups": limits.count,
            "max_backup_gb": limits.gb,
            "used_backups": backups.count,
            "used_backup_bytes": backups.bytes,
            "max_servers": quota.max_servers,
            "max_memory_mb": quota.max_memory_mb,
            "used_servers": used.servers,
            "used_memory_mb": used.memory_mb,
            "available_servers": max(0, quota.max_servers - used.servers),
            "available_memory_mb": max(0, quota.max_memory_mb - used.memory_mb),
        }).data)


class CatalogView(APIView):
    """What can be ordered: plans, which plans each kind may use, game variants and their
    versions, dev runtimes and theirs. Public (a portal shows it before sign-in) and cacheable:
    an ETag, and If-None-Match answers 304."""

    permission_classes = [AllowAny]

    @extend_schema(parameters=[IF_NONE_MATCH_PARAM],
                   responses={200: CatalogSerializer, 304: _NOT_MODIFIED, 429: _ERRORS[429]})
    def get(self, request):
        response = Response(CatalogSerializer(catalog_document()).data)
        response["Cache-Control"] = f"public, max-age={CATALOG_MAX_AGE}"
        return response


class ServerResizeView(APIView):
    """Move the server to another plan: quota and node capacity are checked at once (409 /
    503), the server's sizes change now and the `resize` operation gives them to its container
    (a running game server restarts to take the new memory)."""

    @extend_schema(request=ResizeInput, responses={
        202: OperationSerializer,
        409: OpenApiResponse(ErrorSerializer, description="Quota exceeded, not running or "
                                                          "stopped, suspended, or an "
                                                          "operation is in progress"),
        503: OpenApiResponse(ErrorSerializer, description="No room on the server's node"),
        **_ERRORS})
    def post(self, request, server_id):
        server = _server_for(request, server_id)
        data = ResizeInput(data=request.data)
        data.is_valid(raise_exception=True)
        op = server_resize_request(instance_id=server.id, plan=data.validated_data["plan"],
                                   actor=Actor.for_user(request.user))
        return Response(OperationSerializer(op).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/api/v1/operations/{op.id}"})


class ServerIdeTokenView(APIView):
    """The owner of a dev container with code-server: a short-lived token for its browser IDE
    and the URL that carries it. Rate-limited (API_THROTTLE_IDE_TOKEN)."""

    throttle_classes = [UserBurstThrottle, IdeTokenThrottle]

    @extend_schema(request=None, responses={
        201: IdeTokenSerializer,
        403: OpenApiResponse(ErrorSerializer, description="Not the server's owner"),
        409: OpenApiResponse(ErrorSerializer, description="No IDE (not a dev container with "
                                                          "code-server), not running, suspended"),
        503: OpenApiResponse(ErrorSerializer, description="The IDE is not configured"),
        **_ERRORS})
    def post(self, request, server_id):
        issued = ide_token_issue(user=request.user, server=_server_for(request, server_id))
        response = Response(IdeTokenSerializer(issued).data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


LOGS_TAIL_PARAM = OpenApiParameter(
    "tail", OpenApiTypes.INT, OpenApiParameter.QUERY, required=False,
    description=f"How many of the newest lines (1 to {LOG_TAIL_MAX}, default "
                f"{LOG_TAIL_DEFAULT}).")
_AGENT_DOWN = OpenApiResponse(ErrorSerializer, description="The agent did not answer")


class ServerLogsView(APIView):
    """The newest lines of the server's log (the game's, or a dev container's agent's), through
    its agent; cleaned of control characters and redacted. Audited."""

    @extend_schema(parameters=[LOGS_TAIL_PARAM], responses={
        200: ServerLogsSerializer,
        409: OpenApiResponse(ErrorSerializer, description="Not running, or suspended"),
        503: _AGENT_DOWN, **_ERRORS})
    def get(self, request, server_id):
        server = _server_for(request, server_id)
        raw = request.query_params.get("tail", str(LOG_TAIL_DEFAULT))
        tail = int(raw) if raw.isdigit() and len(raw) <= 6 else -1
        lines = server_logs(actor=Actor.for_user(request.user), server=server, tail=tail)
        return Response(ServerLogsSerializer({"lines": lines}).data)


class ServerConsoleView(APIView):
    """One console command to a running game server, through its agent; the lines it printed.
    Audited, rate-limited (API_THROTTLE_CONSOLE)."""

    throttle_classes = [UserBurstThrottle, ConsoleThrottle]

    @extend_schema(request=ConsoleInput, responses={
        200: ConsoleOutputSerializer,
        409: OpenApiResponse(ErrorSerializer, description="Not a game server, not running, "
                                                          "or suspended"),
        503: _AGENT_DOWN, **_ERRORS})
    def post(self, request, server_id):
        server = _server_for(request, server_id)
        data = ConsoleInput(data=request.data)
        data.is_valid(raise_exception=True)
        output = server_console(actor=Actor.for_user(request.user), server=server,
                                command=data.validated_data["command"])
        return Response(ConsoleOutputSerializer({"output": output}).data)


class IdeRevokedView(APIView):
    """The IDE proxy only (IDE_PROXY_TOKEN): the revoked tokens it must refuse."""

    authentication_classes = [IdeProxyAuthentication]
    permission_classes = [IsIdeProxy]
    throttle_classes = [AnonBurstThrottle]  # per address: a proxy polls every few seconds

    @extend_schema(responses={200: IdeRevokedSerializer, 304: _NOT_MODIFIED,
                              401: _ERRORS[401], 403: _ERRORS[403]})
    def get(self, request):
        return Response(IdeRevokedSerializer({"revoked": ide_tokens_revoked()}).data)


class NodeListView(APIView):
    """Staff only: capacity and free pool values per node."""

    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: NodeSerializer(many=True), 401: _ERRORS[401],
                              403: OpenApiResponse(ErrorSerializer, description="Staff only")})
    def get(self, request):
        return Response(NodeSerializer(selectors.node_capacity_list(), many=True).data)


class VelocityResyncView(APIView):
    """Staff: register every running game server with Velocity again (after a proxy restart)."""

    permission_classes = [IsAdminUser]

    @extend_schema(request=None, responses={202: VelocityResyncSerializer, 401: _ERRORS[401],
                                            403: _ERRORS[403]})
    def post(self, request):
        return Response(VelocityResyncSerializer(velocity_resync_request()).data,
                        status=status.HTTP_202_ACCEPTED)


def _schedule_for(request, server_id, schedule_id):
    server = _server_for(request, server_id)
    schedule = ServerSchedule.objects.filter(pk=schedule_id, instance_id=server.id).first()
    if schedule is None:
        raise NotFound("No such schedule.")
    return server, schedule


def _schedule_answer(server, schedule, code=status.HTTP_200_OK) -> Response:
    context = {"time_zone": time_zone_of(server.owner_id)}
    return Response(ScheduleSerializer(schedule, context=context).data, status=code)


class ServerSchedulesView(APIView):
    """A server's schedules: at a local time in the owner's time zone, on some days of the
    week, the schedule asks for a restart, stop or start like the owner would (skipped while
    another operation is in progress; never run twice or late). A game server's restart or stop
    can be announced in game minutes before."""

    @extend_schema(responses={200: ScheduleSerializer(many=True), **_ERRORS})
    def get(self, request, server_id):
        server = _server_for(request, server_id)
        context = {"time_zone": time_zone_of(server.owner_id)}
        rows = ServerSchedule.objects.filter(instance_id=server.id)
        return Response(ScheduleSerializer(rows, many=True, context=context).data)

    @extend_schema(request=ScheduleInput, responses={
        201: ScheduleSerializer,
        409: OpenApiResponse(ErrorSerializer, description="The server is deleted"),
        **_ERRORS})
    def post(self, request, server_id):
        server = _server_for(request, server_id)
        data = ScheduleInput(data=request.data)
        data.is_valid(raise_exception=True)
        schedule = schedule_create(actor=Actor.for_user(request.user), server=server,
                                   **data.service_values())
        response = _schedule_answer(server, schedule, status.HTTP_201_CREATED)
        response["Location"] = f"/api/v1/servers/{server.id}/schedules/{schedule.id}"
        return response


class ServerScheduleDetailView(APIView):
    @extend_schema(responses={200: ScheduleSerializer, **_ERRORS})
    def get(self, request, server_id, schedule_id):
        return _schedule_answer(*_schedule_for(request, server_id, schedule_id))

    @extend_schema(request=ScheduleInput(partial=True),
                   responses={200: ScheduleSerializer, **_ERRORS})
    def patch(self, request, server_id, schedule_id):
        server, schedule = _schedule_for(request, server_id, schedule_id)
        data = ScheduleInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        schedule = schedule_update(actor=Actor.for_user(request.user), schedule_id=schedule.id,
                                   **data.service_values())
        return _schedule_answer(server, schedule)

    @extend_schema(request=None, responses={204: None, **_ERRORS})
    def delete(self, request, server_id, schedule_id):
        _server, schedule = _schedule_for(request, server_id, schedule_id)
        schedule_delete(actor=Actor.for_user(request.user), schedule_id=schedule.id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProfileView(APIView):
    """The caller's account preferences: the time zone its schedules run in."""

    @extend_schema(responses={200: ProfileSerializer, 401: _ERRORS[401]})
    def get(self, request):
        return Response(ProfileSerializer({"time_zone": time_zone_of(request.user.pk)}).data)

    @extend_schema(request=ProfileInput, responses={200: ProfileSerializer, **_ERRORS})
    def patch(self, request):
        data = ProfileInput(data=request.data)
        data.is_valid(raise_exception=True)
        profile = profile_set_time_zone(actor=Actor.for_user(request.user), user=request.user,
                                        time_zone=data.validated_data["time_zone"])
        return Response(ProfileSerializer({"time_zone": profile.time_zone}).data)
