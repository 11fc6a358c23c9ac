"""API input and output shapes. Input serializers check types; the service checks the catalog."""
from __future__ import annotations

from datetime import time as dt_time

from rest_framework import serializers

from ..catalog import DEV_RUNTIMES, PLANS
from ..choices import (
    DesiredState,
    InstanceStatus,
    Kind,
    OperationKind,
    OperationState,
    ScheduleAction,
    Variant,
)
from ..models import Backup, ContainerInstance, Operation, ServerSchedule
from ..services.schedules import (
    ANNOUNCE_MAX_MINUTES,
    DAY_NAMES,
    weekdays_from_names,
    weekdays_to_names,
)
from ..selectors import server_address, server_ide_url


class StrictInputSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo is an error, not a silently ignored value."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        errors = {name: ["Unknown field."] for name in sorted(set(data) - set(self.fields))}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            errors.update(exc.detail if isinstance(exc.detail, dict) else {})
            raise serializers.ValidationError(errors) from exc
        if errors:
            raise serializers.ValidationError(errors)
        return value


class StrictCharField(serializers.CharField):
    """A string field that refuses numbers and booleans instead of quietly converting them."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A whole number as JSON sends it: "5" and true are refused, not quietly converted."""

    default_error_messages = {"invalid": "A whole number."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class ServerCreateInput(StrictInputSerializer):
    name = StrictCharField(
        max_length=64, help_text="DNS label: 3-32 lowercase letters, digits, hyphens."
    )
    kind = serializers.ChoiceField(choices=Kind.choices)
    plan = serializers.ChoiceField(choices=list(PLANS))
    variant = serializers.ChoiceField(choices=Variant.choices, required=False, allow_blank=True,
                                      help_text="Game servers only.")
    version = StrictCharField(max_length=32, required=False, allow_blank=True,
                                    help_text="Game servers only, e.g. 1.21.1.")
    runtime = serializers.ChoiceField(choices=list(DEV_RUNTIMES), required=False,
                                      allow_blank=True, help_text="Dev containers only.")
    runtime_version = StrictCharField(max_length=16, required=False, allow_blank=True,
                                            help_text="Dev containers only.")
    enable_code_server = serializers.BooleanField(required=False, default=False,
                                                  help_text="Dev containers only.")


class OperationBriefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=OperationKind.choices)
    state = serializers.ChoiceField(choices=OperationState.choices)


class OperationSerializer(serializers.ModelSerializer):
    server = serializers.UUIDField(source="instance_id", read_only=True)

    class Meta:
        model = Operation
        fields = ("id", "server", "kind", "state", "step", "attempt", "error", "created_at",
                  "started_at", "finished_at")
        read_only_fields = fields


class ServerSerializer(serializers.ModelSerializer):
    node = serializers.SerializerMethodField()
    address = serializers.SerializerMethodField(
        help_text="What a player types to join (game servers; through Velocity).")
    ide_url = serializers.SerializerMethodField(
        help_text="Where the browser IDE is served (dev containers with code-server, once "
                  "placed); open it with a token from POST …/ide-token.")
    status = serializers.ChoiceField(choices=InstanceStatus.choices, read_only=True)
    desired_state = serializers.ChoiceField(choices=DesiredState.choices, read_only=True)
    ports = serializers.DictField(child=serializers.IntegerField(), read_only=True)
    operation = serializers.SerializerMethodField()

    class Meta:
        model = ContainerInstance
        fields = (
            "id", "name", "slug", "kind", "variant", "version", "plan", "memory_mb", "cores",
            "disk_gb", "runtime", "runtime_version", "enable_code_server", "status",
            "desired_state", "suspended", "node", "vmid", "ip", "ports", "address", "ide_url",
            "last_error",
            "created_at", "updated_at", "deleted_at", "purge_after", "operation",
        )
        read_only_fields = fields

    def get_node(self, obj) -> str | None:
        return obj.node.name if obj.node_id else None

    def get_address(self, obj) -> str | None:
        return server_address(obj)

    def get_ide_url(self, obj) -> str | None:
        return server_ide_url(obj)

    @staticmethod
    def _last_operation(obj):
        op = getattr(obj, "_operation", None)
        if op is not None:
            return {"id": op.id, "kind": op.kind, "state": op.state}
        if getattr(obj, "last_op_id", None):
            return {"id": obj.last_op_id, "kind": obj.last_op_kind, "state": obj.last_op_state}
        return None

    def get_operation(self, obj) -> OperationBriefSerializer(allow_null=True):  # type: ignore[valid-type]
        data = self._last_operation(obj)
        return OperationBriefSerializer(data).data if data else None


class QuotaSerializer(serializers.Serializer):
    max_servers = serializers.IntegerField()
    max_memory_mb = serializers.IntegerField()
    used_servers = serializers.IntegerField()
    used_memory_mb = serializers.IntegerField()
    available_servers = serializers.IntegerField()
    available_memory_mb = serializers.IntegerField()
    max_backups = serializers.IntegerField()
    max_backup_gb = serializers.IntegerField()
    used_backups = serializers.IntegerField(help_text="backups kept or being made")
    used_backup_bytes = serializers.IntegerField()


class BackupSerializer(serializers.ModelSerializer):
    server = serializers.UUIDField(source="instance_id", read_only=True)
    operation = serializers.UUIDField(source="operation_id", read_only=True, allow_null=True)
    error = serializers.SerializerMethodField()

    class Meta:
        model = Backup
        fields = ("id", "server", "kind", "state", "notes", "size_bytes", "flushed",
                  "created_at", "finished_at", "expires_at", "operation", "error")
        read_only_fields = fields

    def get_error(self, obj) -> str | None:
        """Why it failed, in one line (the operation log has the rest)."""
        return str((obj.error or {}).get("message", ""))[:300] or None if obj.error else None


class RestoreAsNewInput(StrictInputSerializer):
    name = StrictCharField(max_length=64,
                           help_text="The new server's name (DNS label: 3-32 lowercase letters, "
                                     "digits, hyphens).")


class BackupCreateInput(StrictInputSerializer):
    notes = serializers.CharField(max_length=200, required=False, allow_blank=True, default="",
                                  help_text="Shown in the list of backups.")


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class NodeSerializer(serializers.Serializer):
    name = serializers.CharField()
    enabled = serializers.BooleanField()
    memory_mb = serializers.IntegerField()
    allocated_memory_mb = serializers.IntegerField()
    free_ips = serializers.IntegerField()
    free_ports = serializers.IntegerField()
    servers = serializers.IntegerField()


class RestoreInput(StrictInputSerializer):
    target = serializers.ChoiceField(choices=[(DesiredState.RUNNING, "Running"),
                                              (DesiredState.STOPPED, "Stopped")],
                                     required=False, default=DesiredState.RUNNING,
                                     help_text="The state the server ends in.")


class VelocityResyncSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    servers = serializers.IntegerField(help_text="running game servers the resync covers")


class CatalogPlanBackupsSerializer(serializers.Serializer):
    interval_hours = serializers.IntegerField(help_text="scheduled backups this often")
    keep_last = serializers.IntegerField()
    keep_daily = serializers.IntegerField()
    keep_weekly = serializers.IntegerField()


class CatalogPlanSerializer(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()
    memory_mb = serializers.IntegerField()
    cores = serializers.IntegerField()
    disk_gb = serializers.IntegerField()
    backups = CatalogPlanBackupsSerializer()


class CatalogKindSerializer(serializers.Serializer):
    name = serializers.ChoiceField(choices=Kind.choices)
    label = serializers.CharField()
    plans = serializers.ListField(child=serializers.CharField(),
                                  help_text="the plans a new server of this kind may use")


class CatalogVersionedSerializer(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()
    versions = serializers.ListField(child=serializers.CharField())


class CatalogSerializer(serializers.Serializer):
    plans = CatalogPlanSerializer(many=True)
    kinds = CatalogKindSerializer(many=True)
    variants = CatalogVersionedSerializer(many=True, help_text="game server variants")
    runtimes = CatalogVersionedSerializer(many=True, help_text="dev container runtimes")


class IdeTokenSerializer(serializers.Serializer):
    url = serializers.CharField(help_text="the IDE with the token: open it in a browser (once; "
                                          "the IDE proxy keeps its own session)")
    token = serializers.CharField(help_text="the token alone (a JWT for the IDE proxy)")
    expires_at = serializers.DateTimeField(help_text="open it before this")
    jti = serializers.UUIDField(help_text="the token's id (what the operator revokes)")


class IdeRevokedEntrySerializer(serializers.Serializer):
    jti = serializers.UUIDField()
    expires_at = serializers.DateTimeField()


class IdeRevokedSerializer(serializers.Serializer):
    revoked = IdeRevokedEntrySerializer(many=True)


class ServerLogsSerializer(serializers.Serializer):
    lines = serializers.ListField(child=serializers.CharField(allow_blank=True),
                                 help_text="the newest lines, oldest first (cleaned, redacted)")


class ConsoleInput(StrictInputSerializer):
    command = StrictCharField(max_length=1024, trim_whitespace=False,
                              help_text="One console command (at most 256 characters, one "
                                        "line), e.g. 'say hello'. stop, restart, save-off, "
                                        "save-on and reload are refused: use the operations.")


class ConsoleOutputSerializer(serializers.Serializer):
    output = serializers.ListField(child=serializers.CharField(allow_blank=True),
                                  help_text="what the game printed for it")


class ResizeInput(StrictInputSerializer):
    plan = StrictCharField(max_length=32, help_text="The plan to move to (GET /catalog: the "
                                                    "plans of the server's kind). The disk "
                                                    "only grows.")


_DAYS_HELP = "Days of the week it runs on (default: every day)."


class DaysField(serializers.ListField):
    """Day names, with one flat message for a name that is not a day."""

    def to_internal_value(self, data):
        unknown = [d for d in data if d not in DAY_NAMES] if isinstance(data, list) else []
        if unknown:
            raise serializers.ValidationError(
                f"Not a day: {str(unknown[0])[:16]!r}; use {', '.join(DAY_NAMES)}.")
        return super().to_internal_value(data)


class ScheduleInput(StrictInputSerializer):
    """A schedule as the portal sends it (POST: `action` and `time` required; PATCH: any)."""

    action = serializers.ChoiceField(choices=ScheduleAction.choices,
                                     help_text="The operation asked for at that time.")
    time = serializers.RegexField(r"^([01]\d|2[0-3]):[0-5]\d$", max_length=5,
                                  help_text="Local time HH:MM in the owner's time zone "
                                            "(GET /me/profile).")
    days = DaysField(child=serializers.ChoiceField(choices=list(DAY_NAMES)),
                     min_length=1, max_length=7, required=False, help_text=_DAYS_HELP)
    announce_minutes = StrictIntegerField(
        min_value=0, max_value=ANNOUNCE_MAX_MINUTES, required=False,
        help_text="Game servers, restart or stop: tell the players in game this many minutes "
                  "before (0: no announcement).")
    enabled = serializers.BooleanField(required=False)

    def service_values(self) -> dict:
        """The validated fields, named as the schedule service takes them."""
        data = dict(self.validated_data)
        out = {}
        if "action" in data:
            out["action"] = data["action"]
        if "time" in data:
            hours, minutes = data["time"].split(":")
            out["time_of_day"] = dt_time(int(hours), int(minutes))
        if "days" in data:
            out["weekdays"] = weekdays_from_names(data["days"])
        for name in ("announce_minutes", "enabled"):
            if name in data:
                out[name] = data[name]
        return out


class ScheduleSerializer(serializers.ModelSerializer):
    server = serializers.UUIDField(source="instance_id", read_only=True)
    time = serializers.SerializerMethodField()
    days = serializers.SerializerMethodField()
    time_zone = serializers.SerializerMethodField()
    last_operation = serializers.UUIDField(source="last_operation_id", read_only=True,
                                           allow_null=True)

    class Meta:
        model = ServerSchedule
        fields = ("id", "server", "action", "time", "days", "time_zone", "announce_minutes",
                  "enabled", "next_run_at", "last_run_at", "last_result", "last_message",
                  "last_operation", "created_at")
        read_only_fields = fields

    def get_time(self, obj) -> str:
        return obj.time_of_day.strftime("%H:%M")

    def get_days(self, obj) -> list[str]:
        return weekdays_to_names(obj.weekdays)

    def get_time_zone(self, obj) -> str:
        """The owner's time zone, which `time` is in."""
        return self.context["time_zone"]


class ProfileSerializer(serializers.Serializer):
    time_zone = serializers.CharField(
        help_text="IANA time zone name; the account's schedules run at local times in it.")


class ProfileInput(StrictInputSerializer):
    time_zone = StrictCharField(max_length=64, help_text="IANA time zone name, e.g. "
                                                         "'Europe/Berlin'.")
