"""Who did it: the Actor passed to every service, and the audit row each service writes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.redaction import redact

from ..choices import ActorKind
from ..models import AuditEvent


@dataclass(frozen=True)
class Actor:
    kind: str
    label: str
    user_id: int | None = None

    @classmethod
    def for_user(cls, user: Any, *, admin: bool = False) -> "Actor":
        return cls(
            kind=ActorKind.ADMIN if admin else ActorKind.USER,
            label=user.get_username(),
            user_id=user.pk,
        )

    @classmethod
    def system(cls, label: str = "system") -> "Actor":
        return cls(kind=ActorKind.SYSTEM, label=label)

    @classmethod
    def reconciler(cls, epoch: int) -> "Actor":
        return cls(kind=ActorKind.RECONCILER, label=f"reconciler epoch {epoch}")


def audit_record(
    *,
    actor: Actor,
    action: str,
    instance_id: Any = None,
    from_status: str | None = "",
    to_status: str | None = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Write one audit row; call it inside the transaction of the change it describes."""
    return AuditEvent.objects.create(
        actor_kind=actor.kind,
        actor_user_id=actor.user_id,
        actor_label=actor.label[:150],
        instance_id=instance_id,
        action=action[:64],
        from_status=from_status or "",
        to_status=to_status or "",
        data=redact(data or {}),
    )
