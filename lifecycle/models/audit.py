"""The audit trail: who did what to which server, written by services in their transaction."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from ..choices import ActorKind

__all__ = ("AuditEvent",)


class AuditEvent(models.Model):
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor_kind = models.CharField(max_length=12, choices=ActorKind.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Username, "reconciler epoch 12", "system": readable even after the user is gone.
    actor_label = models.CharField(max_length=150)
    instance = models.ForeignKey(
        "lifecycle.ContainerInstance",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="audit_events",
    )
    action = models.CharField(max_length=64)
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16, blank=True)
    # Redacted before it is stored (lifecycle.services.audit).
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("-at", "-id")
        indexes = [models.Index(fields=("instance", "at"), name="audit_instance_at_idx")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action}"
