"""The singleton: two beats and two controllers never overlap or repair twice; an old epoch
cannot write; a Redis wipe mid-cycle costs nothing."""
from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from lifecycle.models import ContainerInstance, Operation
from reconciler.lease import KEY, FencedOut, LeaseLost, acquire, fenced
from reconciler.models import ControllerLease, ControllerRun, RepairEvent
from reconciler.services import run_cycle
from tests.support import broker
from tests.support.waiting import wait_until
from tests.support.workers import start_beat, start_worker

from .helpers import running, settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reconciler]


OTHER_INTERVALS = ("ZLH_SWEEP_INTERVAL_SECONDS", "ZLH_PURGE_DUE_INTERVAL_SECONDS",
                   "ZLH_QUARANTINE_RELEASE_INTERVAL_SECONDS", "NOTIFY_FLUSH_INTERVAL_SECONDS",
                   "ZLH_BACKUP_SCHEDULE_INTERVAL_SECONDS")


def _no_overlap(runs):
    runs = sorted(runs, key=lambda r: r.started_at)
    for earlier, later in zip(runs, runs[1:]):
        assert earlier.finished_at is not None, earlier
        assert earlier.finished_at <= later.started_at, (earlier.pk, later.pk)


def test_two_beats_and_two_controllers_never_overlap_nor_repair_twice(stack, worker_env, owner,
                                                                     tmp_path):
    # Beat installs its schedule from settings when it starts: the reconciler every second,
    # everything else out of the way for this test.
    only_cycles = {**{name: "3600" for name in OTHER_INTERVALS},
                   "RECONCILER_INTERVAL_SECONDS": "1"}
    lifecycle = start_worker(worker_env(), tmp_path, name="life", queues="lifecycle,notify")
    try:
        inst = running(owner, "twice")
        other = running(owner, "twice-b")
        stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop")
        stack.sim("velocity", "POST", "/_sim/restart")
        procs = [start_worker(worker_env(), tmp_path, name=f"ctl{i}", queues="repair",
                              concurrency=2) for i in range(2)]
        procs += [start_beat(worker_env(**only_cycles), tmp_path, name=f"beat{i}")
                  for i in range(2)]
        try:
            wait_until(lambda: ControllerRun.objects.filter(outcome="completed").count() >= 6,
                       timeout=90, interval=0.5, what="six completed cycles")
            wait_until(lambda: stack.containers() and all(
                c["status"] == "running" for c in stack.containers()) and len(
                stack.velocity_servers()) == 2, timeout=60, what="the repairs")
        finally:
            for proc in procs:
                proc.stop()
    finally:
        lifecycle.stop()
    runs = list(ControllerRun.objects.all())
    _no_overlap(runs)
    assert len({r.epoch for r in runs}) == len(runs)  # a new epoch for every acquisition
    assert RepairEvent.objects.filter(action="start_container", state="succeeded").count() == 1
    assert Operation.objects.filter(instance=inst, kind="start").count() == 1
    # `other` is registered again only by a repair, once. `inst` is registered by whichever
    # comes first — the repair, or its start operation publishing the edge — never by both
    # repairs of two controllers.
    registered = RepairEvent.objects.filter(action="velocity_register", state="succeeded")
    assert registered.filter(instance=other).count() == 1
    assert registered.filter(instance=inst).count() <= 1
    assert ContainerInstance.objects.get(pk=inst.id).status == "running"


def test_a_controller_holding_an_old_epoch_cannot_write(stack):
    first = acquire("first")
    assert first is not None
    assert acquire("second") is None  # held
    broker.client().delete(KEY)  # its lease expires (a long GC pause, a partition...)
    second = acquire("second")
    assert second.epoch == first.epoch + 1
    with pytest.raises(FencedOut):
        with fenced(first.epoch):
            ControllerLease.objects.update(holder="first was here")  # never committed
    assert ControllerLease.objects.get().holder == "second"
    with pytest.raises(LeaseLost):
        first.renew()
    with fenced(second.epoch):
        pass
    second.renew()
    second.release()
    first.release()  # releasing by token never frees someone else's lease
    assert acquire("third") is not None


def test_redis_wiped_during_a_cycle_then_the_next_runs_normally(stack, worker, owner):
    inst = running(owner, "wiped")
    stack.pve_api("POST", f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop")
    # The first cycle's Proxmox listing takes 3 s; Redis is wiped meanwhile.
    stack.fault(method="GET", path="/cluster/resources", delay_s=3, count=1)
    first: dict = {}

    def slow_cycle():
        try:
            first.update(run_cycle())
        finally:
            connection.close()

    thread = threading.Thread(target=slow_cycle)
    thread.start()
    wait_until(lambda: ControllerRun.objects.exists(), timeout=10, what="the first cycle")
    time.sleep(0.5)
    broker.client().flushall()
    second = run_cycle()
    thread.join(timeout=60)
    settle()
    assert second["outcome"] == "completed"
    assert first["outcome"] == "lease_lost"
    _no_overlap([r for r in ControllerRun.objects.all() if r.outcome == "completed"])
    wait_until(lambda: stack.containers()[0]["status"] == "running", timeout=60)
    assert Operation.objects.filter(instance=inst, kind="start").count() == 1
    assert RepairEvent.objects.filter(action="start_container").exclude(
        state="skipped").count() == 1
