"""Channels, levels and delivery states of the notification outbox."""
from __future__ import annotations

from django.db import models


class Channel(models.TextChoices):
    CRITICAL = "critical", "Critical"
    WARNING = "warning", "Warning"
    INFO = "info", "Info (repairs)"
    LIFECYCLE = "lifecycle", "Lifecycle"


class Kind(models.TextChoices):
    EVENT = "event", "Event"
    FIRING = "firing", "Alert firing"
    RESOLVED = "resolved", "Alert resolved"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    #: Discord refused the message itself (it can never be sent as it is).
    FAILED = "failed", "Failed"
    #: No webhook is configured for the channel.
    UNCONFIGURED = "unconfigured", "No webhook configured"


#: Embed colours per channel (and green for "resolved").
COLOURS = {
    Channel.CRITICAL: 0xE74C3C,
    Channel.WARNING: 0xF39C12,
    Channel.INFO: 0x3498DB,
    Channel.LIFECYCLE: 0x95A5A6,
}
RESOLVED_COLOUR = 0x2ECC71
