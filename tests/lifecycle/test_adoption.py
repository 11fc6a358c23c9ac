"""`manage.py adopt` (issue 16, item 1): a devstack seeded as the old API left it is planned,
adopted without any Proxmox create/start/stop/destroy, found without drift by the reconciler,
adopted again as a no-op, and released back to exactly what it was. A SIGKILL halfway through
an --apply, then --apply again, adopts every container exactly once."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from devstack.legacy import LegacyServer, seed_legacy
from lifecycle.choices import AdoptionState
from lifecycle.models import Adoption, Allocation, AuditEvent, ContainerInstance, Node, Operation
from lifecycle.services.adoption import Verdict, adoption_plan, mapping_load, mapping_parse
from lifecycle.services.adoption import MappingInvalid
from reconciler.doctor import doctor_report
from reconciler.models import Finding
from tests.reconciler.helpers import cycles, running
from tests.support.procs import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

WRITE_METHODS = ("POST", "PUT", "DELETE")


def _seed(stack, servers):
    seed_legacy(stack.endpoints, servers, zone=settings.EDGE_ZONE,
                internal_zone=settings.TECHNITIUM_ZONE, velocity_ip=settings.VELOCITY_PUBLIC_IP,
                velocity_port=int(settings.VELOCITY_PUBLIC_PORT), http=stack.http)


def _world(stack, vmids):
    """Everything outside that adoption may touch, comparable before and after."""
    cts = {c["vmid"]: {k: c[k] for k in ("node", "status", "tags", "hostname", "net0",
                                          "memory", "cores")}
           for c in stack.containers() if c["vmid"] in vmids}
    firewall = {}
    for vmid, ct in cts.items():
        base = f"/nodes/{ct['node']}/lxc/{vmid}/firewall"
        options = stack.pve_api("GET", base + "/options").json()["data"]
        rules = stack.pve_api("GET", base + "/rules").json()["data"]
        firewall[vmid] = ({k: v for k, v in options.items() if k != "digest"},
                          [{k: v for k, v in r.items() if k != "digest"} for r in rules])
    cf = sorted((r["id"], r["type"], r["name"], r.get("content"), r.get("comment"),
                 r.get("proxied"), json.dumps(r.get("data"), sort_keys=True))
                for r in stack.cf_records())
    tech = sorted((r["name"], r["type"], json.dumps(r["rData"], sort_keys=True),
                   r.get("comments"), r.get("ttl")) for r in stack.tech_records())
    vel = sorted((s["name"], s["address"], tuple(s["hosts"])) for s in stack.velocity_servers())
    return {"containers": cts, "firewall": firewall, "cloudflare": cf, "technitium": tech,
            "velocity": vel}


def _assert_same(now, then, what):
    for part in then:
        if isinstance(then[part], dict):
            diffs = {k: (now[part].get(k), v) for k, v in then[part].items()
                     if now[part].get(k) != v}
        else:
            diffs = {"only now": sorted(set(now[part]) - set(then[part]), key=str),
                     "only then": sorted(set(then[part]) - set(now[part]), key=str)}
            diffs = {k: v for k, v in diffs.items() if v}
        assert not diffs, f"{what}: {part} differs (now, then): {diffs}"


def _pve_writes(stack):
    calls = stack.pve("GET", "/_sim/calls?last=100000")["calls"]
    return [(m, p) for m, p, _ in calls if m in WRITE_METHODS]


def _adopt(*args):
    out = StringIO()
    try:
        call_command("adopt", *args, stdout=out, stderr=out)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue()


def _legacy_fleet():
    """Three adoptable servers and five that conflict, each for a reason of its own."""
    return [
        LegacyServer(5101, "alpha", "10.1.0.50", port=30101, comment="old-api"),
        LegacyServer(5102, "beta", "10.2.0.60", node="pve2", memory=4096, status="stopped",
                     port=30102),
        LegacyServer(5103, "gamma", "10.1.0.70", memory=4096, cf_a=None, cf_srv=False,
                     tech_a=None, velocity=False, tags="dev;old-api"),
        LegacyServer(5104, "delta", "10.1.0.80", port=30104, cf_a="203.0.113.9"),
        LegacyServer(5105, "epsilon", "10.1.0.90", memory=3000, port=30105),
        LegacyServer(5106, "taken", "10.1.0.91", port=30106, cf_a=None, cf_srv=False,
                     tech_a=None, velocity=False),
        LegacyServer(5107, "nomap", "10.1.0.92", port=30107),
        LegacyServer(5108, "zeta", "10.1.0.50", port=30108, cf_a=None, cf_srv=False,
                     tech_a=None, velocity=False),
    ]


MAPPING = """vmid,owner,name,kind,variant,version,plan,runtime,runtime_version,code_server,port
5101,alice,,game,paper,1.21.1,,,,,
5102,newbie,,game,vanilla,1.19.2,modded,,,,30102
5103,alice,,dev,,,,python,3.12,yes,30103
5104,alice,,game,paper,1.21.1,,,,,
5105,alice,,game,paper,1.21.1,,,,,
5106,alice,,game,paper,1.21.1,,,,,30106
5108,alice,,game,paper,1.21.1,,,,,
"""


def test_the_old_apis_fleet_is_adopted_left_alone_and_given_back(stack, worker, owner,
                                                                 tmp_path):
    running(owner, "taken")  # a server of ours: its name is not free
    fleet = _legacy_fleet()
    _seed(stack, fleet)
    vmids = {s.vmid for s in fleet}
    before = _world(stack, vmids)
    mapping = tmp_path / "servers.csv"
    mapping.write_text(MAPPING)

    # The dry run: each container's fate, and why.
    plan = {cp.vmid: cp for cp in adoption_plan(mapping_load(mapping)).containers}
    assert {v for v, cp in plan.items() if cp.verdict == Verdict.ADOPT} == {5101, 5102, 5103}
    assert plan[5101].ports == {"game": 30101}  # read from its Velocity registration
    assert plan[5101].plan == "vanilla" and plan[5102].plan == "modded"
    assert {s["kind"] for s in plan[5101].edge} == {"mark"}
    assert [s["source"] for s in plan[5102].edge] == ["cloudflare", "cloudflare", "technitium",
                                                      "velocity"]
    assert plan[5102].edge[-1]["kind"] == "unregister"  # stopped: not registered
    assert any("will be created" in w for w in plan[5102].warnings)
    assert any("not in the catalog" in w for w in plan[5102].warnings)
    assert any("points elsewhere" in c and "203.0.113.9" in c for c in plan[5104].conflicts)
    assert any("no plan fits" in c for c in plan[5105].conflicts)
    assert any("taken" in c for c in plan[5106].conflicts)
    assert any("not in the mapping" in c for c in plan[5107].conflicts)
    assert any("another container of this plan" in c for c in plan[5108].conflicts)
    code, out = _adopt("--mapping", str(mapping))
    assert code == 0 and "3 to adopt" in out and "5 skipped" in out, out
    assert "conflict: A delta." in out and "points elsewhere" in out
    _assert_same(_world(stack, vmids), before, "a dry run changed something")
    assert not Adoption.objects.exists()

    # Apply: no create, start, stop, shutdown or destroy in Proxmox.
    stack.pve("DELETE", "/_sim/calls")
    code, out = _adopt("--mapping", str(mapping), "--apply")
    assert code == 0, out
    writes = _pve_writes(stack)
    forbidden = [(m, p) for m, p in writes
                 if (m == "POST" and (p.rstrip("/").endswith("/lxc") or "/status/" in p))
                 or (m == "DELETE" and re.search(r"/lxc/\d+/?$", p))]
    assert forbidden == [] and writes, writes
    servers = {s.vmid: s for s in ContainerInstance.objects.filter(vmid__in=vmids)}
    assert set(servers) == {5101, 5102, 5103}
    assert servers[5101].status == "running" and servers[5102].status == "stopped"
    assert servers[5103].kind == "dev" and servers[5103].ports == {"ide": 30103}
    assert not any(s.maintenance_lock for s in servers.values())
    assert set(Adoption.objects.values_list("state", flat=True)) == {AdoptionState.DONE}
    cts = {c["vmid"]: c for c in stack.containers()}
    for vmid, inst in servers.items():
        tags = set(cts[vmid]["tags"].split(";"))
        assert {"zlh", f"zlh-{inst.id}", "old-api"} <= tags, tags
    marker = f"zlh:{servers[5101].id}"
    alpha = [r for r in stack.cf_records() if r["name"].endswith(f"alpha.{settings.EDGE_ZONE}")]
    assert len(alpha) == 2 and {r["comment"] for r in alpha} == {marker}
    assert [r.get("comments") for r in stack.tech_records()
            if r["name"].startswith("alpha.")] == [marker]
    assert "beta" not in {s["name"] for s in stack.velocity_servers()}
    assert AuditEvent.objects.filter(action="adopt:claim").count() == 3
    # The running ones' agents are given their own credential.
    wait_until(lambda: not Operation.objects.filter(state__in=("queued", "running")).exists(),
               timeout=60, what="credential operations")
    assert set(Operation.objects.filter(instance__vmid__in=vmids).values_list(
        "kind", "state")) == {("rotate_credential", "succeeded")}

    # The reconciler finds nothing to do about them; the doctor finds nothing wrong.
    cycles(2)
    open_findings = list(Finding.objects.filter(open=True).values_list("finding_type",
                                                                       "subject"))
    assert open_findings == [], open_findings
    assert doctor_report()["ok"], doctor_report()

    # A second apply is a no-op.
    adopted = _world(stack, vmids)
    rows = (list(ContainerInstance.objects.order_by("pk").values_list()),
            list(Allocation.objects.order_by("pk").values_list()), AuditEvent.objects.count())
    stack.pve("DELETE", "/_sim/calls")
    code, out = _adopt("--mapping", str(mapping), "--apply")
    assert code == 0 and "3 adopted already" in out, out
    assert _pve_writes(stack) == []
    _assert_same(_world(stack, vmids), adopted, "a second apply changed something")
    assert rows == (list(ContainerInstance.objects.order_by("pk").values_list()),
                    list(Allocation.objects.order_by("pk").values_list()),
                    AuditEvent.objects.count())

    # Release: everything outside as it was, the rows gone from the live fleet.
    memory = dict(Node.objects.values_list("name", "allocated_memory_mb"))
    code, out = _adopt("--release", "5101", "5102", "5103")
    assert code == 0, out
    _assert_same(_world(stack, vmids), before, "the release did not put it back")
    assert not ContainerInstance.objects.filter(vmid__in=vmids).exclude(status="purged").exists()
    assert not Allocation.objects.filter(instance__vmid__in=vmids, state="claimed").exists()
    assert dict(Node.objects.values_list("name", "allocated_memory_mb")) == {
        "pve1": memory["pve1"] - 2048 - 4096, "pve2": memory["pve2"] - 4096}
    assert doctor_report()["ok"], doctor_report()
    # ...and they can be adopted again.
    plan = adoption_plan(mapping_load(mapping))
    assert {cp.vmid for cp in plan.containers if cp.verdict == Verdict.ADOPT} == {
        5101, 5102, 5103}


def test_a_bad_mapping_file_is_refused_line_by_line_and_changes_nothing(stack, tmp_path):
    with pytest.raises(MappingInvalid) as err:
        mapping_parse("vmid,owner,kind,plan,port,colour\n5101,alice,game,,,red\n", fmt="csv")
    assert err.value.problems == [
        "line 1: unknown column(s) colour (known: vmid, owner, name, kind, variant, version, "
        "plan, runtime, runtime_version, code_server, port)"]
    with pytest.raises(MappingInvalid) as err:
        mapping_parse("vmid,owner,kind,plan,port\n12,bob!,boat,huge,70000\n"
                      "5101,alice,game,,\n5101,alice,game,,\n", fmt="csv")
    problems = "\n".join(err.value.problems)
    for expected in ("line 2: vmid 12 is outside", "owner 'bob!'", "kind 'boat'",
                     "plan 'huge'", "port 70000", "line 4: VMID 5101 appears twice"):
        assert expected in problems, problems
    assert "line 3" not in problems
    bad = tmp_path / "bad.json"
    bad.write_text('{"servers": [{"vmid": "x", "owner": "alice"}]}')
    code, out = _adopt("--mapping", str(bad), "--apply")
    assert code == 2 and "vmid 'x' is not a whole number" in out and "nothing was changed" in out
    assert not ContainerInstance.objects.exists()


def test_sigkill_halfway_through_apply_then_apply_again_adopts_each_container_once(
        stack, worker_env, tmp_path):
    fleet = [LegacyServer(5200 + i, f"old{i:02d}", f"10.1.1.{i + 10}", port=30200 + i,
                          status="running" if i % 3 else "stopped")
             for i in range(40)]
    _seed(stack, fleet)
    mapping = tmp_path / "servers.json"
    mapping.write_text(json.dumps([{"vmid": s.vmid, "owner": f"owner{i % 4}", "variant": "paper",
                                    "version": "1.21.1"} for i, s in enumerate(fleet)]))
    env = worker_env()
    cmd = [sys.executable, "manage.py", "adopt", "--mapping", str(mapping), "--apply",
           "--parallel", "3"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: Adoption.objects.count() >= 12 or proc.poll() is not None,
                   timeout=120, interval=0.02, what="the first adoptions")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    states = dict(Adoption.objects.values_list("vmid", "state"))
    assert 12 <= len(states) < 40, states  # killed halfway
    # ...with adoptions cut off between their steps (3 run at once: each is somewhere).
    assert set(states.values()) - {AdoptionState.DONE}, states
    plan = adoption_plan(mapping_load(mapping))
    assert {cp.verdict for cp in plan.containers} <= {Verdict.ADOPT, Verdict.RESUME,
                                                      Verdict.ADOPTED}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    servers = list(ContainerInstance.objects.values_list("vmid", "id"))
    assert sorted(v for v, _ in servers) == sorted(s.vmid for s in fleet)  # one row per CT
    assert Adoption.objects.filter(state=AdoptionState.DONE).count() == 40
    assert AuditEvent.objects.filter(action="adopt:claim").count() == 40
    ids = dict(servers)
    for ct in stack.containers():
        if ct["vmid"] in ids:
            ours = [t for t in ct["tags"].split(";") if t.startswith("zlh-")]
            assert ours == [f"zlh-{ids[ct['vmid']]}"], ct["tags"]
    by_name: dict[tuple[str, str], list] = {}
    for r in stack.cf_records():
        by_name.setdefault((r["type"], r["name"]), []).append(r)
    assert all(len(rs) == 1 for rs in by_name.values()), "a record was duplicated"
    assert all(rs[0]["comment"] and rs[0]["comment"].startswith("zlh:")
               for rs in by_name.values())
    registered = {s["name"] for s in stack.velocity_servers()}
    assert registered == {s.hostname for s in fleet if s.status == "running"}
    assert not ContainerInstance.objects.filter(maintenance_lock=True).exists()
    memory = sum(ContainerInstance.objects.values_list("memory_mb", flat=True))
    assert sum(Node.objects.values_list("allocated_memory_mb", flat=True)) == memory


def test_two_applies_at_once_adopt_each_container_once(stack, worker_env, tmp_path):
    fleet = [LegacyServer(5300 + i, f"twin{i:02d}", f"10.2.1.{i + 10}", node="pve2",
                          port=30300 + i) for i in range(24)]
    _seed(stack, fleet)
    mapping = tmp_path / "servers.csv"
    mapping.write_text("vmid,owner,variant,version\n" + "".join(
        f"{s.vmid},owner{i % 3},paper,1.21.1\n" for i, s in enumerate(fleet)))
    cmd = [sys.executable, "manage.py", "adopt", "--mapping", str(mapping), "--apply",
           "--parallel", "4"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=worker_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[0][-3000:] for o in outs]
    assert sorted(ContainerInstance.objects.values_list("vmid", flat=True)) == [
        s.vmid for s in fleet]
    assert Adoption.objects.filter(state=AdoptionState.DONE).count() == 24
    assert AuditEvent.objects.filter(action="adopt:claim").count() == 24
    assert Allocation.objects.filter(state="claimed").count() == 24 * 3
    assert sum(Node.objects.values_list("allocated_memory_mb", flat=True)) == 24 * 2048
    for ct in stack.containers():
        assert len([t for t in ct["tags"].split(";") if t.startswith("zlh-")]) == 1, ct
