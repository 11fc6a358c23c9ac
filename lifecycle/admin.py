"""Operator panel registrations (a first version; the full panel is its own issue)."""
from django.contrib import admin

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


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "enabled", "allocated_memory_mb", "memory_mb", "cores", "subnet")
    readonly_fields = ("allocated_memory_mb",)


@admin.register(ContainerInstance)
class ContainerInstanceAdmin(ReadOnlyAdmin):
    list_display = ("slug", "kind", "variant", "status", "desired_state", "node", "vmid", "ip",
                    "owner", "created_at")
    list_filter = ("status", "kind", "variant", "node", "suspended", "maintenance_lock")
    search_fields = ("name", "slug", "vmid", "ip", "owner__username", "id")
    list_select_related = ("node", "owner")
    exclude = ("request_fingerprint",)


@admin.register(Operation)
class OperationAdmin(ReadOnlyAdmin):
    list_display = ("id", "instance", "kind", "state", "step", "attempt", "created_at")
    list_filter = ("state", "kind")
    list_select_related = ("instance",)


@admin.register(AllocationPool)
class AllocationPoolAdmin(ReadOnlyAdmin):
    list_display = ("name", "kind", "node")


@admin.register(Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    list_display = ("pool", "display", "state", "role", "instance", "quarantine_until")
    list_filter = ("pool", "state")
    list_select_related = ("pool", "instance")


@admin.register(AccountQuota)
class AccountQuotaAdmin(admin.ModelAdmin):
    list_display = ("user", "max_servers", "max_memory_mb")


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    exclude = ("key_hash",)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor_label", "action", "instance", "from_status", "to_status")
    list_filter = ("actor_kind", "action")
