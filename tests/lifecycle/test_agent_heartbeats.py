"""The agent stand-in's heartbeats reach a live API server (issue 14, item 2): at the interval
the agent was told at enrolment, signed with its own heartbeat token, written with the
database clock; and the /_sim/ switches stop, delay and corrupt them."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest

from core.clock import db_now
from lifecycle.models import AgentHeartbeat
from lifecycle.services.agent_credentials import agent_credential_ensure
from lifecycle.services.servers import server_create
from tests.support.clocks import skewed
from tests.support.platform import game_body
from tests.support.procs import REPO
from tests.support.stack import wait_status
from tests.support.waiting import wait_until
from tests.support.workers import start_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]
INTERVAL = 1


def row(inst):
    return AgentHeartbeat.objects.filter(server=inst).first()


def test_the_stand_ins_heartbeats_arrive_and_the_switches_work(live_server, stack, worker_env,
                                                              tmp_path, owner, settings):
    settings.AGENT_HEARTBEAT_INTERVAL_SECONDS = INTERVAL  # the receiver's view of the rate
    stack.agents("POST", "/_sim/agents/heartbeat-target", json={"url": live_server.url})
    proc = start_worker(worker_env(AGENT_HEARTBEAT_INTERVAL_SECONDS=str(INTERVAL)), tmp_path)
    try:
        inst = wait_status(server_create(owner=owner.user, data=game_body("pulse")).instance.id,
                           "running")
        wait_until(lambda: (r := row(inst)) is not None and r.ready, timeout=20,
                   what="a heartbeat saying the server is ready")
        first = row(inst)
        assert first.state == "running" and first.provisioning_complete
        assert first.memory_limit_mb == inst.memory_mb and first.agent_version == "devstack-1"
        assert abs((db_now() - first.received_at).total_seconds()) < 5
        wait_until(lambda: row(inst).sequence > first.sequence, timeout=10,
                   what="the next heartbeat")
        assert stack.agent(inst.vmid)["heartbeats"]["lastStatus"] == 202

        # stop: nothing arrives any more, the row ages (stale) by the database's clock.
        stack.agents("POST", f"/_sim/agents/{inst.vmid}/heartbeats", json={"mode": "stop"})
        time.sleep(INTERVAL * 1.5)
        frozen = row(inst)
        time.sleep(INTERVAL * 3)
        assert row(inst).sequence == frozen.sequence
        assert (db_now() - row(inst).received_at) > timedelta(seconds=INTERVAL * 3)

        # corrupt: they arrive, are refused as garbage, and nothing is written.
        sent = stack.agent(inst.vmid)["heartbeats"]["sent"]
        stack.agents("POST", f"/_sim/agents/{inst.vmid}/heartbeats", json={"mode": "corrupt"})
        wait_until(lambda: stack.agent(inst.vmid)["heartbeats"]["sent"] >= sent + 2, timeout=10,
                   what="corrupt heartbeats sent")
        assert stack.agent(inst.vmid)["heartbeats"]["lastStatus"] == 400
        assert row(inst).sequence == frozen.sequence

        # delay: each one leaves late, but they still arrive.
        stack.agents("POST", f"/_sim/agents/{inst.vmid}/heartbeats",
                     json={"mode": "delay", "delay_s": 2 * INTERVAL})
        began = time.monotonic()
        wait_until(lambda: row(inst).sequence > frozen.sequence, timeout=15,
                   what="a delayed heartbeat")
        assert time.monotonic() - began >= 2 * INTERVAL * 0.9

        # normal again: on time, with the crash the agent reports.
        stack.agents("POST", f"/_sim/agents/{inst.vmid}/heartbeats", json={"mode": "normal"})
        stack.agents("POST", f"/_sim/agents/{inst.vmid}/crash",
                     json={"reason": "java.lang.OutOfMemoryError: Java heap space"})
        wait_until(lambda: row(inst).crash_count == 1, timeout=10, what="the crash reported")
        crash = row(inst).last_crash
        assert crash["classification"] == "oom" and crash["exit_code"] == 137
        assert "OutOfMemoryError" in crash["log_tail"]
    finally:
        proc.stop()


def test_a_heartbeat_is_written_with_the_database_clock(stack, worker_env, owner):
    """Received by a host whose clock is an hour ahead, the row still says now, by MariaDB."""
    inst = server_create(owner=owner.user, data=game_body("skew")).instance
    agent_credential_ensure(instance_id=inst.id)
    code = ("import django; django.setup()\n"
            "from lifecycle.services.heartbeats import heartbeat_receive\n"
            f"print(heartbeat_receive(instance_id='{inst.id}', version=1, "
            "data={'sequence': 1, 'state': 'running'}).written)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env=worker_env(**skewed(3600)))
    assert result.stdout.strip().endswith("True"), result.stderr[-2000:]
    assert abs((db_now() - row(inst).received_at).total_seconds()) < 10
