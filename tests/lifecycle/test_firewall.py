"""The container firewall: set up before a container first starts, each port open only to the
cluster IP set of whoever needs it, and observed and repaired like the edge (issue 14, item 3).
Everything is read back from fakepve's firewall API, over HTTP, as an operator would see it."""
from __future__ import annotations

import pytest

from lifecycle.firewall import agent_port, marker
from lifecycle.models import Operation
from lifecycle.services.servers import server_create
from reconciler.models import Finding, RepairEvent, ServerObservation
from reconciler.services import run_cycle
from tests.reconciler.helpers import running, settle
from tests.support.stack import wait_status
from tests.support.workers import start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reconciler]


def fw(stack, inst, what):
    resp = stack.pve_api("GET", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/firewall/{what}")
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def ipset(stack, name):
    resp = stack.pve_api("GET", f"/cluster/firewall/ipset/{name}")
    assert resp.status_code == 200, resp.text
    return sorted(e["cidr"] for e in resp.json()["data"])


def ours(rules):
    return sorted((r["comment"].rsplit(":", 1)[1], r["dport"], r["source"], r["action"],
                   r["proto"], r["enable"]) for r in rules if r.get("comment", "").startswith("zlh:"))


def test_a_game_server_starts_behind_its_firewall(stack, worker, owner):
    inst = running(owner, "walled")
    config = stack.pve_api("GET", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/config").json()["data"]
    assert "firewall=1" in config["net0"].split(",")
    options = fw(stack, inst, "options")
    assert (options["enable"], options["policy_in"], options["policy_out"]) == (1, "DROP", "ACCEPT")
    assert ours(fw(stack, inst, "rules")) == sorted([
        ("agent", str(agent_port()), "+zlh-control", "ACCEPT", "tcp", 1),
        ("game", str(inst.ports["game"]), "+zlh-velocity", "ACCEPT", "tcp", 1),
    ])
    assert ipset(stack, "zlh-control") == ["127.0.0.1"]
    assert ipset(stack, "zlh-velocity") == ["127.0.0.1"]
    # Set up before the container first started: the agent port was closed to others before
    # the agent took its credential on first use.
    op = Operation.objects.get(instance=inst, kind="provision")
    msgs = [line["msg"] for line in op.log]
    set_up = next(i for i, m in enumerate(msgs) if m.startswith(f"firewall of CT {inst.vmid}"))
    started = msgs.index(f"CT {inst.vmid} running")
    assert set_up < started, msgs


def test_a_dev_container_opens_its_ide_port_to_the_ide_proxy_only(stack, worker, owner):
    body = {"name": "walled-ide", "kind": "dev", "plan": "modded", "runtime": "python",
            "runtime_version": "3.12", "enable_code_server": True}
    inst = wait_status(server_create(owner=owner.user, data=body).instance.id, "running")
    assert ours(fw(stack, inst, "rules")) == sorted([
        ("agent", str(agent_port()), "+zlh-control", "ACCEPT", "tcp", 1),
        ("ide", str(inst.ports["ide"]), "+zlh-ide-proxy", "ACCEPT", "tcp", 1),
    ])
    assert ipset(stack, "zlh-ide-proxy") == ["127.0.0.1"]


def _drift(stack, inst):
    """Drift as an operator makes it in the Proxmox panel: the game rule deleted, the policy
    opened, the NIC's firewall switched off — and a rule of their own added."""
    base = f"/nodes/{inst.node.name}/lxc/{inst.vmid}"
    rules = fw(stack, inst, "rules")
    game = next(r for r in rules if r.get("comment", "").endswith(":game"))
    assert stack.pve_api("DELETE", f"{base}/firewall/rules/{game['pos']}").status_code == 200
    assert stack.pve_api("PUT", f"{base}/firewall/options",
                         data={"policy_in": "ACCEPT"}).status_code == 200
    config = stack.pve_api("GET", f"{base}/config").json()["data"]
    net0 = config["net0"].replace(",firewall=1", "")
    assert stack.pve_api("PUT", f"{base}/config", data={"net0": net0}).status_code == 200
    assert stack.pve_api("POST", f"{base}/firewall/rules",
                         data={"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22",
                               "source": "10.9.9.9", "enable": 1,
                               "comment": "operator: ssh from my desk"}).status_code == 200


def test_firewall_drift_is_found_and_repaired_and_foreign_rules_left_alone(stack, worker,
                                                                             owner):
    inst = running(owner, "drifty")
    first = run_cycle()
    assert first["calls"]["firewall_checks"] == 1
    assert ServerObservation.objects.get(instance=inst).firewall["state"] == "ok"
    _drift(stack, inst)

    summary = run_cycle()
    settle()
    assert summary["counts"]["findings"].get("firewall_drift") == 1, summary
    assert summary["counts"]["findings"].get("firewall_foreign_rule") == 1
    finding = Finding.objects.get(finding_type="firewall_drift", instance=inst)
    problems = " | ".join(finding.details["problems"])
    assert "net0 has no firewall=1" in problems and "policy_in=ACCEPT" in problems
    assert "rule game missing" in problems
    repair = RepairEvent.objects.get(action="firewall_apply", instance=inst)
    assert repair.state == "succeeded", (repair.reason, repair.after)

    # Put right — and the operator's own rule is still there, untouched.
    config = stack.pve_api("GET", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/config").json()
    assert "firewall=1" in config["data"]["net0"].split(",")
    assert fw(stack, inst, "options")["policy_in"] == "DROP"
    rules = fw(stack, inst, "rules")
    assert ("game", str(inst.ports["game"]), "+zlh-velocity", "ACCEPT", "tcp", 1) in ours(rules)
    assert [r["dport"] for r in rules if r.get("comment") == "operator: ssh from my desk"] == ["22"]
    stored = ServerObservation.objects.get(instance=inst).firewall
    assert stored["state"] == "ok" and stored["foreign"] == ["in ACCEPT tcp 22 10.9.9.9"]

    # The next cycle: no drift any more; the foreign rule stays reported (once), not repaired.
    again = run_cycle()
    assert "firewall_drift" not in again["counts"]["findings"]
    assert again["counts"]["findings"].get("firewall_foreign_rule") == 1
    assert not Finding.objects.get(finding_type="firewall_drift", instance=inst).open
    assert RepairEvent.objects.filter(action="firewall_apply").count() == 1


def test_a_rule_left_by_another_server_on_a_reused_vmid_is_replaced(stack, worker, owner):
    inst = running(owner, "reused")
    base = f"/nodes/{inst.node.name}/lxc/{inst.vmid}/firewall/rules"
    stranger = "00000000-0000-4000-8000-000000000001"
    assert stack.pve_api("POST", base, data={
        "type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "25599", "source": "+zlh-velocity",
        "enable": 1, "comment": marker(stranger, "game")}).status_code == 200
    run_cycle()
    settle()
    assert RepairEvent.objects.get(action="firewall_apply", instance=inst).state == "succeeded"
    comments = [r.get("comment") for r in fw(stack, inst, "rules")]
    assert marker(stranger, "game") not in comments
    assert sorted(c for c in comments if c) == sorted([marker(inst.id, "agent"),
                                                        marker(inst.id, "game")])


def test_the_cluster_ip_sets_are_desired_state_too(stack, worker_env, owner, settings,
                                                  tmp_path):
    # The control plane's addresses change (a new worker host), in its configuration...
    sources = "127.0.0.1,10.0.0.0/29"
    settings.FIREWALL_CONTROL_PLANE_SOURCES = sources.split(",")
    proc = start_worker(worker_env(FIREWALL_CONTROL_PLANE_SOURCES=sources), tmp_path,
                        concurrency=2)
    try:
        running(owner, "ipsets")  # its provisioning sets the IP sets up as configured
        assert ipset(stack, "zlh-control") == ["10.0.0.0/29", "127.0.0.1"]
        # ...and an operator adds an address to one of our IP sets by hand, and removes one.
        assert stack.pve_api("POST", "/cluster/firewall/ipset/zlh-velocity",
                             data={"cidr": "10.66.0.1"}).status_code == 200
        assert stack.pve_api("DELETE", "/cluster/firewall/ipset/zlh-control/127.0.0.1"
                             ).status_code == 200
        summary = run_cycle()
        settle()
    finally:
        proc.stop()
    assert summary["counts"]["findings"].get("firewall_drift") == 1
    repair = RepairEvent.objects.get(action="firewall_apply", subject="ipsets")
    assert repair.state == "succeeded", repair.reason
    assert ipset(stack, "zlh-velocity") == ["127.0.0.1"]
    assert ipset(stack, "zlh-control") == ["10.0.0.0/29", "127.0.0.1"]


def test_the_datacenter_firewall_off_is_reported_not_switched(stack, worker, owner):
    running(owner, "dc-off")
    assert stack.pve_api("PUT", "/cluster/firewall/options",
                         data={"enable": 0}).status_code == 200
    summary = run_cycle()
    settle()
    assert summary["counts"]["findings"].get("firewall_disabled") == 1
    assert stack.pve_api("GET", "/cluster/firewall/options").json()["data"].get("enable") == 0
    assert not RepairEvent.objects.filter(finding_type="firewall_disabled").exists()


def test_the_firewall_travels_with_a_migration(stack, worker, owner):
    inst = running(owner, "mover")
    before = ours(fw(stack, inst, "rules"))
    other = "pve2" if inst.node.name == "pve1" else "pve1"
    stack.pve("POST", f"/_sim/containers/{inst.vmid}/migrate", json={"node": other})
    run_cycle()
    settle()
    inst.refresh_from_db()
    assert inst.node.name == other
    assert ours(fw(stack, inst, "rules")) == before
    run_cycle()
    settle()
    assert not RepairEvent.objects.filter(action="firewall_apply").exists()


def test_checks_are_bounded_per_cycle_and_sweep_the_fleet(stack, worker, owner, settings):
    servers = [running(owner, f"swept-{i}") for i in range(5)]
    settings.RECONCILER_FIREWALL_CHECKS = 2
    seen = []
    for _ in range(3):
        summary = run_cycle(dry_run=True)
        assert summary["calls"]["firewall_checks"] <= 2
        # The cluster side (options, IP set list, three IP sets) plus three calls a container.
        assert summary["calls"]["firewall"] == 5 + 3 * summary["calls"]["firewall_checks"]
        seen.append(set(ServerObservation.objects.filter(firewall_checked_at__isnull=False)
                        .values_list("instance_id", flat=True)))
    assert [len(s) for s in seen] == [2, 4, 5]
    assert seen[-1] == {s.id for s in servers}


def test_the_status_says_how_the_firewall_was_last_found(stack, worker, owner):
    from rest_framework.test import APIClient

    inst = running(owner, "status-fw")

    def part():
        resp = APIClient().get(f"/api/v1/servers/{inst.id}/status", **owner.headers)
        assert resp.status_code == 200, resp.content
        return resp.json()["firewall"]

    assert part()["state"] == "unknown" and "not checked yet" in part()["reason"]
    run_cycle(dry_run=True)
    checked = part()
    assert checked["state"] == "ok" and checked["observed_at"] and checked["reason"] is None
    _drift(stack, inst)
    ServerObservation.objects.filter(instance=inst).update(firewall_checked_at=None)
    run_cycle(dry_run=True)
    drift = part()
    assert drift["state"] == "drift" and "rule game missing" in drift["details"]["problems"]
    assert "10.9.9.9" not in str(drift)  # the operator's own rule is not the tenant's business


def test_many_provisions_setting_up_the_ip_sets_at_once_all_succeed(stack, settings):
    """The IP sets are shared: every provision puts them right before its container starts, so
    on a fresh cluster several find a set missing and create it at the same moment. The ones
    that lose the race must take the set as made, not fail the provision (seen in CI: 'IPSet
    zlh-velocity already exists' ended a provision for good)."""
    import threading

    from lifecycle.clients.proxmox import ProxmoxClient, ProxmoxError, PveErrorKind
    from lifecycle.services.firewall import ipsets_apply

    settings.FIREWALL_CONTROL_PLANE_SOURCES = ["127.0.0.1", "10.0.0.0/29", "10.0.1.7"]
    pve = ProxmoxClient.from_settings()
    # What losing the race looks like, so the tolerance below is of the real answer.
    pve.ipset_create("zlh-race-probe", comment="test")
    with pytest.raises(ProxmoxError) as err:
        pve.ipset_create("zlh-race-probe", comment="test")
    assert err.value.kind == PveErrorKind.ALREADY_EXISTS
    pve.ipset_add("zlh-race-probe", "10.1.1.1")
    with pytest.raises(ProxmoxError) as err:
        pve.ipset_add("zlh-race-probe", "10.1.1.1")
    assert err.value.kind == PveErrorKind.ALREADY_EXISTS

    for attempt in range(5):
        for name in ("zlh-control", "zlh-velocity", "zlh-ide-proxy"):
            for cidr in ipset(stack, name) if name in pve.ipsets() else []:
                pve.ipset_remove(name, cidr)
            if name in pve.ipsets():
                assert stack.pve_api("DELETE", f"/cluster/firewall/ipset/{name}").status_code == 200
        gate = threading.Barrier(8)
        errors, changed = [], []

        def one():
            client = ProxmoxClient.from_settings()
            gate.wait(timeout=10)
            try:
                changed.append(ipsets_apply(client))
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, (attempt, errors)
        assert ipset(stack, "zlh-control") == ["10.0.0.0/29", "10.0.1.7", "127.0.0.1"]
        assert ipset(stack, "zlh-velocity") == ["127.0.0.1"]
        # Each set was created once, by whichever writer got there first.
        creations = [c for changes in changed for c in changes if c.startswith("created ")]
        assert sorted(creations) == ["created zlh-control", "created zlh-ide-proxy",
                                     "created zlh-velocity"], (attempt, changed)
