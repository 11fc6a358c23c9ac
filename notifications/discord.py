"""Discord webhooks: the message we build (within Discord's limits, mentions suppressed except
the critical role) and the HTTP call that sends it (`?wait=true`, a timeout, classified result)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from .choices import COLOURS, RESOLVED_COLOUR, Channel, Kind

# Discord's limits (developers/resources/message: embed limits).
CONTENT_MAX = 2000
TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELDS_MAX = 25
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
EMBED_TOTAL_MAX = 6000
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


def _embed_size(embed: dict[str, Any]) -> int:
    size = len(embed.get("title", "")) + len(embed.get("description", ""))
    size += len(embed.get("footer", {}).get("text", ""))
    size += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))
    return size


def _fit_total(embed: dict[str, Any]) -> None:
    """Keep title+description+fields+footer within 6000: shorten the description, then drop
    fields from the end (saying so)."""
    excess = _embed_size(embed) - EMBED_TOTAL_MAX
    if excess > 0 and embed.get("description"):
        keep = max(0, len(embed["description"]) - excess)
        embed["description"] = clip(embed["description"], max(len(MARK) + 1, keep))
    dropped = 0
    while _embed_size(embed) > EMBED_TOTAL_MAX and embed.get("fields"):
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


def send(url: str, message: dict[str, Any], *, timeout: float) -> SendResult:
    """POST the message (`?wait=true`, so Discord confirms it saved it). Never raises."""
    try:
        resp = requests.post(url, params={"wait": "true"}, json=message, timeout=timeout)
    except requests.exceptions.RequestException as exc:
        return SendResult("retry", detail=f"{exc.__class__.__name__}")
    try:
        body = resp.json() if resp.content else {}
    except ValueError:
        body = {}
    if 200 <= resp.status_code < 300:
        return SendResult("sent", message_id=str(body.get("id", "")))
    if resp.status_code == 429:
        wait = body.get("retry_after") if isinstance(body, dict) else None
        wait = float(wait if wait is not None else resp.headers.get("Retry-After") or 1)
        return SendResult("rate_limited", retry_after=max(0.0, wait),
                          detail=f"429 scope={resp.headers.get('X-RateLimit-Scope', '?')}")
    code = body.get("code") if isinstance(body, dict) else None
    detail = f"HTTP {resp.status_code} code {code}: {body.get('message', '') if isinstance(body, dict) else ''}"
    if resp.status_code == 404 or code in (10015, 50027) or resp.status_code == 401:
        return SendResult("webhook_gone", detail=detail)
    if resp.status_code == 400:
        return SendResult("bad_message", detail=detail)
    return SendResult("retry", detail=detail)
