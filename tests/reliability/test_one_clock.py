"""One clock per deadline: leases, retries, purge windows, quarantines and notification leases
are written and judged with the database clock, in UTC, whatever the server's global time zone
and whatever the app hosts' clocks say (issue 13, item 1)."""
from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db.models.functions import Now

from core.clock import db_now
from lifecycle.choices import OperationKind
from lifecycle.models import ContainerInstance, Operation
from lifecycle.services.actions import server_request
from lifecycle.services.audit import Actor
from lifecycle.services.servers import server_create
from lifecycle.worker.runner import claim
from lifecycle.worker.sweeper import server_purge_due
from notifications.models import ChannelState
from notifications.services import _claim, _release
from reconciler.models import Finding
from reconciler.services import run_cycle
from tests.support.clocks import global_time_zone, skewed
from tests.support.platform import game_body
from tests.support.procs import REPO
from tests.support.stack import wait_status
from tests.support.workers import start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]
WINDOW = 3600  # a restore window shorter than the time zone offsets below


def test_the_session_time_zone_is_utc_whatever_the_global_one(stack):
    from django.db import connection

    with global_time_zone("-05:00"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT @@session.time_zone, TIMESTAMPDIFF(SECOND, NOW(), "
                           "UTC_TIMESTAMP())")
            zone, offset = cursor.fetchone()
    assert zone == "+00:00" and abs(offset) <= 1


def test_a_live_operation_is_not_stale_west_of_utc(stack, owner):
    """Seen by hand at -05:00: every running operation looked five hours stale to the
    reconciler, which cleared the locks of live provisions."""
    with global_time_zone("-05:00"):
        result = server_create(owner=owner.user, data=game_body("west"))
        assert claim(operation_id=result.operation.id, worker="test:1:live") is not None
        summary = run_cycle(dry_run=True)
        assert summary["outcome"] == "completed", summary
        assert not Finding.objects.filter(finding_type="stale_operation").exists()
        assert Operation.objects.filter(pk=result.operation.id,
                                        lease_expires_at__gt=Now()).exists()


def _deleted_server(owner, worker_env, tmp_path, name, **env):
    worker = start_worker(worker_env(ZLH_SOFT_DELETE_WINDOW_SECONDS=str(WINDOW), **env),
                          tmp_path, name=name)
    try:
        inst = server_create(owner=owner.user, data=game_body(name)).instance
        wait_status(inst.id, "running")
        server_request(instance_id=inst.id, kind=OperationKind.DELETE,
                       actor=Actor.for_user(owner.user))
        return wait_status(inst.id, "deleted")
    finally:
        worker.stop()


def test_nothing_is_purged_early_east_of_utc(stack, owner, worker_env, tmp_path, settings):
    """At +02:00 a one-hour window used to be over before it began."""
    settings.ZLH_SOFT_DELETE_WINDOW_SECONDS = WINDOW
    with global_time_zone("+02:00"):
        inst = _deleted_server(owner, worker_env, tmp_path, "east")
        left = (inst.purge_after - db_now()).total_seconds()
        assert WINDOW - 120 < left <= WINDOW, left
        assert server_purge_due() == 0
        assert server_request(instance_id=inst.id, kind=OperationKind.RESTORE,
                              actor=Actor.for_user(owner.user))  # the window is still open


def test_a_worker_whose_clock_lags_purges_nothing_early(stack, owner, worker_env, tmp_path,
                                                        settings):
    """A worker host ten minutes behind the database wrote windows that had already run out
    by the database's clock (the purge schedule compares them in SQL)."""
    settings.ZLH_SOFT_DELETE_WINDOW_SECONDS = 300
    global WINDOW
    window, WINDOW = WINDOW, 300
    try:
        inst = _deleted_server(owner, worker_env, tmp_path, "lagging", **skewed(-600))
    finally:
        WINDOW = window
    left = (inst.purge_after - db_now()).total_seconds()
    assert 180 < left <= 300, left
    assert server_purge_due() == 0


@pytest.mark.parametrize("skew", [-120, 120])
def test_a_notification_lease_taken_by_a_skewed_host_holds(stack, worker_env, skew):
    """A sender on a host two minutes behind wrote a lease that had already expired by the
    database's clock, so a second sender took the channel too: duplicate Discord messages."""
    code = ("import django; django.setup()\n"
            "from notifications.services import _claim\n"
            "print(_claim('info', 'skewed-host'))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env=worker_env(**skewed(skew)))
    assert result.stdout.strip().endswith("True"), result.stderr[-2000:]
    try:
        assert not _claim("info", "another-host")  # the lease is held, by the DB's clock
        lease = ChannelState.objects.get(channel="info").lease_expires_at
        assert timedelta(seconds=30) < lease - db_now() <= timedelta(seconds=60)
    finally:
        _release("info", "skewed-host")
    assert _claim("info", "another-host")


def test_an_operation_retry_is_due_by_the_database_clock(stack, owner, worker_env, tmp_path):
    """A retry written by a host ahead of the database would wait that much longer."""
    stack.fault(method="POST", path=r"/nodes/pve\d/lxc$", status=500,
                body="unexpected error: got no worker upid - start worker failed", count=1)
    worker = start_worker(worker_env(**skewed(3600)), tmp_path, name="ahead")
    try:
        inst = server_create(owner=owner.user, data=game_body("ahead")).instance
        wait_status(inst.id, "running", timeout=60)  # retried after its short backoff
    finally:
        worker.stop()
    assert Operation.objects.get(instance=inst, kind="provision").attempt == 2
    assert ContainerInstance.objects.get(pk=inst.id).status == "running"
    assert django_settings.OPERATION_RETRY_MAX_SECONDS < 3600
