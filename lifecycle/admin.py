"""The operator panel for servers: see everything, steer with one click.

Every action goes through the same services as the API (and so lands in the audit trail with
the admin's name); authoritative data is read-only here; secret-looking values are masked on
display (`pretty_json`), on top of being redacted when stored.
"""
from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Exists, OuterRef, Q, Subquery
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join

from notifications.models import Notification
from notifications.redaction import redact

from .choices import InstanceStatus, OperationKind
from .errors import LifecycleError
from .models import (
    AccountQuota,
    Allocation,
    AllocationPool,
    ApiToken,
    AuditEvent,
    ContainerInstance,
    Node,
    Operation,
)
from .services.actions import server_request, server_set_flags
from .services.audit import Actor, audit_record

S = InstanceStatus
COLOURS = {
    S.RUNNING: "#2e7d32", S.STOPPED: "#616161", S.FAILED: "#c62828", S.MISSING: "#c62828",
    S.PENDING: "#6d4c41", S.DELETED: "#455a64", S.PURGED: "#212121",
    "running": "#2e7d32", "stopped": "#616161", "deleted": "#455a64", "purged": "#212121",
    "succeeded": "#2e7d32", "failed": "#c62828", "queued": "#6d4c41", "stale": "#ef6c00",
    "cancelled": "#616161",
}
TRANSIENT_COLOUR = "#1565c0"


def badge(text: str) -> str:
    colour = COLOURS.get(text, TRANSIENT_COLOUR)
    return format_html('<span class="zlh-badge" data-state="{}" style="background:{};color:#fff;'
                       'padding:2px 8px;border-radius:10px;font-weight:600">{}</span>',
                       text, colour, text)


def pretty_json(value: Any) -> str:
    if value in (None, {}, []):
        return "-"
    return format_html("<pre style='white-space:pre-wrap;margin:0'>{}</pre>",
                       json.dumps(redact(value), indent=2, default=str))


def admin_actor(request) -> Actor:
    return Actor.for_user(request.user, admin=True)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class OperationInline(ReadOnlyInline):
    model = Operation
    fields = ("kind", "state_badge", "step", "attempt", "created_at", "finished_at", "error_text")
    readonly_fields = fields
    ordering = ("-created_at",)

    @admin.display(description="state")
    def state_badge(self, obj):
        return badge(obj.state)

    @admin.display(description="error")
    def error_text(self, obj):
        return (redact(obj.error) or {}).get("message", "-") if obj.error else "-"


class AllocationInline(ReadOnlyInline):
    model = Allocation
    fields = ("pool", "display", "role", "state", "claimed_at", "quarantine_until")
    readonly_fields = fields


class AuditInline(ReadOnlyInline):
    model = AuditEvent
    fields = ("at", "actor_label", "action", "from_status", "to_status", "data_json")
    readonly_fields = fields
    ordering = ("-at",)

    @admin.display(description="data")
    def data_json(self, obj):
        return pretty_json(obj.data)


class HasFindingsFilter(admin.SimpleListFilter):
    title = "open findings"
    parameter_name = "findings"

    def lookups(self, request, model_admin):
        return (("yes", "Has open findings"), ("no", "No open findings"))

    def queryset(self, request, queryset):
        from reconciler.models import Finding

        has = Exists(Finding.objects.filter(instance=OuterRef("pk"), open=True))
        if self.value() == "yes":
            return queryset.filter(has)
        if self.value() == "no":
            return queryset.filter(~has)
        return queryset


@admin.register(ContainerInstance)
class ContainerInstanceAdmin(admin.ModelAdmin):
    list_display = ("slug", "status_badge", "desired_badge", "kind", "variant", "node", "vmid",
                    "ip", "ports_text", "owner", "last_operation", "findings_count", "flags",
                    "created_at")
    list_filter = ("status", "kind", "variant", "node", "suspended", "maintenance_lock",
                   HasFindingsFilter)
    search_fields = ("name", "slug", "=vmid", "ip", "owner__username", "=id")
    list_select_related = ("node", "owner")
    list_per_page = 100
    show_full_result_count = False
    ordering = ("-created_at",)
    inlines = (OperationInline, AllocationInline, AuditInline)
    readonly_fields = ("id", "name", "slug", "owner", "kind", "variant", "version", "plan",
                       "memory_mb", "cores", "disk_gb", "runtime", "runtime_version",
                       "enable_code_server", "node", "vmid", "ip", "ports_text", "status_badge",
                       "desired_badge", "status_changed_at", "suspended", "maintenance_lock",
                       "deleted_at", "purge_after", "last_error_json", "config_json",
                       "repairs_table", "notifications_table", "created_at", "updated_at")
    fieldsets = (
        ("Server", {"fields": ("id", "name", "slug", "owner", "kind", "variant", "version",
                               "plan", "memory_mb", "cores", "disk_gb", "runtime",
                               "runtime_version", "enable_code_server")}),
        ("State", {"fields": ("status_badge", "desired_badge", "status_changed_at", "suspended",
                              "maintenance_lock", "deleted_at", "purge_after",
                              "last_error_json")}),
        ("Placement", {"fields": ("node", "vmid", "ip", "ports_text", "config_json")}),
        ("Reconciler", {"fields": ("repairs_table",)}),
        ("Notifications", {"fields": ("notifications_table",)}),
        ("Times", {"fields": ("created_at", "updated_at")}),
    )
    actions = ("retry_provisioning", "start", "stop", "restart", "soft_delete", "restore",
               "purge_now", "toggle_maintenance_lock", "suspend", "unsuspend", "republish_edge",
               "reconcile_preview")

    def get_queryset(self, request):
        from reconciler.models import Finding

        last = Operation.objects.filter(instance=OuterRef("pk")).order_by("-created_at")
        findings = (Finding.objects.filter(instance=OuterRef("pk"), open=True)
                    .values("instance").annotate(n=Count("id")).values("n"))
        return super().get_queryset(request).annotate(
            last_op_kind=Subquery(last.values("kind")[:1]),
            last_op_state=Subquery(last.values("state")[:1]),
            open_findings=Subquery(findings[:1]),
        )

    def has_add_permission(self, request):
        return False  # servers are made through the API (quota, idempotency, placement)

    def has_delete_permission(self, request, obj=None):
        return False  # soft delete and purge are actions, never a row delete

    # --- columns ---------------------------------------------------------------------------
    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(obj.status)

    @admin.display(description="desired", ordering="desired_state")
    def desired_badge(self, obj):
        return badge(obj.desired_state)

    @admin.display(description="ports")
    def ports_text(self, obj):
        return ", ".join(f"{k} {v}" for k, v in (obj.ports or {}).items()) or "-"

    @admin.display(description="last operation")
    def last_operation(self, obj):
        kind = getattr(obj, "last_op_kind", None)
        if not kind:
            return "-"
        return format_html("{} {}", kind, badge(obj.last_op_state))

    @admin.display(description="findings")
    def findings_count(self, obj):
        n = getattr(obj, "open_findings", None) or 0
        return format_html('<b style="color:#c62828">{}</b>', n) if n else "0"

    @admin.display(description="flags")
    def flags(self, obj):
        marks = [m for m, on in (("suspended", obj.suspended),
                                 ("maintenance", obj.maintenance_lock)) if on]
        return ", ".join(marks) or "-"

    @admin.display(description="last error")
    def last_error_json(self, obj):
        return pretty_json(obj.last_error)

    @admin.display(description="config")
    def config_json(self, obj):
        return pretty_json(obj.config)

    @admin.display(description="repair events")
    def repairs_table(self, obj):
        from reconciler.models import Finding, RepairEvent

        findings = Finding.objects.filter(instance=obj, open=True)
        repairs = RepairEvent.objects.filter(instance=obj).order_by("-created_at")[:20]
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.action, badge(r.state),
              r.reason or "-", "dry run" if r.dry_run else "live") for r in repairs))
        open_list = ", ".join(f.finding_type for f in findings) or "none"
        return format_html("<p>Open findings: {}</p><table><tr><th>at</th><th>action</th>"
                           "<th>state</th><th>reason</th><th>mode</th></tr>{}</table>",
                           open_list, rows)

    @admin.display(description="notifications")
    def notifications_table(self, obj):
        rows = Notification.objects.filter(subject=str(obj.id)).order_by("-id")[:20]
        body = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((n.created_at.strftime("%Y-%m-%d %H:%M:%S"), n.channel, n.title, n.state)
             for n in rows))
        return format_html("<table><tr><th>at</th><th>channel</th><th>title</th>"
                           "<th>delivery</th></tr>{}</table>", body)

    # --- actions ---------------------------------------------------------------------------
    def _request(self, request, queryset, kind: str, params: dict | None = None) -> None:
        done, refused = [], []
        for inst in queryset:
            try:
                op = server_request(instance_id=inst.id, kind=kind, actor=admin_actor(request),
                                    params=params)
                done.append(f"{inst.slug} ({kind} operation {op.id})")
            except LifecycleError as exc:
                refused.append(f"{inst.slug}: {exc.message}")
        if done:
            messages.success(request, "Requested: " + "; ".join(done))
        if refused:
            messages.error(request, "Refused: " + "; ".join(refused))

    @admin.action(description="Retry provisioning")
    def retry_provisioning(self, request, queryset):
        self._request(request, queryset, OperationKind.PROVISION)

    @admin.action(description="Start")
    def start(self, request, queryset):
        self._request(request, queryset, OperationKind.START)

    @admin.action(description="Stop (graceful)")
    def stop(self, request, queryset):
        self._request(request, queryset, OperationKind.STOP)

    @admin.action(description="Restart")
    def restart(self, request, queryset):
        self._request(request, queryset, OperationKind.RESTART)

    @admin.action(description="Soft delete (restorable for 24 h)")
    def soft_delete(self, request, queryset):
        self._request(request, queryset, OperationKind.DELETE)

    @admin.action(description="Restore")
    def restore(self, request, queryset):
        self._request(request, queryset, OperationKind.RESTORE)

    @admin.action(description="Purge now (destroys the container)…")
    def purge_now(self, request, queryset):
        if request.POST.get("confirm") == "yes":
            self._request(request, queryset, OperationKind.PURGE)
            return None
        victims = []
        for inst in queryset.select_related("node"):
            allocations = ", ".join(f"{a.role} {a.display}" for a in
                                    Allocation.objects.filter(instance=inst)
                                    .select_related("pool"))
            victims.append({"inst": inst, "allocations": allocations or "-",
                            "ready": inst.status == S.DELETED})
        context = {**self.admin_site.each_context(request), "title": "Purge servers now?",
                   "victims": victims, "queryset": queryset, "opts": self.model._meta,
                   "action_name": "purge_now",
                   "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME}
        return TemplateResponse(request, "admin/lifecycle/purge_confirmation.html", context)

    def _flags(self, request, queryset, description: str, **flags) -> None:
        for inst in queryset:
            values = {k: (not getattr(inst, k)) if v is None else v for k, v in flags.items()}
            server_set_flags(instance_id=inst.id, actor=admin_actor(request), **values)
        messages.success(request, f"{description}: {', '.join(i.slug for i in queryset)}")

    @admin.action(description="Toggle maintenance lock")
    def toggle_maintenance_lock(self, request, queryset):
        self._flags(request, queryset, "Maintenance lock toggled", maintenance_lock=None)

    @admin.action(description="Suspend")
    def suspend(self, request, queryset):
        self._flags(request, queryset, "Suspended", suspended=True)

    @admin.action(description="Unsuspend")
    def unsuspend(self, request, queryset):
        self._flags(request, queryset, "Unsuspended", suspended=False)

    @admin.action(description="Republish edge (DNS + Velocity), with post-check")
    def republish_edge(self, request, queryset):
        from .services.edge import server_republish_edge

        for inst in queryset:
            result = server_republish_edge(instance_id=inst.id, actor=admin_actor(request))
            level = messages.SUCCESS if result["ok"] else messages.ERROR
            detail = "; ".join(result.get("actions", []) + result.get("problems", [])) or \
                "already right"
            self.message_user(request, f"{inst.slug}: {'live' if result['ok'] else 'NOT live'} "
                                       f"— {detail}", level)

    @admin.action(description="Reconcile now (dry-run preview)")
    def reconcile_preview(self, request, queryset):
        from reconciler.services import preview_servers

        ids = [str(i.id) for i in queryset]
        result = preview_servers(instance_ids=ids)
        for inst in queryset:
            audit_record(actor=admin_actor(request), instance_id=inst.id,
                         action="admin:reconcile_preview")
        context = {**self.admin_site.each_context(request), "title": "Reconciler preview",
                   "sources": result[0]["sources"], "rows": result[1:],
                   "servers": ", ".join(i.slug for i in queryset), "opts": self.model._meta}
        return TemplateResponse(request, "admin/lifecycle/reconcile_preview.html", context)


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ("id", "instance", "kind", "state_badge", "step", "attempt", "requested_by",
                    "created_at", "finished_at")
    list_filter = ("state", "kind")
    search_fields = ("=id", "instance__slug", "requested_by")
    list_select_related = ("instance",)
    readonly_fields = ("id", "instance", "kind", "state", "step", "attempt", "worker",
                       "lease_expires_at", "requested_by", "params_json", "error_json",
                       "log_text", "created_at", "started_at", "finished_at", "enqueued_at",
                       "next_attempt_at")
    exclude = ("params", "error", "log", "active_slot")

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj):
        return badge(obj.state)

    @admin.display(description="params")
    def params_json(self, obj):
        return pretty_json(obj.params)

    @admin.display(description="error")
    def error_json(self, obj):
        return pretty_json(obj.error)

    @admin.display(description="log")
    def log_text(self, obj):
        return pretty_json([f"{e.get('at')} [{e.get('attempt')}] {e.get('msg')}"
                            for e in obj.log or []])


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "enabled", "allocated_memory_mb", "memory_mb", "cores", "subnet",
                    "servers")
    readonly_fields = ("allocated_memory_mb", "subnet", "gateway", "port_range_start",
                       "port_range_end")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n=Count("instances", filter=~Q(instances__status=S.PURGED)))

    @admin.display(description="servers")
    def servers(self, obj):
        return obj.n

    def has_add_permission(self, request):
        return False  # `manage.py node add` fills the node's IP and port pools too


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AllocationPool)
class AllocationPoolAdmin(ReadOnlyAdmin):
    list_display = ("name", "kind", "node")


@admin.register(Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    list_display = ("pool", "display", "state", "role", "instance", "quarantine_until")
    list_filter = ("pool", "state")
    list_select_related = ("pool", "instance")
    search_fields = ("=value", "instance__slug")


@admin.register(AccountQuota)
class AccountQuotaAdmin(admin.ModelAdmin):
    list_display = ("user", "max_servers", "max_memory_mb")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit_record(actor=admin_actor(request), action="quota:set",
                     data={"user": obj.user.get_username(), "max_servers": obj.max_servers,
                           "max_memory_mb": obj.max_memory_mb})


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    exclude = ("key_hash",)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor_label", "actor_kind", "action", "instance", "from_status",
                    "to_status")
    list_filter = ("actor_kind", "action")
    search_fields = ("actor_label", "action", "instance__slug")
    list_select_related = ("instance",)
    exclude = ("data",)
    readonly_fields = ("data_json",)

    @admin.display(description="data")
    def data_json(self, obj):
        return pretty_json(obj.data)
