"""Proxmox VE for the devstack: `fakepve` (PVE's API, status codes and wording) with our `/_sim/`
controls on the same HTTPS port.

Beyond the shared faults: a node offline, a held config lock, a task that ends in `TASK ERROR`,
the time scale, and a read-only view of the containers for tests.

The firewall is fakepve's (options, rules, IP sets; kept per VMID, so it travels with a
migration). The devstack starts with the datacenter firewall on, and a destroyed container's
firewall config goes with it, as in PVE.

Moving a container between nodes, two ways:
- PVE's own `POST /nodes/{node}/lxc/{vmid}/migrate` (`target`, and `restart=1` for a running
  container) is fakepve's: a `vzmigrate` task that holds the `migrate` lock, shuts a running
  container down, moves it and starts it again on the target — what an operator's
  `pct migrate` does.
- `POST /_sim/containers/{vmid}/migrate {"node": "pve2"}` moves it at once, power state kept,
  no task and no lock, even while its old node is offline: what Proxmox HA leaves behind once
  it has recovered a container from a lost node (404 for an unknown guest or node).
"""
from __future__ import annotations

from typing import Any

from aiohttp import web
from fakepve.model import TaskError
from fakepve.server import FakePve

from .sim import Fault, FaultTable, add_sim_routes, fault_middleware, json_response

OSTEMPLATE_STORAGE = "local"
OSTEMPLATE_NAME = "debian-12-standard_12.7-1_amd64.tar.zst"
OSTEMPLATE = f"{OSTEMPLATE_STORAGE}:vztmpl/{OSTEMPLATE_NAME}"


def _pve_error(fault: Fault) -> web.Response:
    """An injected failure the way PVE sends one: the text in the reason phrase and the body.
    An injected success (status < 400) answers PVE's envelope around the given body."""
    if fault.status is not None and fault.status < 400:
        return web.json_response({"data": fault.body}, status=fault.status)
    body = fault.body
    message = str(body.get("message", body) if isinstance(body, dict) else body or "")
    message = message.splitlines()[0][:200] if message.strip() else "injected failure"
    return web.json_response({"data": None, "message": message + "\n"}, status=fault.status,
                             reason=message)


class DevPve(FakePve):
    """FakePve with the devstack's control API."""

    def __init__(self, *args: Any, nodes: tuple[str, ...] = ("pve1", "pve2"),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sim_table = FaultTable()
        self.task_faults: list[dict[str, Any]] = []
        self.node_names = nodes
        self._setup_world()

    def _setup_world(self) -> None:
        self.nodes = {name: {"online": True} for name in self.node_names}
        # A cluster set up as the firewall needs it: the datacenter firewall on (the guest
        # rules only filter then), as the operator's runbook asks.
        self.__dict__.pop("_fw_state", None)
        self.firewall_config("cluster")["options"]["enable"] = 1
        self.store_file(OSTEMPLATE_STORAGE, OSTEMPLATE_NAME, 128 * 1024**2, content="vztmpl")
        # PVE seconds the container tasks take (scaled by time_scale; nothing at 0).
        self.ct_secs.update(create=4, destroy=2)

    def reset_world(self) -> None:
        self.cts.clear()
        self.tasks.clear()
        self.tasklog.clear()
        self.failures.clear()
        self.task_faults.clear()
        self.requests.clear()
        self.storages[OSTEMPLATE_STORAGE]["volumes"] = {}
        self._setup_world()

    def _drop(self, ct) -> None:
        """A destroyed container's firewall config goes with it, as in PVE (`pct destroy`
        removes the VMID's `.fw` file); fakepve's LXC side keeps it."""
        super()._drop(ct)
        self._fw()["guests"].pop(int(ct.vmid), None)

    # --- a task that ends in TASK ERROR -----------------------------------------------------
    async def task(self, node, ttype, tid, user, body, vm=None, lock=True, log=()):
        rule = next((r for r in self.task_faults if r["type"] == ttype and r["count"] > 0), None)
        if rule is not None:
            rule["count"] -= 1
            message = rule["message"]
            original_vm = vm

            async def failing():
                if ttype == "vzcreate" and original_vm is not None:
                    # PVE removes the half-made container when its create task fails.
                    self._drop(original_vm)
                    raise TaskError(f"unable to create CT {tid} - {message}")
                raise TaskError(message)

            body = failing
        return await super().task(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)

    # --- app ----------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = super()._build_app()
        app.middlewares.insert(0, fault_middleware(self.sim_table, render=_pve_error))
        add_sim_routes(app, self.sim_table, self.reset_world)
        r = app.router
        r.add_post("/_sim/nodes/{node}/offline", self._sim_offline)
        r.add_post("/_sim/lock/{vmid}", self._sim_lock)
        r.add_delete("/_sim/lock/{vmid}", self._sim_unlock)
        r.add_post("/_sim/task-errors", self._sim_task_error)
        r.add_post("/_sim/time-scale", self._sim_time_scale)
        r.add_get("/_sim/containers", self._sim_containers)
        r.add_post("/_sim/containers", self._sim_add_containers)
        r.add_post("/_sim/containers/{vmid}/migrate", self._sim_migrate)
        return app

    async def _sim_migrate(self, request: web.Request) -> web.Response:
        """Move a container to another node at once (an HA recovery; see the docstring)."""
        vmid = int(request.match_info["vmid"])
        node = str((await request.json()).get("node", ""))
        ct = self.ct(vmid)
        if ct is None:
            return json_response({"error": f"no container {vmid}"}, 404)
        if node not in self.nodes:
            return json_response({"error": f"no node {node}"}, 404)
        moved_from, ct.node = ct.node, node
        return json_response({"vmid": vmid, "from": moved_from, "node": node,
                              "status": ct.status})

    async def _sim_offline(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        if node not in self.nodes:
            return json_response({"error": f"no node {node}"}, 404)
        offline = bool((await request.json()).get("offline", True))
        self.set_node_offline(node, offline)
        return json_response({"node": node, "online": not offline})

    async def _sim_lock(self, request: web.Request) -> web.Response:
        vmid = int(request.match_info["vmid"])
        if self.guest(vmid) is None:
            return json_response({"error": f"no guest {vmid}"}, 404)
        secs = (await request.json()).get("secs")
        try:
            await self.hold_config_lock(vmid, secs)
        except TaskError as exc:  # a task holds it right now
            return json_response({"error": str(exc)}, 409)
        return json_response({"vmid": vmid, "locked_for": secs})

    async def _sim_unlock(self, request: web.Request) -> web.Response:
        vmid = int(request.match_info["vmid"])
        if self.guest(vmid) is not None:
            self.release_config_lock(vmid)
        return json_response({"vmid": vmid, "locked": False})

    async def _sim_task_error(self, request: web.Request) -> web.Response:
        spec = await request.json()
        rule = {"type": str(spec["type"]), "message": str(spec.get("message", "injected")),
                "count": int(spec.get("count", 1))}
        self.task_faults.append(rule)
        return json_response(rule, 201)

    async def _sim_time_scale(self, request: web.Request) -> web.Response:
        self.time_scale = float((await request.json())["scale"])
        return json_response({"time_scale": self.time_scale})

    async def _sim_add_containers(self, request: web.Request) -> web.Response:
        """Bulk-add containers (benchmarks): [{"vmid", "node", "tags", "status", "hostname"}]."""
        specs = await request.json()
        for spec in specs:
            self.add_ct(int(spec["vmid"]), spec.get("hostname"),
                             node=spec.get("node", "pve1"), status=spec.get("status", "stopped"),
                             config={"tags": spec.get("tags", ""), "memory": spec.get("memory", 512)})
        return json_response({"added": len(specs)}, 201)

    async def _sim_containers(self, request: web.Request) -> web.Response:
        return json_response([
            {"vmid": ct.vmid, "node": ct.node, "status": ct.status,
             "tags": ct.config.get("tags", ""), "hostname": ct.config.get("hostname"),
             "net0": ct.config.get("net0"), "memory": ct.config.get("memory"),
             "cores": ct.config.get("cores"), "lock": ct.config.get("lock")}
            for ct in self.cts
        ])
