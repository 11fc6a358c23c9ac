"""Per-account limits and the API tokens the portal authenticates with."""
from __future__ import annotations

from django.conf import settings
from django.db import models

__all__ = ("AccountProfile", "AccountQuota", "ApiToken")


class AccountQuota(models.Model):
    """One row per account. Creates lock this row, so an account's creates are serialised and
    can never overshoot its limits."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota"
    )
    max_servers = models.PositiveIntegerField()
    max_memory_mb = models.PositiveIntegerField()
    #: Backup limits; empty = the defaults in settings (BACKUP_QUOTA_COUNT, BACKUP_QUOTA_GB).
    max_backups = models.PositiveIntegerField(null=True, blank=True)
    max_backup_gb = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"quota of {self.user}"


class ApiToken(models.Model):
    """A bearer token. Only its SHA-256 is stored; the token itself is shown once, at issue."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=64, default="default")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The first characters, to tell tokens apart in the admin without revealing them.
    prefix = models.CharField(max_length=12, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class AccountProfile(models.Model):
    """An account's preferences. A row exists once the account has set one; without it the
    defaults in settings apply (ACCOUNT_DEFAULT_TIME_ZONE)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    #: An IANA time zone name (`Europe/Berlin`): the owner's schedules run at its local times.
    time_zone = models.CharField(max_length=64)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"profile of {self.user}"
