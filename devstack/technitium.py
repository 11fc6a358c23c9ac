"""Technitium DNS Server HTTP API stand-in (`reference/edge-apis.md` §2).

HTTP 200 for every handled `/api/*` call: `status` (`ok`, `error`, `invalid-token`) decides;
payload in `response`; token from `Authorization: Bearer` or the `token` parameter; GET or form
POST. Records are RRsets per (name, type): `records/add` appends (duplicate refused) or replaces
with `overwrite=true`; `records/get` one name or, with `listZone=true`, the whole zone;
`records/delete` needs the record's value.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .sim import FaultTable, add_sim_routes, fault_middleware, json_response


def ok(response: Any) -> web.Response:
    return web.json_response({"response": response, "server": "dns-devstack", "status": "ok"})


def fail(message: str, status: str = "error") -> web.Response:
    return web.json_response({"server": "dns-devstack", "status": status,
                              "errorMessage": message})


class TechnitiumStandIn:
    def __init__(self, *, token: str, zone: str) -> None:
        self.token = token
        self.zones: dict[str, list[dict[str, Any]]] = {zone.lower(): []}
        self.table = FaultTable()

    async def _params(self, request: web.Request) -> dict[str, str]:
        values = dict(request.query)
        if request.method == "POST" and request.body_exists:
            values.update({k: str(v) for k, v in (await request.post()).items()})
        return values

    def _authorised(self, request: web.Request, p: dict[str, str]) -> bool:
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else p.get("token")
        return token == self.token

    def _zone_for(self, domain: str, zone: str | None) -> str | None:
        if zone:
            return zone.lower() if zone.lower() in self.zones else None
        for name in sorted(self.zones, key=len, reverse=True):
            if domain == name or domain.endswith("." + name):
                return name
        return None

    @staticmethod
    def _zone_info(name: str) -> dict[str, Any]:
        return {"name": name, "type": "Primary", "internal": False, "dnssecStatus": "Unsigned",
                "disabled": False}

    def _rdata(self, rtype: str, p: dict[str, str]) -> dict[str, Any] | str:
        if rtype in ("A", "AAAA"):
            ip = p.get("ipAddress") or p.get("value")
            return {"ipAddress": ip} if ip else "Parameter 'ipAddress' missing."
        if rtype == "SRV":
            try:
                return {"priority": int(p["priority"]), "weight": int(p["weight"]),
                        "port": int(p["port"]), "target": (p.get("target") or p["value"]).rstrip(".")}
            except (KeyError, ValueError):
                return "Parameter 'priority', 'weight', 'port' and 'target' are required."
        if rtype == "TXT":
            return {"text": p.get("text", "")}
        return f"Record type {rtype} is not supported here."

    async def handle(self, request: web.Request, action: str) -> web.Response:
        p = await self._params(request)
        if not self._authorised(request, p):
            return fail("Invalid token or session expired.", "invalid-token")
        if action == "list":
            return ok({"zones": [self._zone_info(z) for z in self.zones]})
        if action == "create":
            zone = (p.get("zone") or "").lower()
            if not zone:
                return fail("Parameter 'zone' missing.")
            self.zones.setdefault(zone, [])
            return ok({"domain": zone})
        domain = (p.get("domain") or "").rstrip(".").lower()
        if not domain:
            return fail("Parameter 'domain' missing.")
        zone = self._zone_for(domain, p.get("zone"))
        if zone is None:
            return fail(f"No such zone was found: {domain}")
        records = self.zones[zone]
        if action == "records/get":
            if p.get("listZone", "false").lower() == "true":
                return ok({"zone": self._zone_info(zone), "records": list(records)})
            return ok({"zone": self._zone_info(zone),
                       "records": [r for r in records if r["name"] == domain]})
        rtype = (p.get("type") or "").upper()
        if not rtype:
            return fail("Parameter 'type' missing.")
        rdata = self._rdata(rtype, p)
        if isinstance(rdata, str):
            return fail(rdata)
        if action == "records/add":
            same_set = [r for r in records if r["name"] == domain and r["type"] == rtype]
            if p.get("overwrite", "false").lower() == "true":
                for r in same_set:
                    records.remove(r)
            elif any(r["rData"] == rdata for r in same_set):
                return fail("Cannot add record: record already exists.")
            ttl = int(p.get("ttl") or 3600)
            record = {"name": domain, "type": rtype, "ttl": ttl, "ttlString": f"{ttl}s",
                      "disabled": False, "rData": rdata, "dnssecStatus": "Unknown",
                      "lastUsedOn": "0001-01-01T00:00:00",
                      "lastModified": datetime.now(timezone.utc).isoformat(),
                      "expiryTtl": 0}
            if p.get("comments"):
                record["comments"] = p["comments"]
            records.append(record)
            return ok({"zone": self._zone_info(zone), "addedRecord": record})
        if action == "records/delete":
            match = [r for r in records if r["name"] == domain and r["type"] == rtype
                     and r["rData"] == rdata]
            if not match:
                return fail("Cannot delete record: no such record exists.")
            for r in match:
                records.remove(r)
            return ok({})
        raise web.HTTPNotFound()

    async def sim_records(self, request: web.Request) -> web.Response:
        return json_response(self.zones)

    async def sim_seed(self, request: web.Request) -> web.Response:
        """Bulk-load records (for benchmarks): {"zone", "records": [{name, type, rData, ...}]}."""
        body = await request.json()
        records = self.zones.setdefault(body["zone"].lower(), [])
        for r in body["records"]:
            records.append({"ttl": 60, "disabled": False, "dnssecStatus": "Unknown", **r})
        return json_response({"added": len(body["records"])}, 201)

    def reset(self) -> None:
        for zone in self.zones:
            self.zones[zone] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[fault_middleware(self.table)])
        for action in ("list", "create", "records/add", "records/get", "records/delete"):
            path = f"/api/zones/{action}"
            handler = (lambda a: (lambda req: self.handle(req, a)))(action)
            app.router.add_route("GET", path, handler)
            app.router.add_route("POST", path, handler)
        add_sim_routes(app, self.table, self.reset)
        app.router.add_get("/_sim/records", self.sim_records)
        app.router.add_post("/_sim/records", self.sim_seed)
        return app
