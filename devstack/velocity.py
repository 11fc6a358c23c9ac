"""Velocity bridge stand-in: the HTTP plugin our Velocity proxy runs to register backends.

Semantics follow Velocity's own registry (`reference/edge-apis.md` §3): names are
case-insensitive; registering equal info again is a no-op (200); the same name with another
address is refused (409, "already registered") so the caller must unregister first; unregistering
an unknown name is 404. Registrations live in memory only: `POST /_sim/restart` drops them all,
as a proxy restart does.

  GET    /health                 {"status": "ok", "servers": N}
  GET    /servers                {"servers": [{"name", "address", "hosts"}]}
  POST   /servers                {"name", "address": "ip:port", "hosts": [...]}
  DELETE /servers/{name}
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from .sim import FaultTable, add_sim_routes, fault_middleware, json_response


class VelocityStandIn:
    def __init__(self, *, token: str) -> None:
        self.token = token
        self.servers: dict[str, dict[str, Any]] = {}
        self.restarts = 0
        self.table = FaultTable()

    def _auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized(text='{"error": "bad token"}',
                                       content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", "servers": len(self.servers),
                              "restarts": self.restarts})

    async def list_servers(self, request: web.Request) -> web.Response:
        self._auth(request)
        return json_response({"servers": sorted(self.servers.values(), key=lambda s: s["name"])})

    async def register(self, request: web.Request) -> web.Response:
        self._auth(request)
        try:
            body = await request.json()
            name, address = str(body["name"]), str(body["address"])
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(address)
        except (ValueError, KeyError, TypeError):
            return json_response({"error": "need name and address host:port"}, 400)
        info = {"name": name.lower(), "address": address,
                "hosts": sorted(h.lower() for h in body.get("hosts", []))}
        current = self.servers.get(info["name"])
        if current == info:
            return json_response({"registered": info, "changed": False})
        if current is not None:
            return json_response({"error": f"Server with name {name} already registered"}, 409)
        self.servers[info["name"]] = info
        return json_response({"registered": info, "changed": True}, 201)

    async def unregister(self, request: web.Request) -> web.Response:
        self._auth(request)
        name = request.match_info["name"].lower()
        if self.servers.pop(name, None) is None:
            return json_response({"error": f"Server with name {name} is not registered!"}, 404)
        return json_response({"unregistered": name})

    async def sim_restart(self, request: web.Request) -> web.Response:
        dropped = len(self.servers)
        self.servers.clear()
        self.restarts += 1
        return json_response({"dropped": dropped})

    async def sim_seed(self, request: web.Request) -> web.Response:
        """Bulk-load registrations (for benchmarks)."""
        servers = await request.json()
        for s in servers:
            self.servers[s["name"].lower()] = {"name": s["name"].lower(), "address": s["address"],
                                               "hosts": sorted(s.get("hosts", []))}
        return json_response({"added": len(servers)}, 201)

    def reset(self) -> None:
        self.servers.clear()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[fault_middleware(self.table)])
        r = app.router
        r.add_get("/health", self.health)
        r.add_get("/servers", self.list_servers)
        r.add_post("/servers", self.register)
        r.add_delete("/servers/{name}", self.unregister)
        add_sim_routes(app, self.table, self.reset)
        r.add_post("/_sim/restart", self.sim_restart)
        r.add_post("/_sim/servers", self.sim_seed)
        return app
