"""Each server's agent credential: made, encrypted at rest, rotated, and read back as tokens.

The threat: dev containers run their tenants' code on the same bridge as every other
container, so anything sent to an agent may be read by a tenant. So each server's agent has a
secret of its own, and neither side ever shows it after enrolment: each shows a token derived
from it per direction (`core/agent_tokens.py`). What one container's agent (or an impostor in
its place) sees opens no other container.

At rest the secret is encrypted with `AGENT_CREDENTIAL_KEYS` (Fernet; the first key encrypts,
all decrypt, so keys can be rotated; `agent_credentials_reencrypt` moves every row to the first
key). The control plane must present a token derived from the secret, so a hash would not do.

The legacy path: agents too old to take a credential (they answer 404 to `/credential`) are
driven with the old shared token `AGENT_LEGACY_TOKEN` until `AGENT_LEGACY_TOKEN_UNTIL`, and
every server driven so carries `legacy_since` (reported by the reconciler).
"""
from __future__ import annotations

import base64
import functools
import logging
from dataclasses import dataclass
from datetime import date, datetime, time as dt_time
from datetime import timezone as dt_timezone
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import BooleanField, ExpressionWrapper, Q
from django.db.models.functions import Now
from django.utils import timezone

from core.agent_tokens import control_token, heartbeat_token, new_secret, tokens_equal
from core.clock import db_after

from ..errors import LifecycleError
from ..models import AgentCredential
from .audit import Actor, audit_record

logger = logging.getLogger(__name__)


class CredentialUnreadable(LifecycleError):
    """A stored secret cannot be decrypted with any key in AGENT_CREDENTIAL_KEYS (a key was
    removed before every row was re-encrypted)."""


# --- encryption at rest ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _multifernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        # Development and tests: a key derived from SECRET_KEY, so the devstack works without
        # setup. Production settings refuse to start without AGENT_CREDENTIAL_KEYS.
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"zlh agent credential key").derive(secret_key.encode())
        keys = (base64.urlsafe_b64encode(derived).decode(),)
    return MultiFernet([Fernet(key) for key in keys])


def _fernet() -> MultiFernet:
    keys = tuple(k.strip() for k in settings.AGENT_CREDENTIAL_KEYS if k.strip())
    return _multifernet(keys, settings.SECRET_KEY)


def encrypt_secret(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt_secret(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise CredentialUnreadable(
            "An agent secret cannot be decrypted with any key in AGENT_CREDENTIAL_KEYS (was a "
            "key removed before `manage.py agentcredentials --reencrypt`?).") from exc


def agent_credentials_reencrypt() -> int:
    """Re-encrypt every stored secret with the first key of AGENT_CREDENTIAL_KEYS (after a new
    key was put in front); returns the rows rewritten. Each row under its own lock."""
    fernet = _fernet()
    done = 0
    for pk in AgentCredential.objects.values_list("pk", flat=True).iterator():
        with transaction.atomic():
            cred = AgentCredential.objects.select_for_update().filter(pk=pk).first()
            if cred is None:
                continue
            try:
                fields = {"secret_encrypted":
                          fernet.rotate(cred.secret_encrypted.encode()).decode()}
                if cred.previous_encrypted:
                    fields["previous_encrypted"] = fernet.rotate(
                        cred.previous_encrypted.encode()).decode()
            except InvalidToken as exc:
                raise CredentialUnreadable(
                    f"The agent secret of {pk} cannot be decrypted with any key in "
                    "AGENT_CREDENTIAL_KEYS; put the old key back and run this again.") from exc
            AgentCredential.objects.filter(pk=pk).update(**fields)
            done += 1
    return done


# --- the legacy shared token ------------------------------------------------------------------------
def legacy_until() -> datetime | None:
    """The end of the legacy window (UTC midnight of AGENT_LEGACY_TOKEN_UNTIL), or None."""
    raw = (settings.AGENT_LEGACY_TOKEN_UNTIL or "").strip()
    if not raw:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        logger.warning("AGENT_LEGACY_TOKEN_UNTIL=%r is not an ISO date: no legacy agents", raw)
        return None
    return datetime.combine(day, dt_time.min, tzinfo=dt_timezone.utc)


def legacy_token() -> str | None:
    """The old shared token while old agents may still be driven with it, else None."""
    until = legacy_until()
    if not settings.AGENT_LEGACY_TOKEN or until is None or timezone.now() >= until:
        return None
    return settings.AGENT_LEGACY_TOKEN


# --- rows -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgentSecrets:
    """A server's credential, decrypted, for the one call that needs it. Never logged."""

    server_id: Any
    version: int
    current: str
    previous: str | None
    #: The previous secret still signs heartbeats (the overlap after a rotation).
    previous_valid: bool
    enrolled: bool
    legacy: bool

    def __repr__(self) -> str:  # never the secrets
        return (f"AgentSecrets(server={self.server_id}, v{self.version}, "
                f"enrolled={self.enrolled}, legacy={self.legacy})")

    @property
    def control(self) -> str:
        return control_token(self.current, self.server_id)

    @property
    def previous_control(self) -> str | None:
        return control_token(self.previous, self.server_id) if self.previous else None


def agent_credential_ensure(*, instance_id: Any) -> None:
    """Make the server's credential (version 1) unless it has one. Safe to race."""
    if AgentCredential.objects.filter(pk=instance_id).exists():
        return
    try:
        with transaction.atomic():
            AgentCredential.objects.create(server_id=instance_id,
                                           secret_encrypted=encrypt_secret(new_secret()))
    except IntegrityError:
        pass  # made by someone else meanwhile


def agent_secrets(*, instance_id: Any) -> AgentSecrets | None:
    """The server's credential, decrypted (one query), or None if it has none yet."""
    cred = (AgentCredential.objects.filter(pk=instance_id)
            .annotate(previous_live=ExpressionWrapper(Q(previous_valid_until__gt=Now()),
                                                      output_field=BooleanField()))
            .first())
    if cred is None:
        return None
    previous = decrypt_secret(cred.previous_encrypted) if cred.previous_encrypted else None
    return AgentSecrets(server_id=cred.server_id, version=cred.version,
                        current=decrypt_secret(cred.secret_encrypted), previous=previous,
                        previous_valid=bool(previous and cred.previous_live),
                        enrolled=cred.enrolled_at is not None,
                        legacy=cred.legacy_since is not None)


def agent_control_token(*, instance_id: Any) -> str:
    """What the control plane presents to this server's agent: the token of its own secret;
    for a server whose agent is too old for one (or that has none yet: made before agent
    credentials existed) the legacy token while it is allowed; otherwise nothing (the agent
    refuses us, and the reconciler reports it)."""
    secrets_ = agent_secrets(instance_id=instance_id)
    legacy = legacy_token()
    if secrets_ is None or (secrets_.legacy and not secrets_.enrolled):
        return legacy or (secrets_.control if secrets_ else "")
    return secrets_.control


@transaction.atomic
def agent_credential_rotate(*, instance_id: Any, actor: Actor, reason: str) -> int:
    """A new secret for the server's agent (version + 1); the old one becomes `previous`
    (heartbeats it signs are accepted for AGENT_CREDENTIAL_OVERLAP_SECONDS, and it
    authenticates the delivery of the new one to an agent that still holds it). Returns the
    new version. The agent learns it at the next enrolment (`rotate_credential` operation,
    restore, start)."""
    agent_credential_ensure(instance_id=instance_id)
    cred = AgentCredential.objects.select_for_update().get(pk=instance_id)
    version = cred.version + 1
    AgentCredential.objects.filter(pk=instance_id).update(
        secret_encrypted=encrypt_secret(new_secret()), version=version, rotated_at=Now(),
        enrolled_at=None, previous_encrypted=cred.secret_encrypted,
        previous_valid_until=db_after(settings.AGENT_CREDENTIAL_OVERLAP_SECONDS))
    audit_record(actor=actor, instance_id=instance_id, action="agent_credential:rotate",
                 data={"version": version, "reason": reason})
    return version


def agent_credential_enrolled(*, instance_id: Any, version: int, actor: Actor) -> bool:
    """The agent confirmed it holds `version`: record it (and that it is no legacy agent)."""
    with transaction.atomic():
        changed = AgentCredential.objects.filter(
            pk=instance_id, version=version).filter(
            Q(enrolled_at__isnull=True) | Q(legacy_since__isnull=False)).update(
            enrolled_at=Now(), legacy_since=None)
        if changed:
            audit_record(actor=actor, instance_id=instance_id, action="agent_credential:enrolled",
                         data={"version": version})
    return bool(changed)


def agent_credential_mark_legacy(*, instance_id: Any, actor: Actor) -> bool:
    """The server's agent is too old for a credential and is driven with the legacy token."""
    agent_credential_ensure(instance_id=instance_id)
    with transaction.atomic():
        changed = AgentCredential.objects.filter(pk=instance_id, legacy_since__isnull=True) \
            .update(legacy_since=Now())
        if changed:
            audit_record(actor=actor, instance_id=instance_id, action="agent_credential:legacy",
                         data={"until": settings.AGENT_LEGACY_TOKEN_UNTIL})
    return bool(changed)


def heartbeat_version(*, instance_id: Any, presented: str | None) -> int | None:
    """The credential version whose heartbeat token `presented` is, or None (refused). The
    previous version counts only during its overlap."""
    try:
        secrets_ = agent_secrets(instance_id=instance_id)
    except CredentialUnreadable:
        logger.error("heartbeat of %s refused: its agent secret cannot be decrypted",
                     instance_id)
        return None
    if secrets_ is None:
        tokens_equal(presented, "0" * 64)  # the same work whether the server exists or not
        return None
    if tokens_equal(presented, heartbeat_token(secrets_.current, instance_id)):
        return secrets_.version
    if secrets_.previous_valid and tokens_equal(presented,
                                                heartbeat_token(secrets_.previous, instance_id)):
        return secrets_.version - 1
    return None
