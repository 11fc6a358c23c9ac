"""Browser-IDE tokens: issued to a dev container's owner, verified by the IDE proxy alone.

A token is an HS256 JWT signed with the first of IDE_TOKEN_SECRETS, a key shared with the IDE
proxy only. Its claims bind it to one purpose and one container:

    iss "zlh", aud "zlh-ide", sub <server id>, vmid <VMID>, jti <IdeToken id>, iat, exp

The proxy checks the signature (any key of the list; the header's `kid` names which), `iss`,
`aud`, `exp` and that `vmid` is the container its route leads to, with no call to us; it
exchanges the token for its own session and keeps each `jti` it has seen (single use). What it
cannot know alone is a revocation: it reads GET /api/v1/ide/revoked (IDE_PROXY_TOKEN) every few
seconds and refuses, and ends the sessions of, the tokens listed there.

The token is shown once, in the answer to its owner; it is never stored (the IdeToken row keeps
its jti and times), logged or put in an audit event.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import jwt
from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now

from core.clock import db_before, db_now

from ..choices import InstanceStatus, Kind
from ..errors import InvalidState, NotOwner, Unavailable
from ..models import ContainerInstance, IdeToken
from ..selectors import server_ide_url
from .audit import Actor, audit_record

logger = logging.getLogger(__name__)

ISSUER = "zlh"
AUDIENCE = "zlh-ide"
ALGORITHM = "HS256"
#: The query parameter of the IDE URL that carries the token to the proxy.
QUERY_PARAM = "zlh_ide_token"


@dataclass(frozen=True)
class IssuedIdeToken:
    token: str
    url: str
    expires_at: datetime
    jti: uuid.UUID


def key_id(secret: str) -> str:
    """A name for a key that reveals nothing of it (the JWT header's `kid`)."""
    return hashlib.sha256(b"zlh ide key id:" + secret.encode()).hexdigest()[:12]


def _secrets() -> list[str]:
    return [k.strip() for k in settings.IDE_TOKEN_SECRETS if k.strip()]


def ide_token_issue(*, user: Any, server: ContainerInstance) -> IssuedIdeToken:
    """A new token for `server`'s IDE, for its owner only; the IDE URL that carries it."""
    if server.owner_id != user.pk:
        raise NotOwner("Only the server's owner can open its IDE.")
    if server.kind != Kind.DEV or not server.enable_code_server:
        raise InvalidState(
            "This server has no browser IDE: only dev containers created with "
            "enable_code_server have one.")
    if server.suspended:
        raise InvalidState("This server is suspended; its IDE cannot be opened.")
    if server.status != InstanceStatus.RUNNING:
        raise InvalidState(
            f"The IDE can be opened only while the server runs (it is {server.status}); "
            "start it first.")
    keys = _secrets()
    url = server_ide_url(server)
    if not keys or url is None:
        raise Unavailable("The browser IDE is not configured on this control plane "
                          "(IDE_TOKEN_SECRETS); ask the operator.")
    issued = db_now().replace(microsecond=0)
    expires = issued + timedelta(seconds=settings.IDE_TOKEN_TTL_SECONDS)
    with transaction.atomic():
        row = IdeToken.objects.create(instance=server, user=user, created_at=issued,
                                      expires_at=expires)
        audit_record(actor=Actor.for_user(user), action="ide_token_issued",
                     instance_id=server.id,
                     data={"jti": str(row.id), "expires_at": expires.isoformat()})
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(server.id), "vmid": server.vmid,
              "jti": str(row.id), "iat": int(issued.timestamp()),
              "exp": int(expires.timestamp())}
    token = jwt.encode(claims, keys[0], algorithm=ALGORITHM, headers={"kid": key_id(keys[0])})
    logger.info("IDE token %s issued for server %s (expires %s)", row.id, server.id,
                expires.isoformat())
    return IssuedIdeToken(token=token, url=f"{url}?{urlencode({QUERY_PARAM: token})}",
                          expires_at=expires, jti=row.id)


def ide_tokens_revoke(*, actor: Actor, tokens: Any = None, server: Any = None) -> int:
    """Revoke the unexpired tokens among `tokens` (a queryset or ids), or all of `server`'s;
    the IDE proxy refuses them from its next read of the list. Returns how many."""
    qs = IdeToken.objects.filter(revoked_at__isnull=True, expires_at__gt=Now())
    if server is not None:
        qs = qs.filter(instance=server)
    if tokens is not None:
        qs = qs.filter(pk__in=tokens.values("pk") if hasattr(tokens, "values") else tokens)
    with transaction.atomic():
        rows = list(qs.select_for_update().values_list("pk", "instance_id"))
        if not rows:
            return 0
        IdeToken.objects.filter(pk__in=[pk for pk, _ in rows]).update(
            revoked_at=Now(), revoked_by=actor.label[:150])
        by_server: dict[Any, list[str]] = {}
        for pk, instance_id in rows:
            by_server.setdefault(instance_id, []).append(str(pk))
        for instance_id, jtis in by_server.items():
            audit_record(actor=actor, action="ide_tokens_revoked", instance_id=instance_id,
                         data={"jtis": jtis})
    return len(rows)


def ide_tokens_revoked() -> list[dict[str, Any]]:
    """What the IDE proxy must refuse: every revoked token not yet expired (older ones it
    refuses by their `exp` anyway), oldest expiry first."""
    return [{"jti": str(pk), "expires_at": expires}
            for pk, expires in IdeToken.objects.filter(revoked_at__isnull=False,
                                                       expires_at__gt=Now())
            .order_by("expires_at").values_list("pk", "expires_at")]


def ide_tokens_prune(*, older_than_days: int = 30) -> int:
    """Delete the records of tokens expired more than `older_than_days` ago (their audit
    events stay)."""
    deleted, _ = IdeToken.objects.filter(
        expires_at__lt=db_before(older_than_days * 86400)).delete()
    return deleted
