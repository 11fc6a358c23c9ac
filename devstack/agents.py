"""The agent stand-in: one agent per container, reachable only while its container runs.

The real ZLH agent lives inside each container and installs the game or dev runtime it is sent.
This stand-in serves the same API for every container of the devstack's Proxmox at
`/agents/{vmid}/…`, and records exactly what was pre-seeded and when the game first booted, so
tests can prove "installed before first boot". It can crash, hang or fail an install on command.

Agent API (Bearer token):
  GET  /agents/{vmid}/status     state, provisioningComplete, ready, game, crash, firstBootAt
  POST /agents/{vmid}/provision  the provisioning payload (same payload again is a no-op)
  POST /agents/{vmid}/game/start start the game (no-op when running)
  POST /agents/{vmid}/game/stop  save the world, then stop the game (no-op when stopped)
  GET  /agents/{vmid}/ready      200 when ready, 503 otherwise
Sim: /_sim/agents, /_sim/agents/{vmid}, /_sim/agents/{vmid}/crash|hang|recover,
     /_sim/agents/install-error, plus the shared /_sim/faults and /_sim/reset.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .sim import FaultTable, add_sim_routes, fault_middleware, json_response

# PVE-seconds (scaled by the Proxmox time scale) the agent's work takes.
INSTALL_SECS = 6.0
BOOT_SECS = 3.0
STOP_SECS = 1.0
HANG_SECS = 3600.0


@dataclass
class Agent:
    vmid: int
    incarnation: int  # id() of the container object: a new container means a new agent
    state: str = "idle"
    provisioning_complete: bool = False
    payload: dict[str, Any] | None = None
    seeded: dict[str, Any] | None = None
    seeded_at: float | None = None
    first_boot_at: float | None = None
    game_started_at: float | None = None
    last_save_at: float | None = None
    saves: int = 0
    boots: int = 0
    unclean_stops: int = 0
    crash_count: int = 0
    crash_at: float | None = None
    crash_reason: str | None = None
    error: str | None = None
    hung: bool = False
    container_started_at: float | None = None
    history: list[tuple[float, str]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.provisioning_complete and self.state == "running" and not self.hung

    def set(self, state: str) -> None:
        self.state = state
        self.history.append((time.time(), state))
        del self.history[:-50]

    def view(self) -> dict[str, Any]:
        return {
            "vmid": self.vmid,
            "state": self.state,
            "provisioningComplete": self.provisioning_complete,
            "ready": self.ready,
            "error": self.error,
            "game": {"state": self.state, "startedAt": self.game_started_at,
                     "lastSaveAt": self.last_save_at},
            "crash": ({"count": self.crash_count, "lastAt": self.crash_at,
                       "reason": self.crash_reason} if self.crash_count else None),
            "firstBootAt": self.first_boot_at,
        }

    def record(self) -> dict[str, Any]:
        data = self.view()
        data.update(seeded=self.seeded, seededAt=self.seeded_at, boots=self.boots,
                    saves=self.saves, uncleanStops=self.unclean_stops,
                    payload=self.payload, history=self.history)
        return data


class AgentFleet:
    def __init__(self, pve: Any, token: str) -> None:
        self.pve = pve
        self.token = token
        self.agents: dict[int, Agent] = {}
        self.table = FaultTable()
        self.install_errors: list[dict[str, Any]] = []
        self._timers: set[asyncio.Task] = set()

    # --- time ---------------------------------------------------------------------------------
    def _later(self, secs: float, fn) -> None:
        scale = self.pve.time_scale
        if not scale:
            fn()
            return

        async def run():
            await asyncio.sleep(secs * scale)
            fn()

        task = asyncio.ensure_future(run())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    # --- the container under the agent ----------------------------------------------------------
    def _container(self, vmid: int):
        ct = self.pve.ct(vmid)
        if ct is None or ct.status != "running":
            return None
        if not self.pve.nodes.get(ct.node, {}).get("online", True):
            return None
        return ct

    def _sync(self, vmid: int) -> Agent | None:
        """The agent of the running container `vmid`, brought up to date; None if unreachable."""
        ct = self.pve.ct(vmid)
        agent = self.agents.get(vmid)
        if ct is None:
            return None
        if agent is None or agent.incarnation != id(ct):
            agent = self.agents[vmid] = Agent(vmid=vmid, incarnation=id(ct))
        if self._container(vmid) is None:
            if agent.state in ("running", "starting", "installing"):
                if agent.state == "running":
                    agent.unclean_stops += 1
                agent.set("stopped" if agent.provisioning_complete else "idle")
            agent.container_started_at = None
            return None
        if agent.container_started_at != ct.started_at:
            # The container (re)booted: the agent process starts, the game autostarts if the
            # server is installed.
            agent.container_started_at = ct.started_at
            agent.hung = False
            if agent.provisioning_complete and agent.state in ("stopped", "crashed", "installed"):
                self._start_game(agent)
            elif agent.payload is not None and not agent.provisioning_complete and \
                    agent.state == "idle":
                self._install(agent, agent.payload)  # the agent resumes a cut-short install
        return agent

    # --- game ---------------------------------------------------------------------------------
    def _start_game(self, agent: Agent) -> None:
        agent.set("starting")
        incarnation, started = agent.incarnation, agent.container_started_at

        def booted():
            if agent.incarnation != incarnation or agent.container_started_at != started:
                return
            if agent.state == "starting":
                agent.boots += 1
                now = time.time()
                agent.first_boot_at = agent.first_boot_at or now
                agent.game_started_at = now
                agent.set("running")

        self._later(BOOT_SECS, booted)

    def _install(self, agent: Agent, payload: dict[str, Any]) -> None:
        agent.payload = payload
        agent.error = None
        agent.set("installing")
        failure = next((e for e in self.install_errors if e["count"] > 0), None)
        if failure:
            failure["count"] -= 1

        def done():
            if agent.state != "installing":
                return
            if failure:
                agent.error = failure["message"]
                agent.set("failed")
                return
            # Everything is written to disk before the game is ever started.
            agent.seeded = {
                "kind": payload.get("kind"),
                "variant": payload.get("variant"),
                "version": payload.get("version"),
                "mods": [m.get("name") if isinstance(m, dict) else m
                         for m in payload.get("mods", [])],
                "files": dict(payload.get("files", {})),
                "serverProperties": dict(payload.get("serverProperties", {})),
                "runtime": payload.get("runtime"),
                "runtimeVersion": payload.get("runtimeVersion"),
                "codeServer": payload.get("codeServer"),
            }
            agent.seeded_at = time.time()
            agent.provisioning_complete = True
            agent.set("installed")
            self._start_game(agent)

        self._later(INSTALL_SECS, done)

    # --- HTTP ---------------------------------------------------------------------------------
    async def _reach(self, request: web.Request) -> Agent:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized(text='{"error": "bad agent token"}',
                                       content_type="application/json")
        vmid = int(request.match_info["vmid"])
        agent = self._sync(vmid)
        if agent is None:
            # Nothing listens on a stopped container: the connection just fails.
            request.transport.close()
            raise ConnectionResetError(f"agent {vmid} unreachable")
        if agent.hung:
            await asyncio.sleep(HANG_SECS)
        return agent

    async def status(self, request: web.Request) -> web.Response:
        return json_response((await self._reach(request)).view())

    async def ready(self, request: web.Request) -> web.Response:
        agent = await self._reach(request)
        return json_response({"ready": agent.ready, "state": agent.state},
                             200 if agent.ready else 503)

    async def provision(self, request: web.Request) -> web.Response:
        agent = await self._reach(request)
        try:
            payload = await request.json()
        except ValueError:
            return json_response({"error": "payload must be JSON"}, 400)
        if not isinstance(payload, dict) or payload.get("kind") not in ("game", "dev"):
            return json_response({"error": "payload needs kind game|dev"}, 400)
        if agent.payload is not None and agent.state not in ("failed", "idle"):
            if agent.payload == payload:
                return json_response({"accepted": True, "replay": True}, 200)
            return json_response({"error": "already provisioned with another payload"}, 409)
        # idle with a payload: an install was cut short (the container went away); start over.
        self._install(agent, payload)
        return json_response({"accepted": True}, 202)

    async def game_start(self, request: web.Request) -> web.Response:
        agent = await self._reach(request)
        if not agent.provisioning_complete:
            return json_response({"error": "not provisioned"}, 409)
        if agent.state in ("running", "starting"):
            return json_response({"state": agent.state, "noop": True})
        self._start_game(agent)
        return json_response({"state": agent.state}, 202)

    async def game_stop(self, request: web.Request) -> web.Response:
        agent = await self._reach(request)
        if agent.state in ("running", "starting"):
            agent.last_save_at = time.time()
            agent.saves += 1
            agent.set("stopping")

            def stopped():
                if agent.state == "stopping":
                    agent.set("stopped")

            self._later(STOP_SECS, stopped)
            return json_response({"state": agent.state, "savedAt": agent.last_save_at}, 202)
        return json_response({"state": agent.state, "noop": True})

    # --- sim ----------------------------------------------------------------------------------
    def _sim_agent(self, request: web.Request) -> Agent:
        vmid = int(request.match_info["vmid"])
        agent = self._sync(vmid) or self.agents.get(vmid)
        if agent is None:
            raise web.HTTPNotFound(text='{"error": "no such agent"}',
                                   content_type="application/json")
        return agent

    async def sim_list(self, request: web.Request) -> web.Response:
        for vmid in list(self.agents):
            self._sync(vmid)
        return json_response({str(v): a.record() for v, a in self.agents.items()})

    async def sim_get(self, request: web.Request) -> web.Response:
        return json_response(self._sim_agent(request).record())

    async def sim_crash(self, request: web.Request) -> web.Response:
        agent = self._sim_agent(request)
        body = await request.json() if request.can_read_body else {}
        agent.crash_count += 1
        agent.crash_at = time.time()
        agent.crash_reason = body.get("reason", "java.lang.OutOfMemoryError: Java heap space")
        agent.set("crashed")
        return json_response(agent.record())

    async def sim_hang(self, request: web.Request) -> web.Response:
        agent = self._sim_agent(request)
        agent.hung = True
        return json_response(agent.record())

    async def sim_recover(self, request: web.Request) -> web.Response:
        agent = self._sim_agent(request)
        agent.hung = False
        if agent.state == "crashed":
            self._start_game(agent)
        return json_response(agent.record())

    async def sim_install_error(self, request: web.Request) -> web.Response:
        body = await request.json()
        rule = {"message": str(body.get("message", "install failed")),
                "count": int(body.get("count", 1))}
        self.install_errors.append(rule)
        return json_response(rule, 201)

    def reset(self) -> None:
        for task in list(self._timers):
            task.cancel()
        self.agents.clear()
        self.install_errors.clear()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[fault_middleware(self.table)])
        r = app.router
        r.add_get("/agents/{vmid}/status", self.status)
        r.add_get("/agents/{vmid}/ready", self.ready)
        r.add_post("/agents/{vmid}/provision", self.provision)
        r.add_post("/agents/{vmid}/game/start", self.game_start)
        r.add_post("/agents/{vmid}/game/stop", self.game_stop)
        add_sim_routes(app, self.table, self.reset)
        r.add_get("/_sim/agents", self.sim_list)
        r.add_post("/_sim/agents/install-error", self.sim_install_error)
        r.add_get("/_sim/agents/{vmid}", self.sim_get)
        r.add_post("/_sim/agents/{vmid}/crash", self.sim_crash)
        r.add_post("/_sim/agents/{vmid}/hang", self.sim_hang)
        r.add_post("/_sim/agents/{vmid}/recover", self.sim_recover)
        return app
