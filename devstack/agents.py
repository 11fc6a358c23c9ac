"""The agent stand-in: one agent per container, reachable only while its container runs.

The real ZLH agent lives inside each container and installs the game or dev runtime it is sent.
This stand-in serves the same API for every container of the devstack's Proxmox at
`/agents/{vmid}/…`, and records exactly what was pre-seeded and when the game first booted, so
tests can prove "installed before first boot". It can crash, hang or fail an install on command.

Credentials (as the real agent): a fresh agent holds none. It then answers `GET /status`
to anyone (credentialVersion null) and takes `POST /credential {"secret", "version",
"serverId", "heartbeat": {"url", "intervalSeconds"}}` unauthenticated, once (trust on first
use). From then on every call must carry `Bearer <control token>` derived from that secret and
the server id (`core/agent_tokens.py`), or is refused with 401; a new credential (rotation) too.
An agent in legacy mode (`/_sim/agents/{vmid}/legacy`) is an old agent: no /credential route
(404), it takes only the shared legacy token, and sends no heartbeats.

Heartbeats: every enrolled agent whose container runs POSTs its status to the control plane
every intervalSeconds (as told at enrolment, not scaled by the time scale: the receiver judges
the rate against the real interval), signed with its heartbeat token; the target can be
changed at runtime (`/_sim/agents/heartbeat-target`) and each agent's heartbeats stopped,
delayed or corrupted (`/_sim/agents/{vmid}/heartbeats`).

Agent API:
  GET  /agents/{vmid}/status     state, provisioningComplete, ready, game, crash, firstBootAt,
                                 credentialVersion
  POST /agents/{vmid}/credential enrol (unauthenticated, only while it has none) or rotate
  POST /agents/{vmid}/provision  the provisioning payload (same payload again is a no-op);
                                 with "reconfigure": true on an installed agent (restored from
                                 a backup): the same game's new configuration, world kept
  POST /agents/{vmid}/game/start start the game (no-op when running)
  POST /agents/{vmid}/game/stop  save the world, then stop the game (no-op when stopped)
  GET  /agents/{vmid}/ready      200 when ready, 503 otherwise
  POST /agents/{vmid}/world/flush  `save-all flush` then `save-off` (a backup is about to read
                                 the disk) {"holdSeconds"}: saving resumes by itself after that
  POST /agents/{vmid}/world/resume `save-on`
  GET  /agents/{vmid}/world      does the world load: {"loads", "seed", "generation", "error"}
  GET  /agents/{vmid}/logs?tail=N  the newest N (1-1000) lines of the game's log: {"lines"}
  POST /agents/{vmid}/console    {"command"}: one console command (409 unless the game runs):
                                 {"accepted", "output": the lines it printed}

The world and everything the agent keeps on disk (payload, installed files, credential) live
on the container's disk: a backup (`DevPve` vzdump) copies them, and a container restored from
that backup starts with them (`disk()`/`load_disk()`); players changing the world is
`/_sim/agents/{vmid}/world {"seed"}`.
Sim: /_sim/agents, /_sim/agents/{vmid}, /_sim/agents/{vmid}/crash|hang|recover,
     /_sim/agents/install-error, /_sim/agents/heartbeat-target {"url"},
     /_sim/agents/{vmid}/heartbeats {"mode": normal|stop|delay|corrupt, "delay_s",
     "interval_s", "memory_used_mb", "players_online"}, /_sim/agents/{vmid}/legacy {"on"},
     /_sim/agents/{vmid}/world (players change the world),
     /_sim/agents/{vmid}/impostor (POST: replace the agent by a listener recording every
     request and answering 200 {}; GET: the recording; DELETE: the real agent again),
     plus the shared /_sim/faults and /_sim/reset.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from core.agent_tokens import bearer, control_token, heartbeat_token, tokens_equal

from .sim import FaultTable, add_sim_routes, fault_middleware, json_response

logger = logging.getLogger(__name__)

# PVE-seconds (scaled by the Proxmox time scale) the agent's work takes.
INSTALL_SECS = 6.0
BOOT_SECS = 3.0
STOP_SECS = 1.0
HANG_SECS = 3600.0
#: How often the heartbeat loop looks for agents that are due (real seconds).
HEARTBEAT_TICK = 0.1
HEARTBEAT_TIMEOUT = 5.0
AGENT_VERSION = "devstack-1"
HEARTBEAT_MODES = ("normal", "stop", "delay", "corrupt")
#: What of an agent lives on the container's disk (a backup copies it, a restore brings it back).
DISK_FIELDS = ("provisioning_complete", "payload", "seeded", "seeded_at", "world", "secret",
               "credential_version", "server_id", "heartbeat_url", "heartbeat_interval")
#: Bounds of how long saving may stay off after a flush (real seconds).
SAVES_OFF_DEFAULT = 600.0
SAVES_OFF_MAX = 3600.0
LOG_KEEP = 2000
STATE_LINES = {"starting": "Starting minecraft server", "running": 'Done! For help, type "help"',
               "stopping": "Stopping the server", "stopped": "Saving worlds; stopped",
               "crashed": "This crash report has been saved"}
LOG_TAIL_MAX = 1000
COMMAND_MAX = 1024


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
    # The credential (held in clear here: this is the agent's side).
    secret: str | None = None
    credential_version: int | None = None
    server_id: str | None = None
    heartbeat_url: str | None = None
    heartbeat_interval: float = 30.0
    # Heartbeats sent: the switch, the counter, and what happened.
    heartbeat_mode: str = "normal"
    heartbeat_delay_s: float = 0.0
    heartbeat_interval_override: float | None = None
    heartbeat_seq: int = 0
    heartbeat_next_at: float = 0.0
    heartbeats_sent: int = 0
    heartbeat_last_status: int | None = None
    heartbeat_in_flight: bool = False
    memory_used_mb: int | None = None
    players_online: int = 0
    # The world: made at install, changed by players (a new generation), saved by flushes.
    world: dict[str, Any] | None = None
    flushes: int = 0
    saves_off_until: float | None = None  # time.time() when saving resumes by itself
    # The game's console log (the newest LOG_KEEP lines) and the commands it was sent.
    log: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.log.append(f"[{stamp}] [Server thread/INFO]: {line}")
        del self.log[:-LOG_KEEP]

    @property
    def saves_off(self) -> bool:
        return self.saves_off_until is not None and time.time() < self.saves_off_until

    def disk(self) -> dict[str, Any]:
        """What a backup of the container copies."""
        return copy.deepcopy({name: getattr(self, name) for name in DISK_FIELDS})

    def load_disk(self, disk: dict[str, Any]) -> None:
        for name in DISK_FIELDS:
            if name in disk:
                setattr(self, name, copy.deepcopy(disk[name]))
        if self.provisioning_complete:
            self.state = "stopped"

    @property
    def ready(self) -> bool:
        return self.provisioning_complete and self.state == "running" and not self.hung

    def set(self, state: str) -> None:
        self.state = state
        self.history.append((time.time(), state))
        del self.history[:-50]
        self.say(STATE_LINES.get(state, f"state {state}"))

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
            "credentialVersion": self.credential_version,
        }

    def record(self) -> dict[str, Any]:
        data = self.view()
        data.update(seeded=self.seeded, seededAt=self.seeded_at, boots=self.boots,
                    saves=self.saves, uncleanStops=self.unclean_stops,
                    payload=self.payload, history=self.history,
                    serverId=self.server_id, world=self.world, flushes=self.flushes,
                    savesOff=self.saves_off, commands=self.commands,
                    heartbeats={"mode": self.heartbeat_mode, "sent": self.heartbeats_sent,
                                "lastStatus": self.heartbeat_last_status,
                                "sequence": self.heartbeat_seq, "url": self.heartbeat_url,
                                "intervalSeconds": self.interval})
        return data

    @property
    def interval(self) -> float:
        return self.heartbeat_interval_override or self.heartbeat_interval

    def heartbeat(self, memory_limit_mb: int | None) -> dict[str, Any]:
        """What the agent reports about itself (the body of a heartbeat)."""
        self.heartbeat_seq = max(self.heartbeat_seq + 1, time.time_ns() // 1_000_000)
        crash = None
        if self.crash_count:
            oom = "OutOfMemory" in (self.crash_reason or "")
            crash = {"classification": "oom" if oom else "exit",
                     "exitCode": 137 if oom else 1, "at": self.crash_at,
                     "logTail": (self.crash_reason or "")[-4096:]}
        limit = memory_limit_mb
        used = self.memory_used_mb if self.memory_used_mb is not None else (
            (limit // 2) if limit and self.state == "running" else 0)
        return {"sequence": self.heartbeat_seq, "state": self.state,
                "provisioningComplete": self.provisioning_complete, "ready": self.ready,
                "crashCount": self.crash_count, "lastCrash": crash,
                "memoryUsedMb": used, "memoryLimitMb": limit,
                "diskUsedMb": 1024 if self.provisioning_complete else 0, "diskLimitMb": 8192,
                "playersOnline": self.players_online if self.state == "running" else 0,
                "agentVersion": AGENT_VERSION}


@dataclass
class Impostor:
    """Whatever took the agent's place: records every request, answers 200 {}."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    max_requests: int = 10_000

    async def answer(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"method": request.method, "path": request.path,
                              "headers": dict(request.headers),
                              "body": body.decode("utf-8", errors="replace")})
        del self.requests[:-self.max_requests]
        return json_response({})


class AgentFleet:
    def __init__(self, pve: Any, token: str) -> None:
        self.pve = pve
        self.token = token
        self.agents: dict[int, Agent] = {}
        self.table = FaultTable()
        self.install_errors: list[dict[str, Any]] = []
        self._timers: set[asyncio.Task] = set()
        #: Containers whose agent was replaced by a recording listener.
        self.impostors: dict[int, Impostor] = {}
        #: VMIDs whose agent is an old one (legacy shared token, no credential of its own).
        self.legacy: set[int] = set()
        #: Where heartbeats go instead of the URL told at enrolment (a test's live server).
        self.heartbeat_target: str | None = None
        self._heartbeats: asyncio.Task | None = None
        self._http: aiohttp.ClientSession | None = None

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
            restored = getattr(ct, "restored_disk", None)
            if restored:  # restored from a backup: the disk holds what the backup held
                agent.load_disk(restored)
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
            agent.world = {"seed": secrets.token_hex(8), "generation": 0}
            agent.provisioning_complete = True
            agent.set("installed")
            self._start_game(agent)

        self._later(INSTALL_SECS, done)

    # --- HTTP ---------------------------------------------------------------------------------
    @staticmethod
    def _refuse(why: str) -> web.HTTPUnauthorized:
        return web.HTTPUnauthorized(text=json.dumps({"error": why}),
                                    content_type="application/json")

    def _authenticate(self, request: web.Request, agent: Agent, *, open_: bool) -> None:
        """Raise 401 unless the request carries what this agent takes. `open_`: the route
        answers an agent without a credential unauthenticated (status, enrolment)."""
        presented = bearer(request.headers.get("Authorization"))
        if agent.vmid in self.legacy:
            if not tokens_equal(presented, self.token):
                raise self._refuse("bad agent token")
            return
        if agent.secret is None:
            if not open_:
                raise self._refuse("no credential yet: enrol first")
            return
        if not tokens_equal(presented, control_token(agent.secret, agent.server_id)):
            raise self._refuse("bad agent token")

    async def _reach(self, request: web.Request, *, open_: bool = False) -> Agent:
        vmid = int(request.match_info["vmid"])
        agent = self._sync(vmid)
        if agent is None:
            # Nothing listens on a stopped container: the connection just fails.
            request.transport.close()
            raise ConnectionResetError(f"agent {vmid} unreachable")
        self._authenticate(request, agent, open_=open_)
        if agent.hung:
            await asyncio.sleep(HANG_SECS)
        return agent

    @web.middleware
    async def _impostor_middleware(self, request: web.Request, handler):
        """A container whose agent was replaced: whatever is sent there is only recorded."""
        vmid = request.match_info.get("vmid")
        if request.path.startswith("/agents/") and vmid and vmid.isdigit() \
                and int(vmid) in self.impostors:
            return await self.impostors[int(vmid)].answer(request)
        return await handler(request)

    async def status(self, request: web.Request) -> web.Response:
        return json_response((await self._reach(request, open_=True)).view())

    async def credential(self, request: web.Request) -> web.Response:
        vmid = int(request.match_info["vmid"])
        if vmid in self.legacy:
            raise web.HTTPNotFound(text='{"error": "no such route"}',
                                   content_type="application/json")  # an old agent
        agent = await self._reach(request, open_=True)  # authenticated once it holds one
        try:
            body = await request.json()
        except ValueError:
            return json_response({"error": "credential must be JSON"}, 400)
        beat = body.get("heartbeat") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("secret"), str) \
                or len(body["secret"]) < 32 or not isinstance(body.get("version"), int) \
                or not isinstance(body.get("serverId"), str) or not isinstance(beat, dict):
            return json_response({"error": "needs secret, version, serverId, heartbeat"}, 400)
        if agent.secret == body["secret"] and agent.credential_version == body["version"]:
            return json_response({"version": agent.credential_version, "replay": True})
        agent.secret, agent.credential_version = body["secret"], body["version"]
        agent.server_id = body["serverId"]
        agent.heartbeat_url = str(beat.get("url") or "") or None
        try:
            agent.heartbeat_interval = max(0.05, float(beat.get("intervalSeconds") or 30))
        except (TypeError, ValueError):
            agent.heartbeat_interval = 30.0
        agent.heartbeat_next_at = 0.0  # the first heartbeat goes out now
        return json_response({"version": agent.credential_version})

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
        if payload.get("reconfigure") and agent.provisioning_complete:
            # A container restored from a backup taken of another server: the same game, a new
            # configuration (port, name, secrets); the installed game and the world are kept.
            game = ("kind", "variant", "version", "runtime", "runtimeVersion")
            old = agent.payload or {}
            if any(old.get(k) != payload.get(k) for k in game):
                return json_response({"error": "reconfigure: another game is installed"}, 409)
            agent.payload = {k: v for k, v in payload.items() if k != "reconfigure"}
            if agent.seeded is not None:
                agent.seeded.update(files=dict(payload.get("files", {})),
                                    serverProperties=dict(payload.get("serverProperties", {})))
            if agent.state in ("running", "starting"):
                self._start_game(agent)  # the game restarts with the new configuration
            return json_response({"accepted": True, "reconfigured": True}, 200)
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

    async def world_flush(self, request: web.Request) -> web.Response:
        """`save-all flush` + `save-off`: everything is on disk and stays as it is until
        `resume`, or by itself after holdSeconds (a control plane that died mid-backup does
        not leave the world unsaved for ever)."""
        agent = await self._reach(request)
        try:
            body = await request.json() if request.body_exists else {}
            hold = float((body or {}).get("holdSeconds", SAVES_OFF_DEFAULT))
        except (ValueError, TypeError, AttributeError):
            return json_response({"error": "holdSeconds must be a number"}, 400)
        hold = min(max(hold, 1.0), SAVES_OFF_MAX)
        if agent.state != "running":
            return json_response({"state": agent.state, "noop": True})
        agent.flushes += 1
        agent.saves += 1
        agent.last_save_at = time.time()
        agent.saves_off_until = time.time() + hold
        return json_response({"state": agent.state, "savedAt": agent.last_save_at,
                              "savesOff": True, "savesOffUntil": agent.saves_off_until})

    async def world_resume(self, request: web.Request) -> web.Response:
        agent = await self._reach(request)
        was = agent.saves_off
        agent.saves_off_until = None
        return json_response({"state": agent.state, "savesOff": False, "wasOff": was})

    async def world(self, request: web.Request) -> web.Response:
        agent = await self._reach(request)
        world = agent.world or {}
        if not agent.provisioning_complete or not world:
            return json_response({"loads": False, "error": "no world on this disk"})
        if world.get("corrupt"):
            return json_response({"loads": False, "seed": world.get("seed"),
                                  "generation": world.get("generation"),
                                  "error": "level.dat: unexpected end of ZLIB input stream"})
        return json_response({"loads": True, "seed": world.get("seed"),
                              "generation": world.get("generation"), "error": None})

    async def logs(self, request: web.Request) -> web.Response:
        """The newest `tail` lines of the game's log (at most LOG_TAIL_MAX)."""
        agent = await self._reach(request)
        try:
            tail = int(request.query.get("tail", "100"))
        except ValueError:
            return json_response({"error": "tail must be a number"}, 400)
        if not 1 <= tail <= LOG_TAIL_MAX:
            return json_response({"error": f"tail must be 1 to {LOG_TAIL_MAX}"}, 400)
        return json_response({"lines": agent.log[-tail:]})

    async def console(self, request: web.Request) -> web.Response:
        """One console command; the lines the game printed for it."""
        agent = await self._reach(request)
        try:
            command = str((await request.json())["command"])
        except (ValueError, KeyError, TypeError):
            return json_response({"error": "need command"}, 400)
        if not command or len(command) > COMMAND_MAX or "\n" in command:
            return json_response({"error": "one command of 1 to 1024 characters"}, 400)
        if agent.state != "running":
            return json_response({"error": f"the game is {agent.state}"}, 409)
        agent.commands.append(command)
        del agent.commands[:-200]
        before = len(agent.log)
        word, _, rest = command.partition(" ")
        if word == "say":
            agent.say(f"[Server] {rest}")
        elif word == "list":
            agent.say(f"There are {agent.players_online} of a max of 20 players online:")
        elif word == "save-all":
            agent.saves += 1
            agent.last_save_at = time.time()
            agent.say("Saved the game")
        elif word == "stop":  # what the control plane never sends through here
            agent.say("Stopping the server")
            agent.set("stopped")
        else:
            agent.say("Unknown or incomplete command, see below for error")
        return json_response({"accepted": True, "output": agent.log[before:][-100:]})

    def disk_of(self, vmid: int) -> dict[str, Any]:
        """The disk of container `vmid` as a backup copies it ({} before the agent ever ran)."""
        agent = self.agents.get(vmid)
        ct = self.pve.ct(vmid)
        if agent is None or ct is None or agent.incarnation != id(ct):
            restored = getattr(ct, "restored_disk", None) if ct is not None else None
            return copy.deepcopy(restored or {})
        return agent.disk()

    # --- sim ----------------------------------------------------------------------------------
    async def sim_world(self, request: web.Request) -> web.Response:
        """Players change the world (a new generation; `seed` replaces the marker)."""
        agent = self._sim_agent(request)
        body = await request.json() if request.body_exists else {}
        if agent.world is None:
            return json_response({"error": "no world yet"}, 409)
        agent.world = {"seed": str(body.get("seed") or agent.world["seed"]),
                       "generation": int(agent.world.get("generation", 0)) + 1}
        return json_response(agent.record())

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
        body = await request.json() if request.body_exists else {}
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

    async def sim_heartbeat_target(self, request: web.Request) -> web.Response:
        body = await request.json()
        url = body.get("url") if isinstance(body, dict) else None
        if url is not None and not (isinstance(url, str) and url.startswith("http")):
            return json_response({"error": "url must be an http(s) URL or null"}, 400)
        self.heartbeat_target = url.rstrip("/") if url else None
        return json_response({"url": self.heartbeat_target})

    async def sim_heartbeats(self, request: web.Request) -> web.Response:
        agent = self._sim_agent(request)
        body = await request.json()
        mode = body.get("mode", agent.heartbeat_mode)
        if mode not in HEARTBEAT_MODES:
            return json_response({"error": f"mode must be one of {HEARTBEAT_MODES}"}, 400)
        agent.heartbeat_mode = mode
        agent.heartbeat_delay_s = float(body.get("delay_s", agent.heartbeat_delay_s) or 0)
        if "interval_s" in body:
            agent.heartbeat_interval_override = float(body["interval_s"]) or None
            agent.heartbeat_next_at = 0.0
        if "memory_used_mb" in body:
            agent.memory_used_mb = body["memory_used_mb"]
        if "players_online" in body:
            agent.players_online = int(body["players_online"])
        return json_response(agent.record())

    async def sim_legacy(self, request: web.Request) -> web.Response:
        """An old agent at this VMID (before or after its container exists)."""
        vmid = int(request.match_info["vmid"])
        body = await request.json() if request.body_exists else {}
        if body.get("on", True):
            self.legacy.add(vmid)
            agent = self.agents.get(vmid)
            if agent is not None:
                agent.secret = agent.credential_version = agent.server_id = None
        else:
            self.legacy.discard(vmid)
        return json_response({"legacy": sorted(self.legacy)})

    async def sim_impostor(self, request: web.Request) -> web.Response:
        vmid = int(request.match_info["vmid"])
        if request.method == "POST":
            self.impostors[vmid] = Impostor()
            return json_response({"impostor": vmid}, 201)
        if request.method == "DELETE":
            self.impostors.pop(vmid, None)
            return json_response({"impostor": None})
        impostor = self.impostors.get(vmid)
        if impostor is None:
            raise web.HTTPNotFound(text='{"error": "no impostor there"}',
                                   content_type="application/json")
        return json_response({"requests": impostor.requests})

    # --- heartbeats ---------------------------------------------------------------------------
    def _heartbeat_url(self, agent: Agent) -> str | None:
        if self.heartbeat_target and agent.server_id:
            return f"{self.heartbeat_target}/api/v1/agents/{agent.server_id}/heartbeat"
        return agent.heartbeat_url

    async def _send_heartbeat(self, agent: Agent, url: str) -> None:
        """One heartbeat of `agent` (its switch decides: on time, late or garbage)."""
        try:
            if agent.heartbeat_mode == "delay" and agent.heartbeat_delay_s:
                await asyncio.sleep(agent.heartbeat_delay_s)
            if agent.secret is None or agent.server_id is None:
                return  # re-enrolment or legacy mode meanwhile
            ct = self.pve.ct(agent.vmid)
            limit = (ct.config.get("memory") if ct is not None else None) or None
            if agent.heartbeat_mode == "corrupt":
                data = b'{"sequence": "many", "state": ["running"], "ready": "yes"'
            else:
                data = json.dumps(agent.heartbeat(int(limit) if limit else None)).encode()
            token = heartbeat_token(agent.secret, agent.server_id)
            assert self._http is not None
            async with self._http.post(url, data=data, headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json"}) as resp:
                await resp.read()
                agent.heartbeat_last_status = resp.status
            agent.heartbeats_sent += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            agent.heartbeat_last_status = 0
            logger.debug("heartbeat of %s failed: %s", agent.vmid, exc)
        finally:
            agent.heartbeat_in_flight = False

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_TICK)
            now = time.monotonic()
            for vmid, agent in list(self.agents.items()):
                url = self._heartbeat_url(agent)
                if (url is None or agent.secret is None or vmid in self.legacy
                        or vmid in self.impostors or agent.heartbeat_mode == "stop"
                        or agent.heartbeat_in_flight or now < agent.heartbeat_next_at
                        or self._container(vmid) is None or agent.hung):
                    continue
                agent.heartbeat_next_at = now + agent.interval
                agent.heartbeat_in_flight = True
                task = asyncio.ensure_future(self._send_heartbeat(agent, url))
                self._timers.add(task)
                task.add_done_callback(self._timers.discard)

    async def _start(self, app: web.Application) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HEARTBEAT_TIMEOUT))
        self._heartbeats = asyncio.ensure_future(self._heartbeat_loop())

    async def _stop(self, app: web.Application) -> None:
        if self._heartbeats is not None:
            self._heartbeats.cancel()
        if self._http is not None:
            await self._http.close()

    def reset(self) -> None:
        for task in list(self._timers):
            task.cancel()
        self.agents.clear()
        self.install_errors.clear()
        self.impostors.clear()
        self.legacy.clear()
        self.heartbeat_target = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[fault_middleware(self.table),
                                           self._impostor_middleware])
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        r = app.router
        r.add_get("/agents/{vmid}/status", self.status)
        r.add_post("/agents/{vmid}/credential", self.credential)
        r.add_get("/agents/{vmid}/ready", self.ready)
        r.add_post("/agents/{vmid}/provision", self.provision)
        r.add_post("/agents/{vmid}/game/start", self.game_start)
        r.add_post("/agents/{vmid}/game/stop", self.game_stop)
        r.add_post("/agents/{vmid}/world/flush", self.world_flush)
        r.add_post("/agents/{vmid}/world/resume", self.world_resume)
        r.add_get("/agents/{vmid}/world", self.world)
        r.add_get("/agents/{vmid}/logs", self.logs)
        r.add_post("/agents/{vmid}/console", self.console)
        add_sim_routes(app, self.table, self.reset)
        r.add_get("/_sim/agents", self.sim_list)
        r.add_post("/_sim/agents/install-error", self.sim_install_error)
        r.add_post("/_sim/agents/heartbeat-target", self.sim_heartbeat_target)
        r.add_post("/_sim/agents/{vmid}/heartbeats", self.sim_heartbeats)
        r.add_post("/_sim/agents/{vmid}/legacy", self.sim_legacy)
        r.add_route("*", "/_sim/agents/{vmid}/impostor", self.sim_impostor)
        r.add_get("/_sim/agents/{vmid}", self.sim_get)
        r.add_post("/_sim/agents/{vmid}/crash", self.sim_crash)
        r.add_post("/_sim/agents/{vmid}/world", self.sim_world)
        r.add_post("/_sim/agents/{vmid}/hang", self.sim_hang)
        r.add_post("/_sim/agents/{vmid}/recover", self.sim_recover)
        return app
