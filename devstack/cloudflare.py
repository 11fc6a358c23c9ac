"""Cloudflare API v4 DNS stand-in, faithful to the wire format (`reference/edge-apis.md` §1).

Envelope `{success, errors[{code, message}], messages, result}` (+ `result_info` on lists);
Bearer auth (9106 missing, 10000 unknown); zone check (7003); A/SRV validation (1004, SRV only in
the current `data{priority,weight,port,target}` form); identical record 81058; unknown record
81044; paging with `page`/`per_page`; filters type, name(.exact), content, comment.exact,
comment.startswith, match=all. Sim: `POST /_sim/rate-limit {"count", "retry_after"}` answers the
next calls with 429 / code 971 and a `retry-after` header; the shared /_sim/ faults and reset.
"""
from __future__ import annotations

import ipaddress
import math
import secrets
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .sim import FaultTable, add_sim_routes, fault_middleware, json_response

BASE = "/client/v4"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope(result: Any = None, *, errors: list[dict] | None = None, status: int = 200,
             result_info: dict | None = None, headers: dict | None = None) -> web.Response:
    body: dict[str, Any] = {"success": not errors, "errors": errors or [], "messages": [],
                            "result": result if not errors else None}
    if result_info is not None:
        body["result_info"] = result_info
    return web.json_response(body, status=status, headers=headers)


def error(code: int, message: str, status: int = 400) -> web.Response:
    return envelope(errors=[{"code": code, "message": message}], status=status)


class CloudflareStandIn:
    def __init__(self, *, token: str, zone_name: str) -> None:
        self.token = token
        self.zone_name = zone_name.lower()
        self.zone_id = secrets.token_hex(16)
        self.records: dict[str, dict[str, Any]] = {}
        self.table = FaultTable()
        self.rate_limited = 0
        self.retry_after = 1

    # --- helpers ------------------------------------------------------------------------------
    def _fqdn(self, name: str) -> str:
        name = name.strip().rstrip(".").lower()
        if name in ("@", ""):
            return self.zone_name
        if name == self.zone_name or name.endswith("." + self.zone_name):
            return name
        return f"{name}.{self.zone_name}"

    def _check(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization")
        if not auth:
            return error(9106, "Missing X-Auth-Key, X-Auth-Email or Authorization headers")
        if not auth.startswith("Bearer "):
            return envelope(errors=[{"code": 6003, "message": "Invalid request headers",
                                     "error_chain": [{"code": 6111, "message":
                                                      "Invalid format for Authorization header"}]}],
                            status=400)
        if auth[len("Bearer "):] != self.token:
            return error(10000, "Authentication error", 403)
        zone = request.match_info.get("zone_id")
        if zone is not None and zone != self.zone_id:
            return error(7003, f"Could not route to /zones/{zone}/dns_records, perhaps your "
                               "object identifier is invalid?", 404)
        if self.rate_limited > 0:
            self.rate_limited -= 1
            return envelope(errors=[{"code": 971, "message":
                                     "Please wait and consider throttling your request speed"}],
                            status=429, headers={"retry-after": str(self.retry_after)})
        return None

    def _validate(self, body: Any, existing: dict | None = None) -> tuple[dict | None, web.Response | None]:
        if not isinstance(body, dict):
            return None, error(1004, "DNS Validation Error")
        rtype = str(body.get("type", existing["type"] if existing else "")).upper()
        name = body.get("name", existing["name"] if existing else None)
        if not rtype or not name:
            return None, error(1004, "DNS Validation Error: type and name are required")
        record = {
            "type": rtype,
            "name": self._fqdn(str(name)),
            "ttl": body.get("ttl", existing["ttl"] if existing else 1),
            "proxied": body.get("proxied", existing["proxied"] if existing else False),
            "comment": body.get("comment", existing["comment"] if existing else None),
            "tags": body.get("tags", existing["tags"] if existing else []),
        }
        if not isinstance(record["proxied"], bool):
            return None, error(1004, "Invalid 'proxied' value, must be a boolean")
        ttl = record["ttl"]
        if not isinstance(ttl, int) or not (ttl == 1 or 60 <= ttl <= 86400):
            return None, error(1004, "DNS Validation Error: ttl must be 1 or 60..86400")
        comment = record["comment"]
        if comment is not None and (not isinstance(comment, str) or "\n" in comment
                                    or len(comment) > 100):
            return None, error(1004, "DNS Validation Error: comment")
        if rtype == "SRV":
            data = body.get("data", existing.get("data") if existing else None)
            if not isinstance(data, dict):
                return None, error(1004, "DNS Validation Error: SRV records need data")
            if set(data) & {"service", "proto", "name"}:
                return None, error(1004, "DNS Validation Error: data.service, data.proto and "
                                         "data.name are no longer supported")
            try:
                srv = {k: int(data[k]) for k in ("priority", "weight", "port")}
            except (KeyError, TypeError, ValueError):
                return None, error(1004, "DNS Validation Error: SRV priority/weight/port")
            target = str(data.get("target", "")).rstrip(".").lower()
            if not target:
                return None, error(1004, "DNS Validation Error: SRV target")
            srv["target"] = target
            record.update(data=srv, priority=srv["priority"],
                          content=f"{srv['weight']} {srv['port']} {target}", proxied=False,
                          proxiable=False)
        else:
            content = body.get("content", existing["content"] if existing else None)
            if rtype == "A":
                try:
                    ipaddress.IPv4Address(str(content))
                except ValueError:
                    return None, envelope(errors=[{"code": 1004, "message": "DNS Validation Error",
                                                   "error_chain": [{"code": 9003,
                                                                    "message": "Invalid IP"}]}],
                                          status=400)
            if content is None:
                return None, error(1004, "DNS Validation Error: content is required")
            record.update(content=str(content), proxiable=rtype in ("A", "AAAA", "CNAME"))
        return record, None

    def _identical(self, record: dict, skip: str | None = None) -> bool:
        return any(r["type"] == record["type"] and r["name"] == record["name"]
                   and r["content"] == record["content"] and r["id"] != skip
                   for r in self.records.values())

    # --- routes -------------------------------------------------------------------------------
    async def verify(self, request: web.Request) -> web.Response:
        return self._check(request) or envelope({"id": "sim", "status": "active"})

    async def zones(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused:
            return refused
        name = request.query.get("name")
        zones = [{"id": self.zone_id, "name": self.zone_name, "status": "active"}]
        return envelope([z for z in zones if name in (None, z["name"])])

    async def list_records(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused:
            return refused
        q = request.query
        try:
            page = max(1, int(q.get("page", 1)))
            per_page = min(5000, max(1, int(q.get("per_page", 100))))
        except ValueError:
            return error(1004, "DNS Validation Error: page and per_page are numbers")
        name = q.get("name.exact") or q.get("name")
        filters = []
        if q.get("type"):
            filters.append(lambda r: r["type"] == q["type"].upper())
        if name:
            fq = self._fqdn(name)
            filters.append(lambda r: r["name"] == fq)
        if q.get("content"):
            filters.append(lambda r: r["content"] == q["content"])
        if "comment.exact" in q:
            filters.append(lambda r: r["comment"] == q["comment.exact"])
        if "comment.startswith" in q:
            filters.append(lambda r: (r["comment"] or "").startswith(q["comment.startswith"]))
        match_any = q.get("match") == "any"
        rows = sorted(self.records.values(), key=lambda r: (r["name"], r["type"], r["id"]))
        if filters:
            combine = any if match_any else all
            rows = [r for r in rows if combine(f(r) for f in filters)]
        total = len(rows)
        chunk = rows[(page - 1) * per_page: page * per_page]
        info = {"page": page, "per_page": per_page, "count": len(chunk), "total_count": total,
                "total_pages": max(1, math.ceil(total / per_page))}
        return envelope(chunk, result_info=info)

    async def create_record(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return error(1004, "DNS Validation Error: body must be JSON")
        record, problem = self._validate(body)
        if problem:
            return problem
        if self._identical(record):
            return error(81058, "An identical record already exists.")
        now = _now()
        record.update(id=secrets.token_hex(16), settings={}, meta={}, created_on=now,
                      modified_on=now)
        self.records[record["id"]] = record
        return envelope(record)

    def _get(self, request: web.Request) -> dict | None:
        return self.records.get(request.match_info["record_id"])

    async def get_record(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused:
            return refused
        record = self._get(request)
        return envelope(record) if record else error(81044, "Record does not exist.", 404)

    async def patch_record(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused:
            return refused
        current = self._get(request)
        if current is None:
            return error(81044, "Record does not exist.", 404)
        body = await request.json()
        full = request.method == "PUT"
        record, problem = self._validate(body, None if full else current)
        if problem:
            return problem
        if self._identical(record, skip=current["id"]):
            return error(81058, "An identical record already exists.")
        record.update(id=current["id"], settings={}, meta={}, created_on=current["created_on"],
                      modified_on=_now())
        self.records[current["id"]] = record
        return envelope(record)

    async def delete_record(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused:
            return refused
        record = self.records.pop(request.match_info["record_id"], None)
        if record is None:
            return error(81044, "Record does not exist.", 404)
        return envelope({"id": record["id"]})

    async def sim_rate_limit(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.rate_limited = int(body.get("count", 1))
        self.retry_after = int(body.get("retry_after", 1))
        return json_response({"rate_limited": self.rate_limited, "retry_after": self.retry_after})

    async def sim_records(self, request: web.Request) -> web.Response:
        return json_response(sorted(self.records.values(), key=lambda r: (r["name"], r["type"])))

    async def sim_seed(self, request: web.Request) -> web.Response:
        """Bulk-load records (for benchmarks): each is validated as a create would be."""
        added = 0
        for body in await request.json():
            record, problem = self._validate(body)
            if problem:
                return problem
            now = _now()
            record.update(id=secrets.token_hex(16), settings={}, meta={}, created_on=now,
                          modified_on=now)
            self.records[record["id"]] = record
            added += 1
        return json_response({"added": added}, 201)

    def reset(self) -> None:
        self.records.clear()
        self.rate_limited = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[fault_middleware(self.table)])
        r = app.router
        r.add_get(BASE + "/user/tokens/verify", self.verify)
        r.add_get(BASE + "/zones", self.zones)
        records = BASE + "/zones/{zone_id}/dns_records"
        r.add_get(records, self.list_records)
        r.add_post(records, self.create_record)
        r.add_get(records + "/{record_id}", self.get_record)
        r.add_patch(records + "/{record_id}", self.patch_record)
        r.add_put(records + "/{record_id}", self.patch_record)
        r.add_delete(records + "/{record_id}", self.delete_record)
        add_sim_routes(app, self.table, self.reset)
        r.add_post("/_sim/rate-limit", self.sim_rate_limit)
        r.add_get("/_sim/records", self.sim_records)
        r.add_post("/_sim/records", self.sim_seed)
        return app
