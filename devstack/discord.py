"""Discord webhook stand-in at the real path shape `/api/v10/webhooks/{id}/{token}`.

Executes like Discord: `?wait=true` answers 200 with the message object (else 204); a webhook
that does not exist is 404 code 10015 "Unknown Webhook", a wrong token 401 code 50027; content,
embed and total-size limits are enforced (400 code 50035); each webhook is rate limited (5
requests per 2 s by default) with 429, `retry_after` in the body and `Retry-After` headers.
Sim: `GET /_sim/messages`, `POST /_sim/webhooks/{id}/delete`, `POST /_sim/outage {"on"}`
(connections are dropped), `POST /_sim/rate-limit {"limit", "window"}`, plus the shared
/_sim/faults and /_sim/reset.
"""
from __future__ import annotations

import secrets
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .sim import FaultTable, add_sim_routes, fault_middleware, json_response

CHANNELS = ("critical", "warning", "info", "lifecycle")


def _snowflake() -> str:
    return str((int(time.time() * 1000) - 1420070400000) << 22 | secrets.randbelow(1 << 22))


def _form_error(message: str) -> web.Response:
    return json_response({"message": "Invalid Form Body", "code": 50035,
                          "errors": {"_errors": [{"code": "BASE_TYPE_BAD", "message": message}]}},
                         400)


def _check_limits(body: dict[str, Any]) -> str | None:
    content = body.get("content") or ""
    embeds = body.get("embeds") or []
    if not content and not embeds:
        return "Cannot send an empty message"
    if len(content) > 2000:
        return "content: Must be 2000 or fewer in length."
    if len(embeds) > 10:
        return "embeds: Must be 10 or fewer in length."
    total = 0
    for embed in embeds:
        title, desc = embed.get("title", ""), embed.get("description", "")
        footer = (embed.get("footer") or {}).get("text", "")
        fields = embed.get("fields") or []
        if len(title) > 256 or len(desc) > 4096 or len(footer) > 2048 or len(fields) > 25:
            return "embeds: a title, description, footer or the number of fields is too long"
        for f in fields:
            if len(f.get("name", "")) > 256 or len(f.get("value", "")) > 1024:
                return "embeds.fields: name or value too long"
            total += len(f.get("name", "")) + len(f.get("value", ""))
        total += len(title) + len(desc) + len(footer)
    if total > 6000:
        return "embeds: Embed size exceeds maximum size of 6000"
    mentions = body.get("allowed_mentions")
    if isinstance(mentions, dict) and mentions.get("parse") and (mentions.get("roles")
                                                                 or mentions.get("users")):
        return "allowed_mentions: parse is mutually exclusive with roles/users"
    return None


class DiscordStandIn:
    def __init__(self) -> None:
        self.webhooks = {name: {"id": str(10**17 + secrets.randbelow(10**17)),
                                "token": secrets.token_urlsafe(51)} for name in CHANNELS}
        self.by_id = {w["id"]: name for name, w in self.webhooks.items()}
        self.deleted: set[str] = set()
        self.messages: list[dict[str, Any]] = []
        self.limit, self.window = 5, 2.0
        self.hits: dict[str, deque[float]] = {}
        self.outage = False
        self.table = FaultTable()

    def urls(self, base: str) -> dict[str, str]:
        return {name: f"{base}/api/v10/webhooks/{w['id']}/{w['token']}"
                for name, w in self.webhooks.items()}

    async def execute(self, request: web.Request) -> web.StreamResponse:
        if self.outage:
            request.transport.close()
            raise ConnectionResetError("discord stand-in: outage")
        webhook_id, token = request.match_info["id"], request.match_info["token"]
        channel = self.by_id.get(webhook_id)
        if channel is None or webhook_id in self.deleted:
            return json_response({"message": "Unknown Webhook", "code": 10015}, 404)
        if self.webhooks[channel]["token"] != token:
            return json_response({"message": "Invalid Webhook Token", "code": 50027}, 401)
        now = time.monotonic()
        if self.limit:
            hits = self.hits.setdefault(webhook_id, deque())
            while hits and now - hits[0] >= self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                retry = round(self.window - (now - hits[0]), 3)
                return web.json_response(
                    {"message": "You are being rate limited.", "retry_after": retry,
                     "global": False}, status=429,
                    headers={"Retry-After": str(max(1, round(retry))),
                             "X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": "0",
                             "X-RateLimit-Reset-After": str(retry), "X-RateLimit-Scope": "user",
                             "X-RateLimit-Bucket": webhook_id})
            hits.append(now)
        try:
            body = await request.json()
        except ValueError:
            return _form_error("body is not JSON")
        if not isinstance(body, dict):
            return _form_error("body must be an object")
        problem = _check_limits(body)
        if problem:
            return _form_error(problem)
        message = {"id": _snowflake(), "type": 0, "channel_id": webhook_id,
                   "webhook_id": webhook_id, "content": body.get("content", ""),
                   "embeds": body.get("embeds", []),
                   "allowed_mentions": body.get("allowed_mentions"),
                   "timestamp": datetime.now(timezone.utc).isoformat()}
        self.messages.append({"channel": channel, **message})
        if request.query.get("wait", "false").lower() == "true":
            return json_response(message)
        return web.Response(status=204)

    async def sim_messages(self, request: web.Request) -> web.Response:
        channel = request.query.get("channel")
        return json_response([m for m in self.messages if channel in (None, m["channel"])])

    async def sim_delete_webhook(self, request: web.Request) -> web.Response:
        self.deleted.add(request.match_info["id"])
        return json_response({"deleted": request.match_info["id"]})

    async def sim_outage(self, request: web.Request) -> web.Response:
        self.outage = bool((await request.json()).get("on", True))
        return json_response({"outage": self.outage})

    async def sim_rate_limit(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.limit, self.window = int(body.get("limit", 5)), float(body.get("window", 2.0))
        return json_response({"limit": self.limit, "window": self.window})

    def reset(self) -> None:
        self.messages.clear()
        self.deleted.clear()
        self.hits.clear()
        self.outage = False
        self.limit, self.window = 5, 2.0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[fault_middleware(self.table)])
        r = app.router
        r.add_post("/api/v10/webhooks/{id}/{token}", self.execute)
        add_sim_routes(app, self.table, self.reset)
        r.add_get("/_sim/messages", self.sim_messages)
        r.add_post("/_sim/webhooks/{id}/delete", self.sim_delete_webhook)
        r.add_post("/_sim/outage", self.sim_outage)
        r.add_post("/_sim/rate-limit", self.sim_rate_limit)
        return app
