"""Fixtures for tests against the real stack: the devstack process (fakepve, agents, edge and
Discord stand-ins over real HTTP), real Celery worker processes, MariaDB and Redis. Registered
for every test by tests/conftest.py (pytest_plugins)."""
from __future__ import annotations

import pytest

from lifecycle.models import ContainerInstance, Operation
from lifecycle.worker.sweeper import operation_sweep
from tests.support.devstack import apply_settings
from tests.support.platform import make_user, seed_platform
from tests.support.procs import child_env
from tests.support.waiting import wait_until
from tests.support.workers import start_beat, start_worker

FORWARDING_SECRET = "fwd-Secret-7f3a9c1e5b"

# Short leases, backoffs and waits so failures and takeovers happen in test time; the
# production defaults are in zlh/settings.py.
FAST = {
    "OPERATION_LEASE_SECONDS": "3",
    "OPERATION_RETRY_BASE_SECONDS": "0.2",
    "OPERATION_RETRY_MAX_SECONDS": "2",
    "OPERATION_MAX_ATTEMPTS": "6",
    "OPERATION_REENQUEUE_AFTER_SECONDS": "2",
    "PROXMOX_TIMEOUT": "30",
    "PROXMOX_TASK_TIMEOUT": "30",
    "AGENT_TIMEOUT": "2",
    "AGENT_WAIT_SECONDS": "30",
    "READY_WAIT_SECONDS": "60",
    "GAME_STOP_WAIT_SECONDS": "10",
    "CONTAINER_SHUTDOWN_TIMEOUT": "10",
    "VELOCITY_FORWARDING_SECRET": FORWARDING_SECRET,
    "DISCORD_CRITICAL_ROLE_ID": "424242424242",
    "RECONCILER_STALE_OPERATION_SECONDS": "5",
    "RECONCILER_STUCK_TRANSITION_SECONDS": "3",
    "RECONCILER_PURGE_GRACE_SECONDS": "1",
    "RECONCILER_AGENT_TIMEOUT": "1",
    "RECONCILER_LEASE_SECONDS": "15",
    "RECONCILER_BREAKER_COOLDOWN_SECONDS": "2",
    "NOTIFY_BACKOFF_MAX_SECONDS": "1",
    # The agents' heartbeats go nowhere (the discard port) unless a test points the devstack
    # at its live server (`/_sim/agents/heartbeat-target`).
    "AGENT_HEARTBEAT_URL": "http://127.0.0.1:9/api/v1/agents/{server_id}/heartbeat",
    # ...so the reconciler does not expect them either, unless a test says so.
    "RECONCILER_EXPECT_HEARTBEATS": "0",
    # Scheduled backups would hold servers' operation slot in tests about other things; the
    # backup tests turn them on.
    "BACKUP_SCHEDULED": "0",
    "BACKUP_VERIFY": "0",
    "BACKUP_DELETE_RETRY_SECONDS": "5",
    # An operation waiting for a Proxmox task place looks again this often.
    "PROXMOX_SLOT_WAIT_SECONDS": "0.2",
}


@pytest.fixture
def stack(devstack, settings, transactional_db):
    """A clean devstack, this process's settings pointed at it, and a seeded platform."""
    devstack.reset()
    apply_settings(settings, {**devstack.env, **FAST})
    seed_platform()
    return devstack


@pytest.fixture
def worker_env(stack):
    def make(**extra: str) -> dict[str, str]:
        return child_env(**{**stack.env, **FAST, **extra})
    return make


@pytest.fixture
def worker(worker_env, tmp_path):
    proc = start_worker(worker_env(), tmp_path, concurrency=2)
    yield proc
    proc.stop()


@pytest.fixture
def beat(worker_env, tmp_path):
    proc = start_beat(worker_env(), tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def owner(stack):
    return make_user("owner")


def wait_status(instance_id, status, *, timeout=60, sweep=False):
    """Wait for a server to reach `status`; with sweep=True also play the beat's sweeper."""
    def check():
        return ContainerInstance.objects.filter(pk=instance_id, status=status).exists()

    def fail_fast():
        inst = ContainerInstance.objects.get(pk=instance_id)
        op = Operation.objects.filter(instance_id=instance_id).order_by("-created_at").first()
        if inst.status == "failed" and status != "failed" and op and op.state == "failed":
            raise AssertionError(f"server failed: {inst.last_error} / {op.log}")
        if sweep:
            operation_sweep()

    wait_until(check, timeout=timeout, interval=0.2, what=f"server {instance_id} {status}",
               on_tick=fail_fast)
    return ContainerInstance.objects.get(pk=instance_id)


def wait_operation(operation_id, *, states=("succeeded",), timeout=60, sweep=False):
    def check():
        return Operation.objects.filter(pk=operation_id, state__in=states).exists()

    wait_until(check, timeout=timeout, interval=0.2, what=f"operation {operation_id} {states}",
               on_tick=operation_sweep if sweep else None)
    return Operation.objects.get(pk=operation_id)
