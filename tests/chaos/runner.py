"""A seeded chaos run: random API operations while faults hit every part of the system, then
the faults stop, the system converges (bounded) and the invariants are checked.

Run one seed by hand: `CHAOS_SEEDS=1234 .venv/bin/python -m pytest tests/chaos -s`. The seed is
printed first. A seed fixes the schedule: every step draws the same random numbers in the same
order whatever happened before, so the same operations and faults come at the same steps;
which server a request hits and whether it is accepted still depend on timing.
"""
from __future__ import annotations

import random
import time

import requests
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rest_framework.test import APIClient

from lifecycle.choices import ACTIVE_OPERATION_STATES
from lifecycle.models import Backup, ContainerInstance, Operation
from notifications.models import Notification
from reconciler.models import ControllerRun, Finding, RepairEvent
from tests.support import broker
from tests.support.platform import game_body
from tests.support.waiting import wait_until
from tests.support.workers import start_beat, start_worker
from zlh.celery import WORKER_POOLS

EXPECTED_STATUS = {"running": "running", "stopped": "stopped", "deleted": "deleted",
                   "purged": "purged"}
FAULTS = ("kill_worker", "flushall", "pve_500", "pve_lock", "pve_timeout", "node_offline",
          "cloudflare_429", "velocity_restart", "discord_outage", "agent_crash", "garbage",
          "migrate", "firewall_tamper")
RATE_LIMITED = {"success": False, "errors": [{"code": 971, "message": "Please wait"}]}
#: Answers of the wrong shape, an HTML page, a dripped body, a senseless retry-after: each
#: source in turn (service, fault spec without count).
GARBAGE = (
    ("pve", {"method": "GET", "path": "cluster/resources", "status": 200,
             "body": [{"vmid": "abc", "type": "lxc"}]}),
    ("pve", {"method": "GET", "path": r"/tasks/.*/status$", "status": 200,
             "raw": "<html><body>proxy error</body></html>"}),
    ("pve", {"method": "GET", "path": r"/lxc/\d+/config$", "status": 200, "body": "nonsense"}),
    ("pve", {"method": "GET", "path": r"/lxc/\d+/status/current$", "status": 200,
             "body": {"status": "running"}, "drip_s": 0.2}),
    ("technitium", {"path": "records/get", "status": 200,
                    "body": {"status": "ok", "response": {"records": None}}}),
    ("velocity", {"method": "GET", "path": "^/servers$", "status": 200,
                  "body": [{"name": "lobby"}]}),
    ("cloudflare", {"path": "dns_records", "status": 200, "raw": "<html>one moment</html>"}),
    ("cloudflare", {"method": "GET", "path": "dns_records", "status": 429,
                    "body": RATE_LIMITED, "headers": {"retry-after": "0"}}),
    ("agents", {"method": "GET", "path": "/status$", "status": 200, "body": {"crash": 1}}),
    ("agents", {"method": "GET", "path": "/status$", "status": 200,
                "body": {"state": "running", "crash": {"count": None}}}),
    ("discord", {"method": "POST", "path": "/webhooks/", "status": 200, "body": [1, 2]}),
)


@dataclass
class ChaosRun:
    seed: int
    stack: Any
    owners: list[Any]
    staff: Any
    env: Any
    tmp_path: Any
    ops: int = 160
    rng: random.Random = field(init=False)
    workers: list[Any] = field(default_factory=list)
    beats: list[Any] = field(default_factory=list)
    requested: Counter = field(default_factory=Counter)
    accepted: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    checks: list[str] = field(default_factory=list)
    servers: dict[str, Any] = field(default_factory=dict)  # id -> owner
    keys: list[tuple[Any, str, dict]] = field(default_factory=list)
    undo: list[Any] = field(default_factory=list)
    waiting_for: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.api = APIClient()

    # --- processes ----------------------------------------------------------------------------
    def start(self) -> None:
        env = self.env()
        self.workers = [self._lifecycle_worker(env, f"chaos-l{i}") for i in range(2)]
        self.workers.append(start_worker(env, self.tmp_path, name="chaos-side", concurrency=3,
                                         queues="repair,edge,notify"))
        self.beats = [start_beat(env, self.tmp_path, name=f"chaos-beat{i}") for i in range(2)]

    def _lifecycle_worker(self, env, name):
        """As deployed (zlh.celery.WORKER_POOLS): many threads per process."""
        pool, concurrency = WORKER_POOLS["lifecycle"]
        return start_worker(env, self.tmp_path, name=name, concurrency=concurrency,
                            queues="lifecycle", pool=pool)

    def stop(self) -> None:
        for proc in self.workers + self.beats:
            proc.stop()

    # --- the schedule ---------------------------------------------------------------------------
    def run(self) -> None:
        print(f"\nCHAOS SEED {self.seed}: {self.ops} operations")
        for step in range(self.ops):
            draws = [self.rng.random() for _ in range(6)]  # a fixed number per step
            self.operation(step, draws[0], draws[1])
            if draws[2] < 0.12:
                try:
                    self.fault(draws[3], draws[4])
                except requests.HTTPError as exc:  # e.g. a lock already held by a task
                    self.faults["fault_not_applicable"] += 1
                    print(f"  fault at step {step} not applicable: {exc}")
            if self.undo and draws[5] < 0.3:
                self.undo.pop(0)()
            time.sleep(draws[5] * 0.15)
        while self.undo:
            self.undo.pop(0)()

    def operation(self, step: int, kind_draw: float, pick_draw: float) -> None:
        existing = list(ContainerInstance.objects.exclude(status="purged").order_by(
            "created_at", "id").values("id", "owner_id", "status"))
        kinds = ["create"] * 30 + ["replay"] * 8 + ["stop"] * 14 + ["start"] * 14 + \
            ["delete"] * 10 + ["restore"] * 6 + ["purge"] * 5 + ["backup"] * 8 + \
            ["restore_backup"] * 4 + ["delete_backup"] * 2
        choice = kinds[int(kind_draw * len(kinds))]
        if choice in ("create", "replay") or not existing:
            if choice == "replay" and self.keys:
                owner, key, body = self.keys[int(pick_draw * len(self.keys))]
            else:
                owner = self.owners[int(pick_draw * len(self.owners))]
                key = f"chaos-{self.seed}-{step}"
                body = game_body(f"c{self.seed % 1000}-{step}")
                self.keys.append((owner, key, body))
                choice = "create"
            self.requested[choice] += 1
            resp = self.api.post("/api/v1/servers", body, format="json", **owner.headers,
                                 HTTP_IDEMPOTENCY_KEY=key)
            assert resp.status_code in (202, 409, 503), resp.content
            if resp.status_code == 202:
                self.accepted[choice] += 1
            return
        inst = existing[int(pick_draw * len(existing))]
        owner = next(o for o in self.owners if o.user.pk == inst["owner_id"])
        self.requested[choice] += 1
        url = f"/api/v1/servers/{inst['id']}"
        if choice in ("restore_backup", "delete_backup"):
            backup = Backup.objects.filter(instance_id=inst["id"], state="ready").order_by(
                "-created_at").first()
            if backup is None:
                choice = "backup"
                self.requested[choice] += 1
            elif choice == "restore_backup":
                resp = self.api.post(f"{url}/backups/{backup.id}/restore", **owner.headers)
            else:
                resp = self.api.delete(f"{url}/backups/{backup.id}", **owner.headers)
        if choice == "backup":
            resp = self.api.post(f"{url}/backups", {"notes": f"chaos {step}"}, format="json",
                                 **owner.headers)
        elif choice == "delete":
            resp = self.api.delete(url, **owner.headers)
        elif choice == "purge":
            resp = self.api.post(url + "/purge", **self.staff.headers)
        elif choice not in ("restore_backup", "delete_backup"):
            resp = self.api.post(f"{url}/{choice}", **owner.headers)
        assert resp.status_code in (202, 409), (choice, resp.content)
        if resp.status_code == 202:
            self.accepted[choice] += 1

    def fault(self, kind_draw: float, param: float) -> None:
        kind = FAULTS[int(kind_draw * len(FAULTS))]
        self.faults[kind] += 1
        stack = self.stack
        running = list(ContainerInstance.objects.filter(status="running").order_by(
            "created_at", "id").values("vmid", "node__name"))
        target = running[int(param * len(running))] if running else None
        if kind == "kill_worker":
            index = int(param * 2)
            self.workers[index].kill()
            self.workers[index] = self._lifecycle_worker(
                self.env(), f"chaos-l{index}-{self.faults[kind]}")
        elif kind == "flushall":
            broker.client().flushall()
        elif kind == "pve_500":
            stack.fault(method="POST" if param < 0.5 else "GET", path=r"/nodes/pve\d/",
                        status=500, body="got no worker upid - start worker failed",
                        count=1 + int(param * 3))
        elif kind == "pve_lock" and target:
            vmid = target["vmid"]
            stack.pve("POST", f"/_sim/lock/{vmid}", json={"secs": 40})  # 40 x 0.02 s = 0.8 s
        elif kind == "pve_timeout":
            stack.fault(method="POST", path=r"/nodes/pve\d/lxc", delay_s=2.5, count=1)
        elif kind == "node_offline":
            node = "pve1" if param < 0.5 else "pve2"
            stack.pve("POST", f"/_sim/nodes/{node}/offline", json={"offline": True})
            self.undo.append(lambda: stack.pve("POST", f"/_sim/nodes/{node}/offline",
                                               json={"offline": False}))
        elif kind == "cloudflare_429":
            stack.sim("cloudflare", "POST", "/_sim/rate-limit",
                      json={"count": 1 + int(param * 4), "retry_after": 1})
        elif kind == "velocity_restart":
            stack.sim("velocity", "POST", "/_sim/restart")
        elif kind == "discord_outage":
            stack.sim("discord", "POST", "/_sim/outage", json={"on": True})
            self.undo.append(lambda: stack.sim("discord", "POST", "/_sim/outage",
                                               json={"on": False}))
        elif kind == "garbage":
            index = int(param * len(GARBAGE))
            service, spec = GARBAGE[index]
            spec = {**spec, "count": 1 + index % 3}
            if service == "pve":
                stack.fault(**spec)
            elif service == "agents":
                stack.agents("POST", "/_sim/faults", json=spec)
            else:
                stack.sim(service, "POST", "/_sim/faults", json=spec)
            self.faults[f"garbage:{service}"] += 1
        elif kind == "migrate" and target:
            # A container moves under us: an operator's `pct migrate` (PVE's migrate task) or
            # an HA recovery (moved at once, power kept).
            vmid, node = target["vmid"], target["node__name"]
            other = "pve2" if node == "pve1" else "pve1"
            if param < 0.5:
                stack.pve_api("POST", f"/nodes/{node}/lxc/{vmid}/migrate",
                              data={"target": other, "restart": 1})
                self.faults["migrate:pct"] += 1
            else:
                stack.pve("POST", f"/_sim/containers/{vmid}/migrate", json={"node": other})
                self.faults["migrate:ha"] += 1
        elif kind == "firewall_tamper" and target:
            # Someone in the Proxmox panel: our game rule deleted, the policy opened, or the
            # NIC's firewall switched off (on the node the container is on now).
            vmid = target["vmid"]
            node = next((ct["node"] for ct in stack.containers() if int(ct["vmid"]) == vmid),
                        target["node__name"])
            base = f"/nodes/{node}/lxc/{vmid}"
            if param < 1 / 3:
                rules = stack.pve_api("GET", f"{base}/firewall/rules")
                game = [r for r in (rules.json().get("data") or [] if rules.ok else [])
                        if (r.get("comment") or "").endswith(":game")]
                if game:
                    stack.pve_api("DELETE", f"{base}/firewall/rules/{game[0]['pos']}")
                self.faults["firewall_tamper:rule"] += 1
            elif param < 2 / 3:
                stack.pve_api("PUT", f"{base}/firewall/options", data={"policy_in": "ACCEPT"})
                self.faults["firewall_tamper:policy"] += 1
            else:
                config = stack.pve_api("GET", f"{base}/config")
                net0 = (config.json().get("data") or {}).get("net0", "") if config.ok else ""
                if "firewall=1" in net0:
                    stack.pve_api("PUT", f"{base}/config",
                                  data={"net0": net0.replace(",firewall=1", "")})
                self.faults["firewall_tamper:net0"] += 1
        elif kind == "agent_crash" and target:
            vmid = target["vmid"]
            stack.agents("POST", f"/_sim/agents/{vmid}/crash", json={"reason": "chaos"})
            self.undo.append(lambda: stack.agents("POST", f"/_sim/agents/{vmid}/recover"))

    # --- convergence and invariants -------------------------------------------------------------
    def calm(self) -> None:
        """Stop every fault; what is left is the system healing itself."""
        for service in ("cloudflare", "technitium", "velocity", "discord", "agents"):
            path = "/_sim/faults"
            if service == "agents":
                self.stack.agents("DELETE", path)
            else:
                self.stack.sim(service, "DELETE", path)
        self.stack.pve("DELETE", "/_sim/faults")
        for node in ("pve1", "pve2"):
            self.stack.pve("POST", f"/_sim/nodes/{node}/offline", json={"offline": False})
        self.stack.sim("discord", "POST", "/_sim/outage", json={"on": False})
        for agent in self.stack.agents("GET", "/_sim/agents").values():
            if agent["state"] == "crashed":
                self.stack.agents("POST", f"/_sim/agents/{agent['vmid']}/recover")

    def converged(self) -> bool:
        self.waiting_for = list(Operation.objects.filter(
            state__in=ACTIVE_OPERATION_STATES).values_list("kind", "state", "instance__slug",
                                                           "attempt"))
        self.waiting_for += list(RepairEvent.objects.filter(
            state__in=("queued", "running")).values_list("action", "state", "subject"))
        self.waiting_for += [("notification", n) for n in Notification.objects.filter(
            state="pending").values_list("channel", "title")[:5]]
        self.waiting_for += [("backup", b) for b in Backup.objects.filter(
            state__in=("creating", "deleting")).values_list("id", "state")[:5]]
        # A repaired drift's finding closes at the next cycle that no longer sees it: until
        # then the doctor (checked below) still lists it.
        self.waiting_for += [("finding", f) for f in Finding.objects.filter(
            open=True).values_list("finding_type", "subject")[:5]]
        self.waiting_for += [(i.slug, i.status, "wants", i.desired_state)
                             for i in ContainerInstance.objects.all()
                             if i.status != EXPECTED_STATUS[i.desired_state]]
        where = {int(ct["vmid"]): ct["node"] for ct in self.stack.containers()}
        self.waiting_for += [(i.slug, "on", where[i.vmid], "row says", i.node.name)
                             for i in ContainerInstance.objects.exclude(
                                 status="purged").select_related("node")
                             if i.vmid in where and i.node.name != where[i.vmid]]
        if not self.waiting_for:
            self.waiting_for = [("firewall", slug, problems)
                                for slug, problems in self.firewall_problems()]
        return not self.waiting_for

    def firewall_problems(self) -> list[tuple[str, list[str]]]:
        """Live servers whose container's firewall is not as desired, read from Proxmox."""
        from lifecycle.firewall import judge

        where = {int(ct["vmid"]): ct["node"] for ct in self.stack.containers()}
        out = []
        for inst in ContainerInstance.objects.exclude(status__in=("purged", "pending")):
            node = where.get(inst.vmid)
            if node is None:
                continue
            base = f"/nodes/{node}/lxc/{inst.vmid}"
            config, options, rules = (self.stack.pve_api("GET", f"{base}/{what}")
                                      for what in ("config", "firewall/options",
                                                   "firewall/rules"))
            if not (config.ok and options.ok and rules.ok):
                out.append((inst.slug, ["not readable"]))
                continue
            verdict = judge(inst.id, inst.kind, inst.ports, config=config.json()["data"],
                            options=options.json()["data"], rules=rules.json()["data"])
            if not verdict.ok:
                out.append((inst.slug, verdict.problems))
        return out

    def converge(self, timeout: float = 300) -> float:
        self.calm()
        started = time.monotonic()
        # A user whose provisioning failed presses "retry": that is part of the product.
        def nudge():
            for inst in ContainerInstance.objects.filter(status="failed", desired_state="running"):
                owner = next(o for o in self.owners if o.user.pk == inst.owner_id)
                self.api.post(f"/api/v1/servers/{inst.id}/retry", **owner.headers)
                self.faults["user_retry"] += 1
        try:
            wait_until(self.converged, timeout=timeout, interval=1.0, on_tick=nudge,
                       what=f"seed {self.seed} to converge")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still waiting for: {self.waiting_for[:20]}") from None
        return time.monotonic() - started

    def check(self, name: str, ok: bool, detail: Any = "") -> None:
        assert ok, f"seed {self.seed}: invariant '{name}' broken: {detail}"
        self.checks.append(name)

    def verify(self) -> None:
        live = list(ContainerInstance.objects.exclude(status="purged").select_related("node"))
        vmids = Counter(i.vmid for i in live)
        ips = Counter(i.ip for i in live)
        # A server is reached at its own IP and port (Velocity's backend): that pair is unique.
        # Not (row's node, port): a container that moved keeps the port it was given from its
        # first node's pool, and the allocation rows (unique per pool) stay where they were.
        ports = Counter((i.ip, p) for i in live for p in i.ports.values())
        self.check("unique VMIDs", max(vmids.values(), default=1) == 1, vmids.most_common(2))
        self.check("unique IPs", max(ips.values(), default=1) == 1, ips.most_common(2))
        self.check("unique (IP, port)", max(ports.values(), default=1) == 1,
                   ports.most_common(2))

        containers = self.stack.containers()
        by_owner: Counter = Counter()
        for ct in containers:
            tags = [t for t in ct["tags"].split(";") if t.startswith("zlh-")]
            self.check("every container carries one owner tag", len(tags) == 1, ct)
            by_owner[tags[0][4:]] += 1
        all_ids = {str(i.id): i for i in ContainerInstance.objects.all()}
        self.check("at most one container per server", max(by_owner.values(), default=1) == 1,
                   by_owner.most_common(2))
        self.check("no container without a live server",
                   all(o in all_ids and all_ids[o].status != "purged" for o in by_owner),
                   [o for o in by_owner if o not in all_ids or all_ids[o].status == "purged"])
        for inst in live:
            if inst.status in ("running", "stopped"):
                self.check("running/stopped servers have their container",
                           by_owner[str(inst.id)] == 1, inst.slug)

        where = {int(ct["vmid"]): ct["node"] for ct in containers}
        misplaced = [(i.slug, i.node.name, where[i.vmid]) for i in live
                     if i.vmid in where and i.node.name != where[i.vmid]]
        self.check("every server's row names the node its container is on", not misplaced,
                   misplaced)

        mismatched = [(i.slug, i.status, i.desired_state) for i in all_ids.values()
                      if i.status != EXPECTED_STATUS[i.desired_state]]
        self.check("every server reached its desired state", not mismatched, mismatched)
        self.check("no operation queued or running",
                   not Operation.objects.filter(state__in=ACTIVE_OPERATION_STATES).exists())
        self.check("no operation left inside a wait (a deadline kept after it ended)",
                   not Operation.objects.filter(wait_deadline__isnull=False).exists())

        running_game = {str(i.id): i for i in live if i.status == "running" and i.kind == "game"}
        cf = self.stack.cf_records()
        per_server = Counter((r["comment"][4:], r["type"]) for r in cf
                             if (r.get("comment") or "").startswith("zlh:"))
        for sid in running_game:
            self.check("running game servers have one A and one SRV",
                       per_server[(sid, "A")] == 1 and per_server[(sid, "SRV")] == 1, sid)
        stray = [k for k in per_server if k[0] not in all_ids
                 or all_ids[k[0]].status not in ("running", "stopped")]
        self.check("no DNS records but live servers'", not stray, stray)
        self.check("no duplicate DNS records", max(per_server.values(), default=1) == 1,
                   per_server.most_common(2))
        tech = Counter(r["comments"][4:] for r in self.stack.tech_records()
                       if (r.get("comments") or "").startswith("zlh:"))
        for sid in running_game:
            self.check("running game servers have one internal record", tech[sid] == 1, sid)
        velocity = {s["name"] for s in self.stack.velocity_servers()}
        self.check("Velocity has exactly the running game servers",
                   velocity == {i.slug for i in running_game.values()},
                   velocity ^ {i.slug for i in running_game.values()})

        self.verify_backups(containers)

        # Never more Proxmox tasks of a kind at once on a node than its limit (the deployed
        # limits: create 4, start and stop 8, backup and restore 2 per node).
        from lifecycle.services.node_slots import node_slot_limit
        kinds = {"vzcreate": "create", "vzrestore": "restore", "vzstart": "start",
                 "vzshutdown": "stop", "vzstop": "stop", "vzdump": "backup"}
        peaks = {key: v["peak"] for key, v in self.stack.pve("GET", "/_sim/task-peaks").items()}
        over = {key: peak for key, peak in peaks.items()
                if key.split("/")[1] in kinds
                and peak > (node_slot_limit(kinds[key.split("/")[1]]) or peak)}
        self.check("never more Proxmox tasks at once per node than the limit", not over,
                   {"over": over, "peaks": peaks})

        from reconciler.doctor import doctor_report
        report = doctor_report()
        self.check("the doctor finds nothing wrong in the database", report["ok"],
                   report["problems"][:5])

        broken = self.firewall_problems()
        self.check("every container's firewall is as desired (tampering repaired)", not broken,
                   broken[:3])

        sent = Notification.objects.filter(state="sent")
        messages = self.stack.discord_messages()
        ids = Counter(m["id"] for m in messages)
        self.check("every notification delivered", not Notification.objects.filter(
            state="pending").exists())
        self.check("every notification delivered exactly once", len(messages) == sent.count()
                   and set(ids) == set(sent.values_list("discord_message_id", flat=True)),
                   (len(messages), sent.count()))
        # A message carries up to ten notifications: each message id is recorded on exactly
        # as many rows as the message has embeds.
        recorded = Counter(sent.values_list("discord_message_id", flat=True))
        self.check("no message id recorded more often than its message carries",
                   recorded == ids, [(k, recorded[k], ids[k]) for k in recorded
                                     if recorded[k] != ids[k]][:3])

        runs = sorted(ControllerRun.objects.filter(outcome="completed"),
                      key=lambda r: r.started_at)
        self.check("no two reconciler cycles overlapped",
                   all(a.finished_at <= b.started_at for a, b in zip(runs, runs[1:])))
        errored = list(ControllerRun.objects.filter(outcome="error").values_list("pk", "error"))
        self.check("no reconciler cycle ended in an error (bad answers included)", not errored,
                   errored[:3])
        self.check("every repair finished", not RepairEvent.objects.filter(
            state__in=("queued", "running")).exists())
        self.check("every successful repair was post-checked", all(
            r.after for r in RepairEvent.objects.filter(state="succeeded")))

    def verify_backups(self, containers: list[dict[str, Any]]) -> None:
        """No backup job ran twice, no archive without its backup, and no restore lost a
        world."""
        archives = self.stack.pve_api("GET", "/nodes/pve1/storage/local/content",
                                      params={"content": "backup"}).json()["data"]
        markers = Counter(next((w for w in (a.get("notes") or "").split()
                                if w.startswith("zlh-backup:")), None) for a in archives)
        self.check("every archive carries one backup's marker", None not in markers, markers)
        self.check("no backup job ran twice (one archive per backup)",
                   max(markers.values(), default=1) == 1, markers.most_common(2))
        rows = {f"zlh-backup:{b.id}": b for b in Backup.objects.all()}
        orphans = [m for m in markers if m not in rows or rows[m].state != "ready"]
        self.check("every archive belongs to a ready backup", not orphans, orphans[:3])
        present = {a["volid"] for a in archives}
        missing = list(Backup.objects.filter(state="ready").exclude(
            volid__in=present).values_list("id", flat=True))
        self.check("every ready backup's archive exists", not missing, missing[:3])
        self.check("no backup left being made or deleted", not Backup.objects.filter(
            state__in=("creating", "deleting")).exists())
        disks = self.stack.pve("GET", "/_sim/backups")
        agents = self.stack.agents("GET", "/_sim/agents")
        running_ids = {c["vmid"] for c in containers if c["status"] == "running"}
        for op in Operation.objects.filter(kind="restore_backup", state="succeeded"):
            inst = ContainerInstance.objects.get(pk=op.instance_id)
            later = Operation.objects.filter(instance=inst, kind="restore_backup",
                                             state="succeeded", created_at__gt=op.created_at)
            if inst.status != "running" or inst.vmid not in running_ids or later.exists():
                continue
            backup = Backup.objects.get(pk=op.params["backup_id"])
            want = (disks.get(backup.volid) or {}).get("world") or {}
            have = (agents.get(str(inst.vmid)) or {}).get("world") or {}
            self.check("a restore never loses the world (the backed-up one is back)",
                       have.get("seed") and have.get("seed") == want.get("seed"),
                       (inst.slug, have, want))

    def ready_waits(self) -> int:
        return sum(1 for log in Operation.objects.values_list("log", flat=True)
                   if any(str(e.get("msg", "")).startswith("waiting for the server to become "
                                                           "ready") for e in log or []))

    def summary(self) -> str:
        return (f"CHAOS SEED {self.seed} PASSED — operations requested {dict(self.requested)}, "
                f"accepted {dict(self.accepted)}; faults {dict(self.faults)}; "
                f"servers {ContainerInstance.objects.count()} "
                f"({dict(Counter(ContainerInstance.objects.values_list('status', flat=True)))}); "
                f"cycles {ControllerRun.objects.count()}, repairs "
                f"{dict(Counter(RepairEvent.objects.values_list('state', flat=True)))}, "
                f"blocked {dict(Counter(RepairEvent.objects.filter(state='blocked').values_list('action', 'reason')))}, "
                f"notifications {Notification.objects.count()}; operations that waited for "
                f"their game without a worker {self.ready_waits()}; invariant checks passed "
                f"{len(self.checks)} ({len(set(self.checks))} kinds)")
