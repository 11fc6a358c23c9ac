"""IDE proxy stand-in: what serves `dev-<vmid>` browser IDEs, verifying the control plane's
IDE tokens the way the real proxy must — with PyJWT and the shared key alone, no call to the
control plane per token — and nothing of ours imported (the token format is the contract).

  GET /dev-{vmid}/?zlh_ide_token=<jwt>   verify (signature, iss "zlh", aud "zlh-ide", exp, vmid
                                         of this route), single use (a jti seen before is
                                         refused), not revoked; then a session cookie and 303
                                         to /dev-{vmid}/ without the token
  GET /dev-{vmid}/                       with the session cookie: the IDE (a small page here)

Revocations are read from the control plane's GET /api/v1/ide/revoked (Bearer proxy token)
when the last read is older than `refresh_s`, once `POST /_sim/ide/config {"revocations_url",
"refresh_s"}` has said where; a revoked jti is refused and its session ends. If the list cannot
be read, the last one read is kept and the failure is counted.

Sim: `GET /_sim/ide/events` (what happened, never a token), `POST /_sim/ide/config`, plus the
shared /_sim/faults and /_sim/reset.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from .sim import FaultTable, add_sim_routes, fault_middleware, json_response

ISSUER, AUDIENCE, QUERY_PARAM, COOKIE = "zlh", "zlh-ide", "zlh_ide_token", "zlh_ide_session"
SESSION_SECONDS = 8 * 3600
MAX_LIST_BYTES = 1 << 20


class IdeProxyStandIn:
    def __init__(self, *, secret: str, proxy_token: str) -> None:
        self.secret = secret
        self.proxy_token = proxy_token
        self.table = FaultTable()
        self.reset()

    def reset(self) -> None:
        self.revocations_url: str | None = None
        self.refresh_s = 2.0
        self.revoked: set[str] = set()
        self.revoked_read_at = 0.0
        self.read_failures = 0
        self.seen: dict[str, float] = {}  # jti -> its exp (forgotten after it)
        self.sessions: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []

    def _event(self, what: str, vmid: int, jti: str | None = None, **more: Any) -> None:
        self.events.append({"at": time.time(), "what": what, "vmid": vmid, "jti": jti, **more})
        del self.events[:-1000]

    async def _refresh_revoked(self) -> None:
        if not self.revocations_url or time.monotonic() - self.revoked_read_at < self.refresh_s:
            return
        try:
            timeout = aiohttp.ClientTimeout(total=3)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.get(self.revocations_url, headers={
                        "Authorization": f"Bearer {self.proxy_token}"}) as resp:
                    body = await resp.content.read(MAX_LIST_BYTES + 1)
                    if resp.status != 200 or len(body) > MAX_LIST_BYTES:
                        raise ValueError(f"status {resp.status}, {len(body)} bytes")
            entries = json.loads(body)["revoked"]
            self.revoked = {str(e["jti"]) for e in entries if isinstance(e, dict)}
            self.revoked_read_at = time.monotonic()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
            self.read_failures += 1

    def _claims(self, token: str, vmid: int) -> dict[str, Any]:
        claims = jwt.decode(token, self.secret, algorithms=["HS256"], audience=AUDIENCE,
                            issuer=ISSUER, leeway=5,
                            options={"require": ["exp", "iat", "jti", "sub", "vmid"]})
        if claims.get("vmid") != vmid:
            raise jwt.InvalidTokenError("the token is for another container")
        return claims

    async def open_ide(self, request: web.Request) -> web.Response:
        try:
            vmid = int(request.match_info["vmid"])
        except ValueError:
            raise web.HTTPNotFound() from None
        now = time.time()
        self.seen = {j: exp for j, exp in self.seen.items() if exp > now}
        token = request.query.get(QUERY_PARAM)
        if token is not None:
            try:
                claims = self._claims(token, vmid)
            except jwt.InvalidTokenError as exc:
                self._event("refused", vmid, reason=type(exc).__name__)
                return web.Response(status=401, text=f"IDE token refused: {exc}")
            jti = str(claims["jti"])
            await self._refresh_revoked()
            if jti in self.revoked:
                self._event("refused", vmid, jti, reason="revoked")
                return web.Response(status=401, text="IDE token refused: revoked")
            if jti in self.seen:
                self._event("refused", vmid, jti, reason="used")
                return web.Response(status=401, text="IDE token refused: already used")
            self.seen[jti] = float(claims["exp"])
            sid = secrets.token_urlsafe(24)
            self.sessions[sid] = {"vmid": vmid, "jti": jti, "until": now + SESSION_SECONDS}
            self._event("opened", vmid, jti)
            resp = web.Response(status=303, headers={"Location": f"/dev-{vmid}/"})
            resp.set_cookie(COOKIE, sid, path=f"/dev-{vmid}/", httponly=True, samesite="Lax",
                            max_age=SESSION_SECONDS)
            return resp
        session = self.sessions.get(request.cookies.get(COOKIE, ""))
        if session is not None and session["vmid"] == vmid and session["until"] > now:
            await self._refresh_revoked()
            if session["jti"] in self.revoked:
                self.sessions = {k: v for k, v in self.sessions.items()
                                 if v["jti"] != session["jti"]}
                self._event("session_ended", vmid, session["jti"], reason="revoked")
            else:
                return web.Response(
                    text=f"<!doctype html><title>code-server dev-{vmid}</title>"
                         f"<h1>code-server (devstack) for CT {vmid}</h1>",
                    content_type="text/html")
        return web.Response(status=401, text="Open the IDE from the portal (a token is needed).")

    async def sim_events(self, request: web.Request) -> web.Response:
        return json_response({"events": self.events, "read_failures": self.read_failures,
                              "revoked": sorted(self.revoked)})

    async def sim_config(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "revocations_url" in body:
            self.revocations_url = body["revocations_url"] or None
            self.revoked_read_at = 0.0
        if "refresh_s" in body:
            self.refresh_s = float(body["refresh_s"])
        return json_response({"revocations_url": self.revocations_url,
                              "refresh_s": self.refresh_s})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[fault_middleware(self.table)])
        r = app.router
        r.add_get("/dev-{vmid}/", self.open_ide)
        add_sim_routes(app, self.table, self.reset)
        r.add_get("/_sim/ide/events", self.sim_events)
        r.add_post("/_sim/ide/config", self.sim_config)
        return app
