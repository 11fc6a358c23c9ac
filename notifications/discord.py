"""Discord webhooks: the message we build (within Discord's limits, mentions suppressed except
the critical role) and the HTTP call that sends it (`?wait=true`, a timeout, classified result)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from core.http import BadAnswer, bounded_session

from .choices import COLOURS, RESOLVED_COLOUR, Channel, Kind

# Discord's limits (developers/resources/message: embed limits).
CONTENT_MAX = 2000
TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELDS_MAX = 25
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
#: Over all the embeds of one message.
EMBED_TOTAL_MAX = 6000
EMBEDS_MAX = 10
MARK = " …[truncated]"


def clip(text: str, limit: int) -> str:
    text = (text or "").strip()
    if len(text) <= limit:
        return text
    return text[: limit - len(MARK)].rstrip() + MARK


def build_message(*, channel: str, kind: str, title: str, body: str,
                  fields: list[dict[str, Any]], alert_key: str, created_at: str,
                  mention: bool, role_id: str) -> dict[str, Any]:
    """A webhook body that always fits Discord's limits; over-long parts are cut visibly."""
    prefix = {Kind.FIRING: "", Kind.RESOLVED: "Resolved: ", Kind.EVENT: ""}.get(kind, "")
    embed: dict[str, Any] = {
        "title": clip(prefix + title, TITLE_MAX),
        "color": RESOLVED_COLOUR if kind == Kind.RESOLVED else COLOURS.get(channel, 0x95A5A6),
        "footer": {"text": clip(f"zlh · {channel}" + (f" · {alert_key}" if alert_key else ""),
                                FOOTER_MAX)},
        "timestamp": created_at,
    }
    if body:
        embed["description"] = clip(body, DESCRIPTION_MAX)
    items = [f for f in fields if isinstance(f, dict)]
    shown = items[: FIELDS_MAX - 1] if len(items) > FIELDS_MAX else items
    embed_fields = [{"name": clip(str(f.get("name", "")) or "-", FIELD_NAME_MAX),
                     "value": clip(str(f.get("value", "")) or "-", FIELD_VALUE_MAX),
                     "inline": bool(f.get("inline", False))} for f in shown]
    if len(items) > len(shown):
        embed_fields.append({"name": "More", "value": f"{len(items) - len(shown)} more fields "
                                                      "not shown", "inline": False})
    if embed_fields:
        embed["fields"] = embed_fields
    _fit_total(embed)
    message: dict[str, Any] = {"embeds": [embed], "allowed_mentions": {"parse": []}}
    if mention and channel == Channel.CRITICAL and role_id:
        role = str(role_id)  # a snowflake: always a string on the wire
        message["content"] = clip(f"<@&{role}> {title}", CONTENT_MAX)
        message["allowed_mentions"] = {"parse": [], "roles": [role]}
    return message


def embed_size(embed: dict[str, Any]) -> int:
    size = len(embed.get("title", "")) + len(embed.get("description", ""))
    size += len(embed.get("footer", {}).get("text", ""))
    size += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))
    return size


def _fit_total(embed: dict[str, Any]) -> None:
    """Keep title+description+fields+footer within 6000: shorten the description, then drop
    fields from the end (saying so)."""
    excess = embed_size(embed) - EMBED_TOTAL_MAX
    if excess > 0 and embed.get("description"):
        keep = max(0, len(embed["description"]) - excess)
        embed["description"] = clip(embed["description"], max(len(MARK) + 1, keep))
    dropped = 0
    while embed_size(embed) > EMBED_TOTAL_MAX and embed.get("fields"):
        embed["fields"].pop()
        dropped += 1
    if dropped:
        embed["footer"]["text"] = clip(embed["footer"]["text"] + f" · {dropped} fields cut",
                                       FOOTER_MAX)


@dataclass(frozen=True)
class SendResult:
    outcome: str  # sent, rate_limited, webhook_gone, bad_message, retry
    message_id: str = ""
    retry_after: float = 0.0
    detail: str = ""


#: The longest wait a 429 can ask for that we honour; beyond it the value is nonsense.
MAX_RETRY_AFTER = 3600.0


def _seconds(*candidates: Any) -> float:
    """The first candidate that is a number of seconds, within [0, MAX_RETRY_AFTER]; 1 if none."""
    for value in candidates:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if seconds == seconds:  # not NaN
            return min(MAX_RETRY_AFTER, max(0.0, seconds))
    return 1.0


def send(url: str, message: dict[str, Any], *, timeout: float,
         max_bytes: int = 256 * 1024) -> SendResult:
    """POST the message (`?wait=true`, so Discord confirms it saved it). Never raises: any
    answer, however malformed, becomes a SendResult."""
    session = bounded_session(max_bytes=max_bytes, system="discord")
    try:
        resp = session.post(url, params={"wait": "true"}, json=message, timeout=timeout)
    except BadAnswer as exc:
        return SendResult("retry", detail=f"bad answer: {exc}"[:300])
    except requests.exceptions.RequestException as exc:
        return SendResult("retry", detail=f"{exc.__class__.__name__}")
    finally:
        session.close()
    try:
        body = resp.json() if resp.content else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if 200 <= resp.status_code < 300:
        # `?wait=true` answers the saved message: without its id, Discord's "yes" is not a
        # confirmation, and sending again (a possible duplicate) is the side that loses nothing.
        message_id = body.get("id")
        if isinstance(message_id, str | int) and str(message_id).isdigit():
            return SendResult("sent", message_id=str(message_id)[:32])
        return SendResult("retry", detail=f"HTTP {resp.status_code} without a message id")
    if resp.status_code == 429:
        wait = _seconds(body.get("retry_after"), resp.headers.get("Retry-After"))
        scope = str(resp.headers.get("X-RateLimit-Scope", "?"))[:20]
        return SendResult("rate_limited", retry_after=wait, detail=f"429 scope={scope}")
    code = body.get("code")
    code = code if isinstance(code, int) else None
    detail = f"HTTP {resp.status_code} code {code}: {str(body.get('message', ''))[:200]}"
    if resp.status_code == 404 or code in (10015, 50027) or resp.status_code == 401:
        return SendResult("webhook_gone", detail=detail)
    if resp.status_code == 400:
        return SendResult("bad_message", detail=detail)
    return SendResult("retry", detail=detail)
