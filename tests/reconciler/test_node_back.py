"""A node comes back (issue 17, item 3): its servers that should run are started again, all of
them, staggered by the node's start limit, with one message for the node instead of one per
server; the other node is not touched."""
from __future__ import annotations

import pytest

from lifecycle.models import ContainerInstance
from lifecycle.services.servers import server_create
from notifications.models import Notification
from reconciler.models import Finding, RepairEvent
from tests.support.platform import game_body
from tests.support.stack import wait_status
from tests.support.waiting import wait_until
from tests.support.workers import start_worker
from zlh.celery import WORKER_POOLS

from .helpers import cycles

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reconciler]

LIMITS = {"PROXMOX_NODE_LIMIT_START": "2", "RECONCILER_NODE_EVENT_MIN": "3"}


def _titles(stack):
    return [m["embeds"][0]["title"] for m in stack.discord_messages()]


def test_a_node_back_from_a_restart_gets_its_servers_started_with_one_message(
        stack, worker_env, owner, settings, tmp_path):
    for key, value in LIMITS.items():
        setattr(settings, key, int(value))
    pool, concurrency = WORKER_POOLS["lifecycle"]
    workers = [start_worker(worker_env(**LIMITS), tmp_path, name="life", pool=pool,
                            concurrency=concurrency, queues="lifecycle"),
               start_worker(worker_env(**LIMITS), tmp_path, name="side", concurrency=2,
                            queues="repair,edge,notify")]
    try:
        ids = [server_create(owner=owner.user, data=game_body(f"node{i}")).instance.id
               for i in range(10)]
        servers = [wait_status(i, "running", timeout=90) for i in ids]
        on_pve1 = [s for s in servers if s.node.name == "pve1"]
        on_pve2 = [s for s in servers if s.node.name == "pve2"]
        assert len(on_pve1) >= 4 and on_pve2
        cycles(1)
        stack.pve("POST", "/_sim/nodes/pve1/offline", json={"offline": True})
        cycles(1)  # offline: its containers are "unknown", nothing is concluded about them
        assert not Finding.objects.filter(open=True).exists()
        back = stack.pve("POST", "/_sim/nodes/pve1/offline", json={"offline": False,
                                                                   "reboot": True})
        assert sorted(back["stopped"]) == sorted(s.vmid for s in on_pve1)
        stack.pve("DELETE", "/_sim/task-peaks")
        wait_until(lambda: not Notification.objects.filter(state="pending").exists(),
                   timeout=30, what="earlier messages delivered")
        before = len(_titles(stack))
        cycles(1)
        finding = Finding.objects.get(finding_type="node_servers_down")
        assert finding.subject == "node-pve1" and finding.details["count"] == len(on_pve1)
        assert not Finding.objects.filter(finding_type="power_drift").exists()
        wait_until(lambda: ContainerInstance.objects.filter(
            pk__in=[s.id for s in on_pve1], status="running").count() == len(on_pve1),
            timeout=120, what="the node's servers to run again")
        cycles(1)
    finally:
        for w in workers:
            w.stop()
    power = {c["vmid"]: c["status"] for c in stack.containers()}
    assert all(power[s.vmid] == "running" for s in servers)
    repairs = list(RepairEvent.objects.values_list("action", "state"))
    assert repairs == [("start_node_servers", "succeeded")], repairs
    peaks = stack.pve("GET", "/_sim/task-peaks")
    assert peaks.get("pve1/vzstart", {}).get("peak", 0) <= 2, peaks
    assert peaks.get("pve2/vzstart", {}).get("peak", 0) == 0, peaks  # the other node: untouched
    wait_until(lambda: not Notification.objects.filter(state="pending").exists(),
               timeout=30, what="the messages delivered")
    titles = _titles(stack)[before:]
    # One alert for the node and its resolution once every server runs again; none per server.
    assert titles == ["node servers down: node pve1", "Resolved: node servers down: node pve1"], \
        titles
