"""Accounts as the control plane sees them: quotas and API tokens."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from ..choices import QUOTA_STATUSES
from ..models import AccountQuota, ApiToken, ContainerInstance
from .audit import Actor, audit_record

TOKEN_PREFIX = "zlh_"
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_hash(raw: str) -> str:
    # Tokens are 256 random bits, so a plain SHA-256 (no salt, no stretching) cannot be
    # brute-forced and lets us look a token up by its hash in one indexed query.
    return hashlib.sha256(raw.encode()).hexdigest()


def quota_ensure(*, user: Any) -> AccountQuota:
    """The account's quota row, created with the defaults from settings if it has none."""
    quota, _ = AccountQuota.objects.get_or_create(
        user=user,
        defaults={
            "max_servers": settings.ZLH_DEFAULT_MAX_SERVERS,
            "max_memory_mb": settings.ZLH_DEFAULT_MAX_MEMORY_MB,
        },
    )
    return quota


@transaction.atomic
def quota_set(
    *, user: Any, max_servers: int | None = None, max_memory_mb: int | None = None, actor: Actor
) -> AccountQuota:
    quota_ensure(user=user)
    quota = AccountQuota.objects.select_for_update().get(user=user)
    before = {"max_servers": quota.max_servers, "max_memory_mb": quota.max_memory_mb}
    if max_servers is not None:
        quota.max_servers = max_servers
    if max_memory_mb is not None:
        quota.max_memory_mb = max_memory_mb
    quota.save()
    audit_record(actor=actor, action="quota:set",
                 data={"user": user.get_username(), "before": before,
                       "after": {"max_servers": quota.max_servers,
                                 "max_memory_mb": quota.max_memory_mb}})
    return quota


@dataclass(frozen=True)
class QuotaUsage:
    servers: int
    memory_mb: int


def quota_usage(*, user_id: int) -> QuotaUsage:
    """What counts against the quota: every server not yet purged (soft-deleted ones still hold
    their container and allocations until purge)."""
    row = ContainerInstance.objects.filter(owner_id=user_id, status__in=QUOTA_STATUSES).aggregate(
        servers=Count("id"), memory_mb=Sum("memory_mb")
    )
    return QuotaUsage(servers=row["servers"] or 0, memory_mb=row["memory_mb"] or 0)


@transaction.atomic
def api_token_create(
    *, username: str, staff: bool = False, name: str = "default", actor: Actor
) -> tuple[ApiToken, str]:
    """Issue a token for `username` (creating the user if needed); returns (row, raw token).

    The raw token exists only in the return value: it is stored as a hash.
    """
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
    if staff and not user.is_staff:
        user.is_staff = True
    user.save()
    quota_ensure(user=user)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, key_hash=token_hash(raw), prefix=raw[: len(TOKEN_PREFIX) + 6]
    )
    audit_record(actor=actor, action="apitoken:create",
                 data={"user": username, "staff": user.is_staff, "prefix": token.prefix})
    return token, raw


def api_token_authenticate(*, raw: str) -> ApiToken | None:
    """The live token matching `raw`, or None. Touches last_used_at at most once a minute."""
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=token_hash(raw), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


@transaction.atomic
def api_token_revoke(*, token: ApiToken, actor: Actor) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    audit_record(actor=actor, action="apitoken:revoke", data={"prefix": token.prefix})
