"""IdeToken: one browser-IDE token issued for a dev container (the token itself is never stored:
it is a signed JWT the IDE proxy verifies alone; the row is its record and its revocation)."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

__all__ = ("IdeToken",)


class IdeToken(models.Model):
    """`id` is the token's `jti`. `created_at` and `expires_at` are the database's clock (the
    token's `iat` and `exp` are the same instants); revoking sets `revoked_at`, and the IDE
    proxy learns it from GET /api/v1/ide/revoked."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    instance = models.ForeignKey("lifecycle.ContainerInstance", on_delete=models.CASCADE,
                                 related_name="ide_tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="ide_tokens")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "IDE token"
        indexes = [
            models.Index(fields=("expires_at",), name="ide_token_expires_idx"),
            models.Index(fields=("revoked_at", "expires_at"), name="ide_token_revoked_idx"),
        ]

    def __str__(self) -> str:
        return f"IDE token {self.id} for {self.instance_id}"
