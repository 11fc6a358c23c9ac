"""The outbox: every notification is a row written in the transaction of the event that caused
it; a sender delivers the rows of each channel in order. Plus alert state (dedupe, resolve) and
per-channel delivery state (backoff, rate limit, a webhook that stopped working)."""
from __future__ import annotations

from django.db import models

from .choices import Channel, DeliveryState, Kind


class Notification(models.Model):
    channel = models.CharField(max_length=16, choices=Channel.choices, db_index=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.EVENT)
    alert_key = models.CharField(max_length=200, blank=True, db_index=True)
    # What it is about (a server's id, say): lets other apps list a thing's notifications
    # without this app knowing their models.
    subject = models.CharField(max_length=64, blank=True, db_index=True)
    title = models.CharField(max_length=256)
    body = models.TextField(blank=True)
    # Extra facts as embed fields: [{"name", "value"}]; redacted before storing.
    fields = models.JSONField(default=list, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    mention = models.BooleanField(default=False)
    state = models.CharField(max_length=12, choices=DeliveryState.choices,
                             default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    discord_message_id = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-id",)
        indexes = [models.Index(fields=("channel", "state", "id"), name="notification_outbox_idx")]

    def __str__(self) -> str:
        return f"[{self.channel}] {self.title}"


class ChannelState(models.Model):
    """Delivery state of one channel; its row is also the lease that keeps one sender per
    channel, so messages go out in order."""

    channel = models.CharField(max_length=16, choices=Channel.choices, primary_key=True)
    disabled = models.BooleanField(default=False,
                                   help_text="The webhook answered 404/401: sending stopped")
    disabled_reason = models.CharField(max_length=300, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.channel


class AlertState(models.Model):
    """One row per alert key: whether it fires, and when it was last sent (repeat interval)."""

    alert_key = models.CharField(max_length=200, unique=True)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    firing = models.BooleanField(default=False)
    title = models.CharField(max_length=256, blank=True)
    first_fired_at = models.DateTimeField(null=True, blank=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    last_sent_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    suppressed = models.PositiveIntegerField(default=0,
                                             help_text="repeats not sent inside the interval")

    def __str__(self) -> str:
        return self.alert_key
