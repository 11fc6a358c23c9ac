"""Heartbeats: each agent pushes its status; one row per server holds the last accepted one.

`POST /api/v1/agents/{server_id}/heartbeat` (lifecycle/api/agents.py) authenticates the agent
with the heartbeat token derived from the server's own secret (`core/agent_tokens.py`), then
`heartbeat_receive` validates the body and writes it:

- the body is the tenant's to write: checked against `Heartbeat` (types strict, numbers
  bounded, texts clipped; the crash log tail clipped to 4 KB and redacted); anything else is
  refused whole (`InvalidHeartbeat`, 400) and nothing is written;
- at most one write per half interval and server: a heartbeat sooner than
  `AGENT_HEARTBEAT_INTERVAL_SECONDS / 2` after the last written one is accepted, not written;
- a sequence not above the stored one is ignored (a replay, or a late duplicate), unless it is
  signed by a newer credential version (a re-enrolled agent starts its own count);
- one conditional UPDATE (or the first INSERT) per accepted heartbeat, `received_at = Now()`
  (the database clock: "stale" is judged in SQL against the same clock).

The reconciler reads the whole table in one query (`received_at` is indexed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Now

from core.clock import db_before
from core.redaction import redact_text

from ..errors import InvalidRequest
from ..models import AgentHeartbeat

#: Bytes of a crash's log tail that are kept (the end of the log).
LOG_TAIL_BYTES = 4096
_INT = Annotated[int, pydantic.Field(ge=0, le=2_147_483_647)]
_SEQUENCE = Annotated[int, pydantic.Field(ge=0, le=2**63 - 1)]


def _tail(text: str) -> str:
    """The last LOG_TAIL_BYTES bytes of `text`, secrets masked."""
    clipped = text.encode("utf-8")[-LOG_TAIL_BYTES:].decode("utf-8", errors="ignore")
    return redact_text(clipped).encode("utf-8")[-LOG_TAIL_BYTES:].decode("utf-8",
                                                                          errors="ignore")


class Crash(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="ignore", frozen=True)

    classification: str = pydantic.Field(max_length=64, pattern=r"^[a-z0-9_.-]+$")
    exitCode: int | None = pydantic.Field(default=None, ge=-(2**31), le=2**31 - 1)
    at: float | None = pydantic.Field(default=None, ge=0, le=1e11)
    logTail: Annotated[str, pydantic.AfterValidator(_tail)] = ""


class Heartbeat(pydantic.BaseModel):
    """What an agent sends. Unknown fields are ignored (newer agents may say more)."""

    model_config = pydantic.ConfigDict(strict=True, extra="ignore", frozen=True)

    sequence: _SEQUENCE
    state: str = pydantic.Field(max_length=32, pattern=r"^[a-z_]+$")
    provisioningComplete: bool = False
    ready: bool = False
    crashCount: _INT = 0
    lastCrash: Crash | None = None
    memoryUsedMb: _INT | None = None
    memoryLimitMb: _INT | None = None
    diskUsedMb: _INT | None = None
    diskLimitMb: _INT | None = None
    playersOnline: _INT | None = None
    agentVersion: str = pydantic.Field(default="", max_length=32)


class InvalidHeartbeat(InvalidRequest):
    """The body is not a heartbeat; nothing was written."""


_ADAPTER = pydantic.TypeAdapter(Heartbeat)


def heartbeat_parse(data: Any) -> Heartbeat:
    try:
        return _ADAPTER.validate_python(data)
    except pydantic.ValidationError as exc:
        fields: dict[str, list[str]] = {}
        for err in exc.errors()[:10]:
            where = ".".join(str(p) for p in err.get("loc", ())) or "non_field_errors"
            fields.setdefault(where, []).append(str(err.get("msg", "invalid"))[:200])
        raise InvalidHeartbeat("The heartbeat is not valid; nothing was written.",
                               fields=fields) from None


@dataclass(frozen=True)
class Received:
    written: bool
    #: Why it was not written: "too_soon" or "stale_sequence" ("" when written).
    reason: str = ""


def _memory_high(beat: Heartbeat) -> bool:
    used, limit = beat.memoryUsedMb, beat.memoryLimitMb
    return bool(used is not None and limit and
                used * 100 > limit * settings.AGENT_MEMORY_PRESSURE_PERCENT)


def _fields(beat: Heartbeat, version: int) -> dict[str, Any]:
    crash = beat.lastCrash
    return {
        "sequence": beat.sequence,
        "credential_version": version,
        "state": beat.state,
        "provisioning_complete": beat.provisioningComplete,
        "ready": beat.ready,
        "crash_count": beat.crashCount,
        "last_crash": None if crash is None else {
            "classification": crash.classification, "exit_code": crash.exitCode,
            "at": crash.at, "log_tail": crash.logTail},
        "memory_used_mb": beat.memoryUsedMb,
        "memory_limit_mb": beat.memoryLimitMb,
        "disk_used_mb": beat.diskUsedMb,
        "disk_limit_mb": beat.diskLimitMb,
        "players_online": beat.playersOnline,
        "agent_version": beat.agentVersion,
    }


def heartbeat_receive(*, instance_id: Any, version: int, data: Any) -> Received:
    """Validate and store one heartbeat of an authenticated agent (`version`: the credential
    version that signed it). InvalidHeartbeat for garbage (nothing written)."""
    beat = heartbeat_parse(data)
    fields = _fields(beat, version)
    high = _memory_high(beat)
    newer = Q(sequence__lt=beat.sequence) | Q(credential_version__lt=version)
    # One statement: written only if the last write is at least half an interval old and the
    # sequence moves forward; the streak is counted from the stored one.
    updated = AgentHeartbeat.objects.filter(
        newer, server_id=instance_id,
        received_at__lte=db_before(settings.AGENT_HEARTBEAT_INTERVAL_SECONDS / 2),
        credential_version__lte=version,
    ).update(received_at=Now(),
             memory_high_streak=F("memory_high_streak") + 1 if high else Value(0),
             **fields)
    if updated:
        return Received(written=True)
    row = AgentHeartbeat.objects.filter(server_id=instance_id).values(
        "sequence", "credential_version").first()
    if row is None:
        try:
            with transaction.atomic():
                AgentHeartbeat.objects.create(server_id=instance_id, received_at=Now(),
                                              memory_high_streak=1 if high else 0, **fields)
            return Received(written=True)
        except IntegrityError:
            return Received(written=False, reason="too_soon")  # a concurrent first one won
    if row["credential_version"] > version or (
            row["credential_version"] == version and row["sequence"] >= beat.sequence):
        return Received(written=False, reason="stale_sequence")
    return Received(written=False, reason="too_soon")
