"""The `/_sim/` control API every stand-in shares.

`POST /_sim/faults` with `{"method", "path" (regex), "status", "body"?, "count", "delay_s"?}`
makes the next `count` matching calls fail (or only stall, when no status is given);
garbage answers (with a status, usually 200) add one of:
  "raw": "<html>…"       this text verbatim (content type "content_type", default text/html),
                         never wrapped in the stand-in's envelope;
  "size_bytes": N        a valid JSON body of N bytes (`{"pad": "xxx…"}`), for size caps;
  "drip_s": S            the body (raw or JSON) sent one byte every S seconds, for deadlines;
and "headers": {…} sets response headers (e.g. a `retry-after` that is an HTTP-date or 0).
`DELETE /_sim/faults` clears them; `POST /_sim/reset` empties the stand-in's state. Each
stand-in adds its own routes beside these.

`POST /_sim/journal` starts a journal of every call, byte for byte (when, method, path as sent,
headers, body, status and a short answer), `GET /_sim/journal` reads it and `DELETE
/_sim/journal` ends it: bench/provision_throughput.py replays a control plane's calls with a bare
client to measure what the control plane adds.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    count: int
    status: int | None = None
    body: Any = None
    delay_s: float = 0.0
    raw: str | None = None
    content_type: str = "text/html"
    size_bytes: int = 0
    drip_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    @property
    def garbage(self) -> bool:
        """The answer is made here, byte for byte, not by the stand-in's renderer."""
        return self.raw is not None or self.size_bytes > 0 or self.drip_s > 0


@dataclass
class FaultTable:
    """Faults keyed by nothing: the first matching fault with calls left applies."""

    faults: list[Fault] = field(default_factory=list)
    #: Every call seen (method, path, status), for call counting in tests and benchmarks.
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    max_calls: int = 200_000
    #: Every call in full while a journal is on (None: off); bounded by max_journal.
    journal: list[dict[str, Any]] | None = None
    max_journal: int = 100_000

    def add(self, spec: dict[str, Any]) -> Fault:
        try:
            fault = Fault(
                method=str(spec.get("method", "*")).upper(),
                path=re.compile(spec.get("path", ".*")),
                count=int(spec.get("count", 1)),
                status=int(spec["status"]) if spec.get("status") is not None else None,
                body=spec.get("body"),
                delay_s=float(spec.get("delay_s", 0) or 0),
                raw=str(spec["raw"]) if spec.get("raw") is not None else None,
                content_type=str(spec.get("content_type") or "text/html"),
                size_bytes=int(spec.get("size_bytes", 0) or 0),
                drip_s=float(spec.get("drip_s", 0) or 0),
                headers={str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
            )
        except (re.error, TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"bad fault: {exc}"}),
                                     content_type="application/json") from exc
        if fault.count < 1:
            raise web.HTTPBadRequest(text='{"error": "count must be >= 1"}',
                                     content_type="application/json")
        self.faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.count > 0 and fault.method in ("*", method) and fault.path.search(path):
                fault.count -= 1
                fault.hits += 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def record(self, method: str, path: str, status: int) -> None:
        self.calls.append((method, path, status))
        if len(self.calls) > self.max_calls:
            del self.calls[: len(self.calls) - self.max_calls]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def fault_middleware(table: FaultTable, *, render: Callable[[Fault], web.Response] | None = None):
    """aiohttp middleware applying the table's faults to every non-/_sim request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            # Control routes skip every other middleware (fakepve's authentication included).
            return await request.match_info.handler(request)
        fault = table.take(request.method, request.path)
        if fault is not None:
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            if fault.status is not None:
                table.record(request.method, request.path, fault.status)
                if fault.garbage:
                    return await _garbage(request, fault)
                if render is not None:
                    response = render(fault)
                else:
                    body = fault.body if fault.body is not None else {"error": "injected fault"}
                    response = web.json_response(body, status=fault.status)
                response.headers.update(fault.headers)
                return response
        body = await request.read() if table.journal is not None else b""
        started = time.time()
        response = await handler(request)
        table.record(request.method, request.path, getattr(response, "status", 0))
        if table.journal is not None and len(table.journal) < table.max_journal:
            table.journal.append(_journal_entry(request, body, started, response))
        return response

    return middleware


#: Request headers a replay does not send again (the client library sets its own).
_HOP_HEADERS = {"host", "content-length", "connection", "accept-encoding", "user-agent",
                "accept", "keep-alive"}


def _journal_entry(request: web.Request, body: bytes, started: float,
                   response: web.StreamResponse) -> dict[str, Any]:
    answer = getattr(response, "body", None)
    return {"t": started, "method": request.method, "path": request.raw_path,
            "headers": {k: v for k, v in request.headers.items()
                        if k.lower() not in _HOP_HEADERS},
            "body": base64.b64encode(body).decode(),
            "status": getattr(response, "status", 0),
            # The answer when short (ids and task UPIDs a replay maps to its own).
            "answer": answer.decode("utf-8", "replace")
            if isinstance(answer, bytes) and len(answer) <= 4096 else None}


async def _garbage(request: web.Request, fault: Fault) -> web.StreamResponse:
    """A raw, huge or slowly dripped answer (see the module docstring)."""
    if fault.raw is not None:
        body, content_type = fault.raw.encode(), fault.content_type
    elif fault.size_bytes > 0:
        pad = max(0, fault.size_bytes - len('{"pad": ""}'))
        body, content_type = ('{"pad": "' + "x" * pad + '"}').encode(), "application/json"
    else:
        body = json.dumps(fault.body if fault.body is not None else {}).encode()
        content_type = "application/json"
    response = web.StreamResponse(status=fault.status or 200,
                                  headers={"Content-Type": content_type, **fault.headers})
    response.content_length = len(body)
    await response.prepare(request)
    if fault.drip_s > 0:
        for i in range(len(body)):
            await response.write(body[i:i + 1])
            await asyncio.sleep(fault.drip_s)
    else:
        for i in range(0, len(body), 1 << 20):
            await response.write(body[i:i + (1 << 20)])
    await response.write_eof()
    return response


def add_sim_routes(app: web.Application, table: FaultTable,
                   reset: Callable[[], Awaitable[None] | None]) -> None:
    """The shared control routes: faults, reset, call counts."""

    async def post_fault(request: web.Request) -> web.Response:
        fault = table.add(await request.json())
        return json_response({"added": {"method": fault.method, "path": fault.path.pattern,
                                        "count": fault.count, "status": fault.status}}, 201)

    async def delete_faults(request: web.Request) -> web.Response:
        table.faults.clear()
        return json_response({"cleared": True})

    async def list_faults(request: web.Request) -> web.Response:
        return json_response([{"method": f.method, "path": f.path.pattern, "count": f.count,
                               "status": f.status, "hits": f.hits, "garbage": f.garbage}
                              for f in table.faults])

    async def post_reset(request: web.Request) -> web.Response:
        table.faults.clear()
        table.calls.clear()
        result = reset()
        if asyncio.iscoroutine(result):
            await result
        return json_response({"reset": True})

    async def get_calls(request: web.Request) -> web.Response:
        return json_response({"total": len(table.calls),
                              "calls": [list(c) for c in table.calls[-int(request.query.get("last", 1000)):]]})

    async def delete_calls(request: web.Request) -> web.Response:
        table.calls.clear()
        return json_response({"cleared": True})

    async def post_journal(request: web.Request) -> web.Response:
        table.journal = []
        return json_response({"journal": "on"})

    async def get_journal(request: web.Request) -> web.Response:
        return json_response({"calls": table.journal or []})

    async def delete_journal(request: web.Request) -> web.Response:
        table.journal = None
        return json_response({"journal": "off"})

    app.router.add_post("/_sim/journal", post_journal)
    app.router.add_get("/_sim/journal", get_journal)
    app.router.add_delete("/_sim/journal", delete_journal)
    app.router.add_post("/_sim/faults", post_fault)
    app.router.add_delete("/_sim/faults", delete_faults)
    app.router.add_get("/_sim/faults", list_faults)
    app.router.add_post("/_sim/reset", post_reset)
    app.router.add_get("/_sim/calls", get_calls)
    app.router.add_delete("/_sim/calls", delete_calls)
