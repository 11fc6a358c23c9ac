"""Operator views of the reconciler (a first version; the dashboard is its own issue)."""
from django.contrib import admin, messages

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


@admin.register(Finding)
class FindingAdmin(ReadOnly):
    list_display = ("key", "finding_type", "level", "action", "open", "last_seen", "seen_count")
    list_filter = ("open", "finding_type", "level")
    search_fields = ("key", "subject")


@admin.register(RepairEvent)
class RepairEventAdmin(ReadOnly):
    list_display = ("id", "action", "subject", "state", "level", "dry_run", "epoch", "reason",
                    "created_at")
    list_filter = ("state", "action", "dry_run")


@admin.register(Breaker)
class BreakerAdmin(ReadOnly):
    list_display = ("action", "state", "consecutive_failures", "opened_at", "last_failure")
    actions = ["reset"]

    @admin.action(description="Reset (close) the breaker")
    def reset(self, request, queryset):
        for breaker in queryset:
            breaker_reset(action=breaker.action)
        messages.info(request, "Breakers reset.")


@admin.register(ControllerLease)
class ControllerLeaseAdmin(ReadOnly):
    list_display = ("name", "epoch", "holder", "acquired_at", "last_write_at")
