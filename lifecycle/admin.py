"""The operator panel for servers: see everything, steer with one click.

Every action goes through the same services as the API (and so lands in the audit trail with
the admin's name); authoritative data is read-only here; secret-looking values are masked on
display (`pretty_json`), on top of being redacted when stored.

Every action that changes something needs the model's change permission (Django's
`@admin.action(permissions=[...])`: without it the action is neither offered nor accepted), so a
staff user with view permissions only can look at everything and steer nothing.
"""
from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import Count, OuterRef, Q, Subquery
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from core.admin import ReadOnlyAdmin, ReadOnlyInline, badge, pretty_json
from core.redaction import redact
from notifications.models import Notification

from .catalog import PLANS
from .choices import InstanceStatus
from .errors import LifecycleError
from .models import (
    AccountProfile,
    AccountQuota,
    Adoption,
    Allocation,
    AllocationPool,
    ApiToken,
    AuditEvent,
    Backup,
    ContainerInstance,
    IdeToken,
    Node,
    NodeTaskSlot,
    Operation,
    ServerSchedule,
)
from .operation_kinds import SPECS, OperationSpec
from .services.accounts import api_token_revoke
from .services.actions import server_request, server_set_flags
from .services.audit import Actor, audit_record
from .services.backups import backup_delete_request, backup_request, backup_restore_request
from .services.edge import server_republish_edge
from .services.ide_tokens import ide_tokens_revoke
from .services.resizes import server_resize_request
from .services.schedules import (
    DAY_NAMES,
    profile_set_time_zone,
    schedule_create,
    schedule_delete,
    schedule_problems,
    schedule_update,
    time_zone_errors,
    weekdays_from_names,
    weekdays_to_names,
)

S = InstanceStatus


def days_text(mask: int) -> str:
    names = weekdays_to_names(mask)
    return "every day" if len(names) == 7 else ", ".join(names)


def admin_actor(request) -> Actor:
    return Actor.for_user(request.user, admin=True)


def has_model_permission(request, model, action: str) -> bool:
    """Whether the user holds `<app>.<action>_<model>` (say `reconciler.change_breaker`), for
    admins whose own has_change_permission is False because their rows are read-only on screen
    but which still offer a state-changing action."""
    opts = model._meta
    return request.user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")


def act_on_each(request, items, act, name, *, done_label: str = "Requested") -> None:
    """`act(item)` for each item through a service; one message for what was done (`act`
    says what, in words) and one for what the service refused (named by `name(item)`)."""
    done, refused = [], []
    for item in items:
        try:
            done.append(act(item))
        except LifecycleError as exc:
            refused.append(f"{name(item)}: {exc.message}")
    if done:
        messages.success(request, f"{done_label}: " + "; ".join(done))
    if refused:
        messages.error(request, "Refused: " + "; ".join(refused))


def _operation_action(spec: OperationSpec):
    """The admin action that requests an operation of `spec.kind` for the selected servers
    (offered to, and accepted from, users with the change permission on servers only)."""
    def action(modeladmin, request, queryset):
        return modeladmin.request_operation(request, queryset, spec)

    action.__name__ = spec.admin_action
    return admin.action(description=spec.admin_label, permissions=["change"])(action)


#: One admin action per operation kind, from the kinds' table.
OPERATION_ACTIONS = tuple(_operation_action(spec) for spec in SPECS.values()
                          if spec.admin_action)


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


class ScheduleInline(ReadOnlyInline):
    model = ServerSchedule
    fields = ("action", "local_time", "days_text", "announce_minutes", "enabled",
              "next_run_at", "last_result", "last_run_at")
    readonly_fields = fields
    show_change_link = True

    @admin.display(description="time (owner's zone)")
    def local_time(self, obj):
        return obj.time_of_day.strftime("%H:%M")

    @admin.display(description="days")
    def days_text(self, obj):
        return days_text(obj.weekdays)


class AuditInline(ReadOnlyInline):
    model = AuditEvent
    fields = ("at", "actor_label", "action", "from_status", "to_status", "data_json")
    readonly_fields = fields
    ordering = ("-at",)

    @admin.display(description="data")
    def data_json(self, obj):
        return pretty_json(obj.data)


@admin.register(ContainerInstance)
class ContainerInstanceAdmin(admin.ModelAdmin):
    list_display = ("slug", "status_badge", "desired_badge", "kind", "variant", "node", "vmid",
                    "ip", "ports_text", "owner", "last_operation", "flags", "created_at")
    list_filter = ("status", "kind", "variant", "node", "suspended", "maintenance_lock")
    search_fields = ("name", "slug", "=vmid", "ip", "owner__username", "=id")
    list_select_related = ("node", "owner")
    list_per_page = 100
    show_full_result_count = False
    ordering = ("-created_at",)
    inlines = (OperationInline, ScheduleInline, AllocationInline, AuditInline)
    readonly_fields = ("id", "name", "slug", "owner", "kind", "variant", "version", "plan",
                       "memory_mb", "cores", "disk_gb", "runtime", "runtime_version",
                       "enable_code_server", "node", "vmid", "ip", "ports_text", "status_badge",
                       "desired_badge", "status_changed_at", "suspended", "maintenance_lock",
                       "deleted_at", "purge_after", "last_error_json",
                       "notifications_table", "created_at", "updated_at")
    fieldsets = (
        ("Server", {"fields": ("id", "name", "slug", "owner", "kind", "variant", "version",
                               "plan", "memory_mb", "cores", "disk_gb", "runtime",
                               "runtime_version", "enable_code_server")}),
        ("State", {"fields": ("status_badge", "desired_badge", "status_changed_at", "suspended",
                              "maintenance_lock", "deleted_at", "purge_after",
                              "last_error_json")}),
        ("Placement", {"fields": ("node", "vmid", "ip", "ports_text")}),
        ("Notifications", {"fields": ("notifications_table",)}),
        ("Times", {"fields": ("created_at", "updated_at")}),
    )
    actions = (*OPERATION_ACTIONS, "change_plan", "back_up_now", "toggle_maintenance_lock",
               "suspend", "unsuspend", "republish_edge", "revoke_ide_tokens")

    def get_queryset(self, request):
        last = Operation.objects.filter(instance=OuterRef("pk")).order_by("-created_at")
        return super().get_queryset(request).annotate(
            last_op_kind=Subquery(last.values("kind")[:1]),
            last_op_state=Subquery(last.values("state")[:1]),
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

    @admin.display(description="flags")
    def flags(self, obj):
        marks = [m for m, on in (("suspended", obj.suspended),
                                 ("maintenance", obj.maintenance_lock)) if on]
        return ", ".join(marks) or "-"

    @admin.display(description="last error")
    def last_error_json(self, obj):
        return pretty_json(obj.last_error)

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
    def request_operation(self, request, queryset, spec: OperationSpec):
        """Request `spec.kind` for each selected server through the same service as the API;
        kinds marked `confirm` show what would be destroyed first."""
        if spec.confirm and request.POST.get("confirm") != "yes":
            return self._confirmation(request, queryset, spec)
        def act(inst):
            op = server_request(instance_id=inst.id, kind=spec.kind, actor=admin_actor(request))
            return f"{inst.slug} ({spec.kind} operation {op.id})"

        act_on_each(request, queryset, act, lambda inst: inst.slug)
        return None

    def _confirmation(self, request, queryset, spec: OperationSpec):
        victims = []
        for inst in queryset.select_related("node"):
            allocations = ", ".join(f"{a.role} {a.display}" for a in
                                    Allocation.objects.filter(instance=inst)
                                    .select_related("pool"))
            victims.append({"inst": inst, "allocations": allocations or "-",
                            "ready": inst.status in spec.requestable_from})
        context = {**self.admin_site.each_context(request), "title": f"{spec.kind.capitalize()} servers now?",
                   "victims": victims, "queryset": queryset, "opts": self.model._meta,
                   "action_name": spec.admin_action,
                   "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME}
        return TemplateResponse(request, "admin/lifecycle/purge_confirmation.html", context)

    def _flags(self, request, queryset, description: str, **flags) -> None:
        for inst in queryset:
            values = {k: (not getattr(inst, k)) if v is None else v for k, v in flags.items()}
            server_set_flags(instance_id=inst.id, actor=admin_actor(request), **values)
        messages.success(request, f"{description}: {', '.join(i.slug for i in queryset)}")

    @admin.action(description="Change plan…", permissions=["change"])
    def change_plan(self, request, queryset):
        """A resize through the same service as the API; the plan is asked for first."""
        plan = request.POST.get("plan", "")
        if not plan:
            context = {**self.admin_site.each_context(request), "title": "Change plan",
                       "queryset": queryset, "opts": self.model._meta,
                       "plans": list(PLANS.items()), "action_name": "change_plan",
                       "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME}
            return TemplateResponse(request, "admin/lifecycle/change_plan.html", context)

        def act(inst):
            op = server_resize_request(instance_id=inst.id, plan=plan,
                                       actor=admin_actor(request))
            return f"{inst.slug} to {plan} (resize operation {op.id})"

        act_on_each(request, queryset, act, lambda inst: inst.slug)
        return None

    @admin.action(description="Back up now (counts against the owner's backup quota)",
                  permissions=["change"])
    def back_up_now(self, request, queryset):
        def act(inst):
            backup, op = backup_request(instance_id=inst.id, actor=admin_actor(request),
                                        notes=f"by {request.user.get_username()}")
            return f"{inst.slug} (backup {backup.id}, operation {op.id})"

        act_on_each(request, queryset, act, lambda inst: inst.slug)

    @admin.action(description="Revoke every IDE token of these servers", permissions=["change"])
    def revoke_ide_tokens(self, request, queryset):
        count = sum(ide_tokens_revoke(actor=admin_actor(request), server=server)
                    for server in queryset)
        messages.success(request, f"Revoked {count} unexpired IDE token(s).")

    @admin.action(description="Toggle maintenance lock", permissions=["change"])
    def toggle_maintenance_lock(self, request, queryset):
        self._flags(request, queryset, "Maintenance lock toggled", maintenance_lock=None)

    @admin.action(description="Suspend", permissions=["change"])
    def suspend(self, request, queryset):
        self._flags(request, queryset, "Suspended", suspended=True)

    @admin.action(description="Unsuspend", permissions=["change"])
    def unsuspend(self, request, queryset):
        self._flags(request, queryset, "Unsuspended", suspended=False)

    @admin.action(description="Republish edge (DNS + Velocity), with post-check",
                  permissions=["change"])
    def republish_edge(self, request, queryset):
        for inst in queryset:
            result = server_republish_edge(instance_id=inst.id, actor=admin_actor(request))
            level = messages.SUCCESS if result["ok"] else messages.ERROR
            detail = "; ".join(result.get("actions", []) + result.get("problems", [])) or \
                "already right"
            self.message_user(request, f"{inst.slug}: {'live' if result['ok'] else 'NOT live'} "
                                       f"— {detail}", level)


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
                       "next_attempt_at", "waiting_for", "wait_deadline")
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


@admin.register(AllocationPool)
class AllocationPoolAdmin(ReadOnlyAdmin):
    list_display = ("name", "kind", "node")
    list_select_related = ("node",)  # nullable: not joined unless asked


@admin.register(Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    list_display = ("pool", "display", "state", "role", "instance", "quarantine_until")
    list_filter = ("pool", "state")
    list_select_related = ("pool", "instance")
    search_fields = ("=value", "instance__slug")


@admin.register(NodeTaskSlot)
class NodeTaskSlotAdmin(ReadOnlyAdmin):
    """The places for Proxmox tasks per node and kind (services/node_slots.py): who holds
    which, until when. Read-only: a place is given back by its holder or by its deadline."""

    list_display = ("node", "kind", "slot", "holder", "acquired_at", "expires_at")
    list_filter = ("node", "kind")
    search_fields = ("holder",)


@admin.register(Adoption)
class AdoptionAdmin(ReadOnlyAdmin):
    """The journal of `manage.py adopt`: how far each adoption got, and what a release puts
    back. Adopting and releasing are done with the command (see docs/operations.md)."""

    list_display = ("vmid", "instance", "node", "state", "source", "created_at", "released_at")
    list_filter = ("state", "source", "node")
    list_select_related = ("instance",)
    search_fields = ("=vmid", "instance__slug")


@admin.register(AccountQuota)
class AccountQuotaAdmin(admin.ModelAdmin):
    list_display = ("user", "max_servers", "max_memory_mb", "max_backups", "max_backup_gb")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit_record(actor=admin_actor(request), action="quota:set",
                     data={"user": obj.user.get_username(), "max_servers": obj.max_servers,
                           "max_memory_mb": obj.max_memory_mb,
                           "max_backups": obj.max_backups, "max_backup_gb": obj.max_backup_gb})


@admin.register(AccountProfile)
class AccountProfileAdmin(admin.ModelAdmin):
    """An account's time zone; changing it moves the account's schedules with it."""

    list_display = ("user", "time_zone", "updated_at")
    search_fields = ("user__username",)
    raw_id_fields = ("user",)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)

        class ProfileForm(form):
            def clean_time_zone(self):
                value = self.cleaned_data["time_zone"]
                problems = time_zone_errors(value)
                if problems:
                    raise forms.ValidationError(problems)
                return value

        return ProfileForm

    def get_readonly_fields(self, request, obj=None):
        return ("user",) if obj else ()

    def save_model(self, request, obj, form, change):
        profile = profile_set_time_zone(actor=admin_actor(request), user=obj.user,
                                        time_zone=obj.time_zone)
        obj.pk = profile.pk


class ScheduleForm(forms.ModelForm):
    """The schedule with its days as check boxes; checked by the same rules as the API."""

    days = forms.MultipleChoiceField(choices=[(d, d) for d in DAY_NAMES],
                                     widget=forms.CheckboxSelectMultiple,
                                     initial=list(DAY_NAMES))

    class Meta:
        model = ServerSchedule
        fields = ("instance", "action", "time_of_day", "announce_minutes", "enabled")
        help_texts = {"time_of_day": "HH:MM, local time in the owner's time zone."}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["days"].initial = weekdays_to_names(self.instance.weekdays)

    def clean(self):
        data = super().clean()
        server = data.get("instance") or getattr(self.instance, "instance", None)
        if server is None or self.errors:
            return data
        when = data.get("time_of_day")
        if when is not None and (when.second or when.microsecond):
            self.add_error("time_of_day", "Hours and minutes only.")
            return data
        values = {"action": data.get("action"), "time_of_day": when,
                  "weekdays": weekdays_from_names(data.get("days") or []),
                  "announce_minutes": data.get("announce_minutes"),
                  "enabled": data.get("enabled")}
        names = {"time": "time_of_day", "days": "days"}
        for field, problems in schedule_problems(server, values).items():
            self.add_error(names.get(field, field), problems)
        if ServerSchedule.objects.filter(instance=server, action=values["action"],
                                         time_of_day=when).exclude(pk=self.instance.pk).exists():
            self.add_error("time_of_day", f"This server already has a {values['action']} at "
                                          "that time; change that schedule's days instead.")
        data["weekdays"] = values["weekdays"]
        return data


@admin.register(ServerSchedule)
class ServerScheduleAdmin(admin.ModelAdmin):
    """Owners' schedules; added and changed through the same service as the API (so its next
    time is placed, the change audited) and removable here."""

    form = ScheduleForm
    list_display = ("instance", "action", "local_time", "days_col", "owner_zone",
                    "announce_minutes", "enabled", "next_run_at", "result_badge",
                    "last_run_at")
    list_filter = ("action", "enabled", "last_result")
    search_fields = ("instance__slug", "=instance__id", "instance__owner__username")
    list_select_related = ("instance", "instance__owner__profile")
    raw_id_fields = ("instance",)
    readonly_fields = ("next_run_at", "announced_for", "last_run_at", "last_result",
                       "last_message", "last_operation", "created_at", "updated_at")
    ordering = ("next_run_at",)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields + (("instance",) if obj else ())

    @admin.display(description="time", ordering="time_of_day")
    def local_time(self, obj):
        return obj.time_of_day.strftime("%H:%M")

    @admin.display(description="days")
    def days_col(self, obj):
        return days_text(obj.weekdays)

    @admin.display(description="owner's time zone")
    def owner_zone(self, obj):
        profile = getattr(obj.instance.owner, "profile", None)
        return profile.time_zone if profile else f"{settings.ACCOUNT_DEFAULT_TIME_ZONE} (default)"

    @admin.display(description="last", ordering="last_result")
    def result_badge(self, obj):
        return badge(obj.last_result) if obj.last_result else "-"

    def save_model(self, request, obj, form, change):
        values = {name: getattr(obj, name) for name in
                  ("action", "time_of_day", "announce_minutes", "enabled")}
        values["weekdays"] = form.cleaned_data["weekdays"]
        if change:
            saved = schedule_update(actor=admin_actor(request), schedule_id=obj.pk, **values)
        else:
            saved = schedule_create(actor=admin_actor(request), server=obj.instance, **values)
        obj.pk = saved.pk
        obj.next_run_at = saved.next_run_at

    def delete_model(self, request, obj):
        schedule_delete(actor=admin_actor(request), schedule_id=obj.pk)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            schedule_delete(actor=admin_actor(request), schedule_id=obj.pk)


@admin.register(Backup)
class BackupAdmin(ReadOnlyAdmin):
    """World backups: listed with their archive; removing one goes through the same service
    as the API (the archive is removed from the backup storage, the row stays as a record)."""
    list_display = ("created_at", "instance", "owner", "kind", "state_badge", "size_text",
                    "flushed", "verify_state", "node", "volid", "expires_at")
    list_filter = ("state", "kind", "verify_state", "node", "flushed")
    search_fields = ("=id", "instance__slug", "owner__username", "volid")
    list_select_related = ("instance", "owner")
    show_full_result_count = False
    actions = ("restore_in_place", "delete_archives")
    exclude = ("agent_secrets",)

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj):
        return badge(obj.state)

    @admin.display(description="size", ordering="size_bytes")
    def size_text(self, obj):
        return "-" if obj.size_bytes is None else f"{obj.size_bytes / 1024**2:.0f} MiB"

    def has_restore_in_place_permission(self, request) -> bool:
        return has_model_permission(request, ContainerInstance, "change")

    @admin.action(description="Restore into its server (a backup of the current state is "
                              "taken first)", permissions=["restore_in_place"])
    def restore_in_place(self, request, queryset):
        def act(backup):
            op = backup_restore_request(backup_id=backup.id, actor=admin_actor(request))
            return f"{backup.instance.slug} from {backup.id} (operation {op.id})"

        act_on_each(request, queryset.select_related("instance"), act, lambda b: b.id)

    def has_delete_archives_permission(self, request) -> bool:
        return has_model_permission(request, Backup, "change")

    @admin.action(description="Delete the selected backups (removes their archives)",
                  permissions=["delete_archives"])
    def delete_archives(self, request, queryset):
        def act(backup):
            backup_delete_request(backup_id=backup.id, actor=admin_actor(request))
            return str(backup.id)

        act_on_each(request, queryset, act, lambda b: b.id, done_label="Deleting")


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    """Tokens are issued by `manage.py apitoken` (the raw token is shown once, there); here they
    are listed by their prefix (the hash is never shown) and revoked."""
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("prefix", "name", "user__username")
    exclude = ("key_hash",)
    actions = ("revoke",)

    def has_revoke_permission(self, request) -> bool:
        # The rows are read-only on screen (has_change_permission is False for everyone), but
        # revoking changes them: it needs the change permission on API tokens.
        return has_model_permission(request, ApiToken, "change")

    @admin.action(description="Revoke (the token stops working at once)",
                  permissions=["revoke"])
    def revoke(self, request, queryset):
        revoked, already = [], []
        for token in queryset.select_related("user"):
            if token.revoked_at is not None:
                already.append(token.prefix)
                continue
            api_token_revoke(token=token, actor=admin_actor(request))
            revoked.append(f"{token.prefix}… ({token.user})")
        if revoked:
            messages.success(request, "Revoked: " + ", ".join(revoked))
        if already:
            messages.warning(request, "Already revoked: " + ", ".join(already))


@admin.register(IdeToken)
class IdeTokenAdmin(ReadOnlyAdmin):
    """Browser-IDE tokens issued to dev containers' owners (POST …/ide-token): the token itself
    is never stored, only its id (jti) and times. Revoking one makes the IDE proxy refuse it, and
    end the session it opened, from its next read of GET /api/v1/ide/revoked."""

    list_display = ("id", "instance", "user", "created_at", "expires_at", "revoked_at",
                    "revoked_by")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    list_select_related = ("instance", "user")
    search_fields = ("=id", "instance__slug", "user__username")
    actions = ("revoke",)

    def has_revoke_permission(self, request) -> bool:
        return has_model_permission(request, IdeToken, "change")

    @admin.action(description="Revoke (the IDE proxy refuses them within seconds)",
                  permissions=["revoke"])
    def revoke(self, request, queryset):
        count = ide_tokens_revoke(actor=admin_actor(request), tokens=queryset)
        messages.success(request, f"Revoked {count} unexpired token(s); expired and already "
                                  "revoked ones are left as they were.")


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


class GuardedPeriodicTaskAdmin(PeriodicTaskAdmin):
    """django-celery-beat's periodic-task admin, whose enable/disable/toggle/run actions check
    no permission: each of them changes (or runs) the upkeep schedule, so each needs the change
    permission on periodic tasks, like every other action of the panel."""

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not self.has_change_permission(request):
            for name in ("enable_tasks", "disable_tasks", "toggle_tasks", "run_tasks"):
                actions.pop(name, None)
        return actions


admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, GuardedPeriodicTaskAdmin)
