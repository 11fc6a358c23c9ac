"""Operator views of the reconciler: its records, the dashboard, and what it adds to the server
admin (the open-findings column and filter, the repair events on a server's page, the dry-run
"reconcile now" preview). The server admin is the lifecycle app's; this app extends it and
registers the extended one, so imports point one way (reconciler -> lifecycle)."""
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, OuterRef, Subquery
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html, format_html_join

from core.admin import ReadOnlyAdmin, badge, pretty_json
from core.redaction import redact, redact_text
from lifecycle.admin import ContainerInstanceAdmin, admin_actor, has_model_permission
from lifecycle.models import ContainerInstance
from lifecycle.services.audit import audit_record

from .doctor import doctor_report
from .lease import KEY, _redis
from .models import Breaker, ControllerLease, ControllerRun, Finding, RepairEvent
from .services import breaker_reset, preview_servers

# --- the server admin, with what the reconciler knows about each server ----------------------
class HasFindingsFilter(admin.SimpleListFilter):
    title = "open findings"
    parameter_name = "findings"

    def lookups(self, request, model_admin):
        return (("yes", "Has open findings"), ("no", "No open findings"))

    def queryset(self, request, queryset):
        has = Exists(Finding.objects.filter(instance=OuterRef("pk"), open=True))
        if self.value() == "yes":
            return queryset.filter(has)
        if self.value() == "no":
            return queryset.filter(~has)
        return queryset


class ReconciledServerAdmin(ContainerInstanceAdmin):
    list_display = (*ContainerInstanceAdmin.list_display[:-2], "findings_count",
                    *ContainerInstanceAdmin.list_display[-2:])
    list_filter = (*ContainerInstanceAdmin.list_filter, HasFindingsFilter)
    readonly_fields = (*ContainerInstanceAdmin.readonly_fields, "repairs_table")
    fieldsets = (*ContainerInstanceAdmin.fieldsets[:-2],
                 ("Reconciler", {"fields": ("repairs_table",)}),
                 *ContainerInstanceAdmin.fieldsets[-2:])
    actions = (*ContainerInstanceAdmin.actions, "reconcile_preview")

    def get_queryset(self, request):
        findings = (Finding.objects.filter(instance=OuterRef("pk"), open=True)
                    .values("instance").annotate(n=Count("id")).values("n"))
        return super().get_queryset(request).annotate(open_findings=Subquery(findings[:1]))

    @admin.display(description="findings")
    def findings_count(self, obj):
        n = getattr(obj, "open_findings", None) or 0
        return format_html('<b style="color:#c62828">{}</b>', n) if n else "0"

    @admin.display(description="repair events")
    def repairs_table(self, obj):
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

    # Read-only (a dry run): whoever may see the servers may preview them.
    @admin.action(description="Reconcile now (dry-run preview)", permissions=["view"])
    def reconcile_preview(self, request, queryset):
        ids = [str(i.id) for i in queryset]
        result = preview_servers(instance_ids=ids)
        for inst in queryset:
            audit_record(actor=admin_actor(request), instance_id=inst.id,
                         action="admin:reconcile_preview")
        context = {**self.admin_site.each_context(request), "title": "Reconciler preview",
                   "sources": result[0]["sources"], "rows": result[1:],
                   "servers": ", ".join(i.slug for i in queryset), "opts": self.model._meta}
        return TemplateResponse(request, "admin/reconciler/reconcile_preview.html", context)


admin.site.unregister(ContainerInstance)
admin.site.register(ContainerInstance, ReconciledServerAdmin)


# --- the reconciler's own records ----------------------------------------------------------------


@admin.register(ControllerRun)
class ControllerRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "epoch", "outcome", "dry_run", "started_at", "finished_at")
    list_filter = ("outcome", "dry_run")

    def get_urls(self):
        extra = [
            path("dashboard/", self.admin_site.admin_view(self.dashboard),
                 name="reconciler_dashboard"),
            path("dashboard/breaker/<str:action>/reset/",
                 self.admin_site.admin_view(self.reset_breaker), name="reconciler_breaker_reset"),
            path("doctor/", self.admin_site.admin_view(self.doctor), name="reconciler_doctor"),
        ]
        return extra + super().get_urls()

    def dashboard(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        runs = []
        for run in ControllerRun.objects.order_by("-started_at")[:25]:
            duration = (run.finished_at - run.started_at).total_seconds() if run.finished_at \
                else None
            counts = run.counts or {}
            runs.append({"pk": run.pk, "epoch": run.epoch, "started_at": run.started_at,
                         "duration": f"{duration:.2f} s" if duration is not None else "running",
                         "findings": sum((counts.get("findings") or {}).values()),
                         "repairs": (counts.get("decisions") or {}).get("queued", 0),
                         "outcome": run.outcome, "dry_run": run.dry_run})
        try:
            holder = _redis().get(KEY)
            lease_state = f"held by {holder.decode()}" if holder else "free"
        except Exception:
            lease_state = "Redis unreachable"
        context = {**self.admin_site.each_context(request), "title": "Reconciler dashboard",
                   "runs": runs, "lease": ControllerLease.objects.filter(name="reconciler").first(),
                   "lease_state": lease_state,
                   "levels": ", ".join(map(str, settings.RECONCILER_ENABLED_LEVELS)),
                   "dry_run": settings.RECONCILER_DRY_RUN,
                   "breakers": [_redacted_breaker(b) for b in Breaker.objects.order_by("action")],
                   "may_reset": may_reset_breakers(request),
                   "findings": [_redacted_finding(f) for f in
                                Finding.objects.filter(open=True).order_by("-last_seen")[:200]],
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/reconciler/dashboard.html", context)

    def doctor(self, request):
        """The same report as `manage.py doctor` (read-only)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        report = doctor_report()
        groups: dict[str, list] = {}
        for problem in report["problems"]:
            groups.setdefault(problem["check"], []).append(problem)
        context = {**self.admin_site.each_context(request), "title": "Doctor",
                   "report": report, "groups": groups, "opts": self.model._meta}
        return TemplateResponse(request, "admin/reconciler/doctor.html", context)

    def reset_breaker(self, request, action):
        if request.method != "POST":
            return redirect("admin:reconciler_dashboard")
        if not may_reset_breakers(request):
            raise PermissionDenied  # 403: a view-only operator sees breakers, never resets them
        breaker_reset(action=action)
        audit_record(actor=admin_actor(request), action="breaker:reset",
                     data={"action": action})
        messages.success(request, f"Breaker for {action} reset.")
        return redirect("admin:reconciler_dashboard")


def _json(value):
    return pretty_json(value)


@admin.register(Finding)
class FindingAdmin(ReadOnlyAdmin):
    list_display = ("key", "finding_type", "level", "action", "open", "last_seen", "seen_count")
    list_filter = ("open", "finding_type", "level")
    search_fields = ("key", "subject")
    exclude = ("details",)
    readonly_fields = ("details_json",)

    @admin.display(description="details")
    def details_json(self, obj):
        return _json(obj.details)


@admin.register(RepairEvent)
class RepairEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "action", "subject", "state", "level", "dry_run", "epoch",
                    "reason_text", "created_at")
    list_filter = ("state", "action", "dry_run")
    exclude = ("before", "after", "error", "reason")
    readonly_fields = ("reason_text", "before_json", "after_json", "error_text")

    @admin.display(description="reason")
    def reason_text(self, obj):
        return redact_text(obj.reason)

    @admin.display(description="before")
    def before_json(self, obj):
        return _json(obj.before)

    @admin.display(description="after (observed)")
    def after_json(self, obj):
        return _json(obj.after)

    @admin.display(description="error")
    def error_text(self, obj):
        return redact_text(obj.error)


def may_reset_breakers(request) -> bool:
    """Resetting changes the breaker: it needs the change permission on breakers (the breaker
    admin itself is read-only on screen, so its has_change_permission is False for everyone)."""
    return has_model_permission(request, Breaker, "change")


@admin.register(Breaker)
class BreakerAdmin(ReadOnlyAdmin):
    list_display = ("action", "state", "consecutive_failures", "opened_at", "failure_text")
    exclude = ("last_failure",)
    readonly_fields = ("failure_text",)

    @admin.display(description="last failure")
    def failure_text(self, obj):
        return redact_text(obj.last_failure)
    actions = ["reset"]

    def has_reset_permission(self, request) -> bool:
        return may_reset_breakers(request)

    @admin.action(description="Reset (close) the breaker", permissions=["reset"])
    def reset(self, request, queryset):
        for breaker in queryset:
            breaker_reset(action=breaker.action)
            audit_record(actor=admin_actor(request), action="breaker:reset",
                         data={"action": breaker.action})
        messages.info(request, "Breakers reset.")


@admin.register(ControllerLease)
class ControllerLeaseAdmin(ReadOnlyAdmin):
    list_display = ("name", "epoch", "holder", "acquired_at", "last_write_at")


def _redacted_breaker(breaker: Breaker) -> Breaker:
    breaker.last_failure = redact_text(breaker.last_failure)
    return breaker


def _redacted_finding(finding: Finding) -> Finding:
    finding.details = redact(finding.details)
    return finding
