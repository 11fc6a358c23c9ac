"""Operator views of the outbox: what was sent, what waits, channels that stopped. Sending
again and re-enabling need the change permission on the model (view-only staff only look)."""
from django.contrib import admin, messages

from .models import AlertState, ChannelState, Notification
from .services import channel_enable, enqueue_send


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("id", "channel", "kind", "title", "state", "attempts", "created_at", "sent_at")
    list_filter = ("channel", "state", "kind")
    search_fields = ("title", "alert_key")
    readonly_fields = [f.name for f in Notification._meta.fields]
    actions = ["resend"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Send again (as a new notification)", permissions=["change"])
    def resend(self, request, queryset):
        from .services import notify

        for row in queryset:
            notify(row.channel, row.title, row.body, fields=row.fields, payload=row.payload,
                   subject=row.subject)
            # This app may not import the lifecycle audit trail; Django's admin log records
            # who did it (and shows in the object's history).
            self.log_change(request, row, "resent")
        messages.info(request, f"{queryset.count()} notifications queued again.")


@admin.register(ChannelState)
class ChannelStateAdmin(admin.ModelAdmin):
    list_display = ("channel", "disabled", "disabled_reason", "consecutive_failures",
                    "next_attempt_at", "last_error")
    readonly_fields = [f.name for f in ChannelState._meta.fields]
    actions = ["enable"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Re-enable (after fixing the webhook URL) and deliver what waits",
                  permissions=["change"])
    def enable(self, request, queryset):
        for state in queryset:
            channel_enable(state.channel)
            enqueue_send(state.channel)
            self.log_change(request, state, "re-enabled")
        messages.info(request, "Channels re-enabled.")


@admin.register(AlertState)
class AlertStateAdmin(admin.ModelAdmin):
    list_display = ("alert_key", "channel", "firing", "last_fired_at", "last_sent_at",
                    "suppressed", "resolved_at")
    list_filter = ("firing", "channel")
    search_fields = ("alert_key",)
    readonly_fields = [f.name for f in AlertState._meta.fields]
