"""Proxmox VE for the devstack: `fakepve` (PVE's API, status codes and wording) with our `/_sim/`
controls on the same HTTPS port.

Beyond the shared faults: a node offline, a held config lock, a task that ends in `TASK ERROR`,
the time scale, and a read-only view of the containers for tests.

The firewall is fakepve's (options, rules, IP sets; kept per VMID, so it travels with a
migration). The devstack starts with the datacenter firewall on, and a destroyed container's
firewall config goes with it, as in PVE.

Backups (fakepve has the `backup` content type, `restore=1` creates and volume deletes, but no
vzdump route): `POST /nodes/{node}/vzdump` (one guest, `storage`, `mode`, `notes-template`) is a
`vzdump` task that holds the container's `backup` lock for `ct_secs["backup"]` PVE seconds, one
job at a time per node as PVE's global lock does, and leaves
`backup/vzdump-lxc-<vmid>-<YYYY_MM_DD-HH_MM_SS>.tar.zst` on the storage with its size, ctime,
vmid and notes. The archive holds a copy of the container's disk as the agent stand-in keeps it
(payload, credential, world: `disk_source`); a container restored from it (`restore=1`) starts
with that disk. `POST /_sim/backups/corrupt {"volid"}` damages an archive's world, and
`GET /_sim/backups` lists the archives with their disks.

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

import asyncio
import copy
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from fakepve.model import PveError, TaskError
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
        #: Tasks running now and the most seen at once, per "node/type" (`/_sim/task-peaks`).
        self.tasks_now: Counter[str] = Counter()
        self.tasks_peak: Counter[str] = Counter()
        self.node_names = nodes
        #: volid -> the container's disk as the archive holds it.
        self.backup_disks: dict[str, dict[str, Any]] = {}
        #: vmid -> the container's disk now (the agent stand-in's; set by the launcher).
        self.disk_source: Callable[[int], dict[str, Any]] = lambda vmid: {}
        self._vzdump_locks: dict[str, asyncio.Lock] = {}
        #: Archive bytes (a world of 64 MiB plus what the disk holds).
        self.backup_base_size = 64 * 1024**2
        self._setup_world()

    def _setup_world(self) -> None:
        self.nodes = {name: {"online": True} for name in self.node_names}
        # A cluster set up as the firewall needs it: the datacenter firewall on (the guest
        # rules only filter then), as the operator's runbook asks.
        self.__dict__.pop("_fw_state", None)
        self.firewall_config("cluster")["options"]["enable"] = 1
        self.store_file(OSTEMPLATE_STORAGE, OSTEMPLATE_NAME, 128 * 1024**2, content="vztmpl")
        # PVE seconds the container tasks take (scaled by time_scale; nothing at 0).
        self.ct_secs.update(create=4, destroy=2, backup=3)

    def reset_world(self) -> None:
        self.tasks_now.clear()
        self.tasks_peak.clear()
        self.cts.clear()
        self.tasks.clear()
        self.tasklog.clear()
        self.failures.clear()
        self.task_faults.clear()
        self.requests.clear()
        self.storages[OSTEMPLATE_STORAGE]["volumes"] = {}
        self.backup_disks.clear()
        self._vzdump_locks.clear()
        self._setup_world()

    def _drop(self, ct) -> None:
        """A destroyed container's firewall config goes with it, as in PVE (`pct destroy`
        removes the VMID's `.fw` file); fakepve's LXC side keeps it."""
        super()._drop(ct)
        self._fw()["guests"].pop(int(ct.vmid), None)

    # --- backups ---------------------------------------------------------------------------------
    def _routes_vzdump(self):
        return [("POST", "/nodes/{node}/vzdump", self._vzdump)]

    async def _vzdump(self, v: dict[str, Any], user: str) -> str:
        node = v["node"]
        vmids = [int(x) for x in str(v.get("vmid") or "").replace(";", ",").split(",") if x]
        if len(vmids) != 1:
            raise PveError(400, "Parameter verification failed.",
                           {"vmid": "the devstack backs up one guest per job"})
        vmid = vmids[0]
        ct = self.ct(vmid)
        if ct is None or ct.node != node:
            raise PveError(500, f"guest {vmid} is not on node '{node}'")
        storage = v.get("storage") or OSTEMPLATE_STORAGE
        store = self.storages.get(storage)
        if store is None or "backup" not in str(store.get("content", "")).split(","):
            raise PveError(500, f"storage '{storage}' does not support backups")
        notes = v.get("notes-template") or "{{guestname}}"
        lock = self._vzdump_locks.setdefault(node, asyncio.Lock())

        async def body():
            async with lock:  # PVE: one vzdump job per node at a time
                if ct is not self.ct(vmid):
                    raise TaskError("job errors")
                if ct.config.get("lock"):
                    raise TaskError("job errors (ERROR: Backup of VM {0} failed - CT is locked "
                                    "({1}))".format(vmid, ct.config["lock"]))
                ct.lock = "backup"
                ct.config["lock"] = "backup"
                try:
                    await self.pause(self.ct_secs["backup"])
                    disk = copy.deepcopy(self.disk_source(vmid))
                finally:
                    ct.lock = None
                    ct.config.pop("lock", None)
                volumes = store.setdefault("volumes", {})
                stamp = time.time()
                while True:
                    name = "backup/vzdump-lxc-{0}-{1}.tar.zst".format(
                        vmid, time.strftime("%Y_%m_%d-%H_%M_%S", time.localtime(stamp)))
                    if name not in volumes:
                        break
                    stamp += 1  # PVE would overwrite; two archives of one second stay two
                size = self.backup_base_size + len(repr(disk))
                volumes[name] = {"content": "backup", "format": "tar.zst", "size": size,
                                 "ctime": int(stamp), "vmid": vmid,
                                 "notes": notes.replace("{{guestname}}",
                                                        str(ct.config.get("hostname", "")))
                                 .replace("{{vmid}}", str(vmid))}
                self.backup_disks[f"{storage}:{name}"] = disk
                return f"INFO: creating vzdump archive '/var/lib/vz/dump/{name[7:]}'\n" \
                       f"INFO: Finished Backup of VM {vmid}"

        return await self.task(node, "vzdump", vmid, user, body, vm=ct, lock=False,
                               log=[f"INFO: starting new backup job: vzdump {vmid} "
                                    f"--storage {storage} --mode {v.get('mode', 'snapshot')}"])

    async def _lxc_create(self, user, v):
        """A restore brings the archive's disk back (the agent stand-in reads it at boot)."""
        upid = await super()._lxc_create(user, v)
        if v.get("restore"):
            ct = self.ct(int(v["vmid"]))
            if ct is not None:
                ct.restored_disk = copy.deepcopy(self.backup_disks.get(v["ostemplate"], {}))
        return upid

    async def _sim_backups(self, request: web.Request) -> web.Response:
        return json_response({volid: disk for volid, disk in self.backup_disks.items()})

    async def _sim_backup_corrupt(self, request: web.Request) -> web.Response:
        volid = str((await request.json()).get("volid", ""))
        disk = self.backup_disks.get(volid)
        if disk is None:
            return json_response({"error": f"no archive {volid}"}, 404)
        if disk.get("world"):
            disk["world"]["corrupt"] = True
        return json_response({"volid": volid, "corrupt": True})

    # --- a task that ends in TASK ERROR -----------------------------------------------------
    async def task(self, node, ttype, tid, user, body, vm=None, lock=True, log=()):
        rule = next((r for r in self.task_faults if r["type"] == ttype and r["count"] > 0), None)
        if rule is not None:
            rule["count"] -= 1
            message = rule["message"]
            original_vm = vm

            async def failing():
                if ttype in ("vzcreate", "vzrestore") and original_vm is not None:
                    # PVE removes the half-made container when its create or restore task
                    # fails (disks and config: the VMID is free again).
                    self._drop(original_vm)
                    what = "create" if ttype == "vzcreate" else "restore"
                    raise TaskError(f"unable to {what} CT {tid} - {message}")
                raise TaskError(message)

            body = failing
        inner, key = body, f"{node}/{ttype}"

        async def counted():
            self.tasks_now[key] += 1
            self.tasks_peak[key] = max(self.tasks_peak[key], self.tasks_now[key])
            try:
                return await inner()
            finally:
                self.tasks_now[key] -= 1

        return await super().task(node, ttype, tid, user, counted, vm=vm, lock=lock, log=log)

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
        r.add_delete("/_sim/task-errors", self._sim_task_errors_clear)
        r.add_post("/_sim/time-scale", self._sim_time_scale)
        r.add_get("/_sim/containers", self._sim_containers)
        r.add_post("/_sim/containers", self._sim_add_containers)
        r.add_post("/_sim/containers/{vmid}/migrate", self._sim_migrate)
        r.add_get("/_sim/backups", self._sim_backups)
        r.add_get("/_sim/task-peaks", self._sim_task_peaks)
        r.add_delete("/_sim/task-peaks", self._sim_task_peaks_reset)
        r.add_post("/_sim/backups/corrupt", self._sim_backup_corrupt)
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

    async def _sim_task_peaks(self, request: web.Request) -> web.Response:
        """{"node/type": {"now", "peak"}}: the most tasks of a type seen at once on a node."""
        return json_response({k: {"now": self.tasks_now[k], "peak": self.tasks_peak[k]}
                              for k in sorted(set(self.tasks_now) | set(self.tasks_peak))})

    async def _sim_task_peaks_reset(self, request: web.Request) -> web.Response:
        self.tasks_peak = Counter({k: v for k, v in self.tasks_now.items() if v})
        return json_response({"reset": True})

    async def _sim_offline(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        if node not in self.nodes:
            return json_response({"error": f"no node {node}"}, 404)
        body = await request.json()
        offline = bool(body.get("offline", True))
        self.set_node_offline(node, offline)
        stopped = []
        if not offline and body.get("reboot"):
            # It comes back from a restart: its containers are all stopped (no onboot here).
            for ct in self.cts:
                if ct.node == node and ct.status == "running":
                    ct.status, ct.pid = "stopped", None
                    stopped.append(ct.vmid)
        return json_response({"node": node, "online": not offline, "stopped": stopped})

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

    async def _sim_task_errors_clear(self, request: web.Request) -> web.Response:
        self.task_faults.clear()
        return json_response({"cleared": True})

    async def _sim_time_scale(self, request: web.Request) -> web.Response:
        self.time_scale = float((await request.json())["scale"])
        return json_response({"time_scale": self.time_scale})

    async def _sim_add_containers(self, request: web.Request) -> web.Response:
        """Bulk-add containers (benchmarks, and containers "made by the old API" for adoption
        tests): [{"vmid", "node", "tags", "status", "hostname", "memory", "config": {…}}]; the
        optional `config` (net0, cores, rootfs, description, …) is added to the config."""
        specs = await request.json()
        for spec in specs:
            config = {"tags": spec.get("tags", ""), "memory": spec.get("memory", 512),
                      **(spec.get("config") or {})}
            self.add_ct(int(spec["vmid"]), spec.get("hostname"),
                        node=spec.get("node", "pve1"), status=spec.get("status", "stopped"),
                        config=config)
        return json_response({"added": len(specs)}, 201)

    async def _sim_containers(self, request: web.Request) -> web.Response:
        return json_response([
            {"vmid": ct.vmid, "node": ct.node, "status": ct.status,
             "tags": ct.config.get("tags", ""), "hostname": ct.config.get("hostname"),
             "net0": ct.config.get("net0"), "memory": ct.config.get("memory"),
             "cores": ct.config.get("cores"), "lock": ct.config.get("lock")}
            for ct in self.cts
        ])
