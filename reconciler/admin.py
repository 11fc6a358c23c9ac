"""Operator views of the reconciler (a first version; the dashboard is its own issue)."""
from django.contrib import admin, messages
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path

from notifications.redaction import redact, redact_text

from .models import Breaker, ControllerLease, ControllerRun, Finding, RepairEvent
from .services import breaker_reset


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ControllerRun)
class ControllerRunAdmin(ReadOnly):
    list_display = ("id", "epoch", "outcome", "dry_run", "started_at", "finished_at")
    list_filter = ("outcome", "dry_run")

    def get_urls(self):
        extra = [
            path("dashboard/", self.admin_site.admin_view(self.dashboard),
                 name="reconciler_dashboard"),
            path("dashboard/breaker/<str:action>/reset/",
                 self.admin_site.admin_view(self.reset_breaker), name="reconciler_breaker_reset"),
        ]
        return extra + super().get_urls()

    def dashboard(self, request):
        from django.conf import settings

        from .lease import KEY, _redis

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
                   "findings": [_redacted_finding(f) for f in
                                Finding.objects.filter(open=True).order_by("-last_seen")[:200]],
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/reconciler/dashboard.html", context)

    def reset_breaker(self, request, action):
        from lifecycle.services.audit import Actor, audit_record

        if request.method != "POST":
            return redirect("admin:reconciler_dashboard")
        breaker_reset(action=action)
        audit_record(actor=Actor.for_user(request.user, admin=True), action="breaker:reset",
                     data={"action": action})
        messages.success(request, f"Breaker for {action} reset.")
        return redirect("admin:reconciler_dashboard")


def _json(value):
    from lifecycle.admin import pretty_json

    return pretty_json(value)


@admin.register(Finding)
class FindingAdmin(ReadOnly):
    list_display = ("key", "finding_type", "level", "action", "open", "last_seen", "seen_count")
    list_filter = ("open", "finding_type", "level")
    search_fields = ("key", "subject")
    exclude = ("details",)
    readonly_fields = ("details_json",)

    @admin.display(description="details")
    def details_json(self, obj):
        return _json(obj.details)


@admin.register(RepairEvent)
class RepairEventAdmin(ReadOnly):
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


@admin.register(Breaker)
class BreakerAdmin(ReadOnly):
    list_display = ("action", "state", "consecutive_failures", "opened_at", "failure_text")
    exclude = ("last_failure",)
    readonly_fields = ("failure_text",)

    @admin.display(description="last failure")
    def failure_text(self, obj):
        return redact_text(obj.last_failure)
    actions = ["reset"]

    @admin.action(description="Reset (close) the breaker")
    def reset(self, request, queryset):
        from lifecycle.services.audit import Actor, audit_record

        for breaker in queryset:
            breaker_reset(action=breaker.action)
            audit_record(actor=Actor.for_user(request.user, admin=True), action="breaker:reset",
                         data={"action": breaker.action})
        messages.info(request, "Breakers reset.")


@admin.register(ControllerLease)
class ControllerLeaseAdmin(ReadOnly):
    list_display = ("name", "epoch", "holder", "acquired_at", "last_write_at")


def _redacted_breaker(breaker: Breaker) -> Breaker:
    breaker.last_failure = redact_text(breaker.last_failure)
    return breaker


def _redacted_finding(finding: Finding) -> Finding:
    finding.details = redact(finding.details)
    return finding
