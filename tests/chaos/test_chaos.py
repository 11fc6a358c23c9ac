"""Chaos: seeded random operations under randomized faults, then convergence and invariants.
Runs alone with `-m chaos`; seeds from CHAOS_SEEDS (comma-separated), default three fixed ones."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.clocks import global_time_zone
from tests.support.platform import make_user

from .runner import ChaosRun

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chaos]
SEEDS = [int(s) for s in os.environ.get("CHAOS_SEEDS", "11,2024,777").split(",")]

CHAOS_ENV = {
    "OPERATION_MAX_ATTEMPTS": "12",
    "PROXMOX_TIMEOUT": "2",  # short, so a stalled call is a timeout in test time
    "RECONCILER_STUCK_TRANSITION_SECONDS": "20",
    "RECONCILER_STALE_OPERATION_SECONDS": "20",
    "RECONCILER_MASS_DRIFT_MIN": "200",
    "RECONCILER_REPAIR_BUDGET_PER_HOUR": "50",
    "RECONCILER_BREAKER_THRESHOLD": "50",
    # Every periodic job every 2 s (beat installs its schedule from these when it starts).
    "ZLH_SWEEP_INTERVAL_SECONDS": "2",
    "ZLH_PURGE_DUE_INTERVAL_SECONDS": "2",
    "ZLH_QUARANTINE_RELEASE_INTERVAL_SECONDS": "2",
    "NOTIFY_FLUSH_INTERVAL_SECONDS": "2",
    "RECONCILER_INTERVAL_SECONDS": "2",
    # Every wait for a game to become ready goes on without a worker (queued, looking again),
    # so the faults also land inside those waits.
    "READY_HOLD_SECONDS": "0",
    "READY_LOOK_SECONDS": "0.1",
}


#: The MariaDB server's global time zone during a run, by seed: never the app's UTC, so a
#: deadline written with one clock and compared with another shows up as an early expiry.
ZONES = ("-05:00", "+02:00", "+09:30")


@pytest.mark.parametrize("seed", SEEDS)
def test_chaos(seed, stack, worker_env, tmp_path, settings):
    zone = ZONES[SEEDS.index(seed) % len(ZONES)]
    print(f"seed {seed}: database global time zone {zone}")
    with global_time_zone(zone):
        _chaos(seed, stack, worker_env, tmp_path, settings)


def _chaos(seed, stack, worker_env, tmp_path, settings):
    stack.reset(time_scale=0.02)
    for key, value in CHAOS_ENV.items():
        setattr(settings, key, type(getattr(settings, key))(value))
    owners = [make_user(f"chaos{i}", max_servers=40) for i in range(3)]
    staff = make_user("chaos-staff", staff=True)
    run = ChaosRun(seed=seed, stack=stack, owners=owners, staff=staff,
                   env=lambda: worker_env(**CHAOS_ENV), tmp_path=tmp_path,
                   ops=int(os.environ.get("CHAOS_OPS", "160")))
    run.start()
    try:
        run.run()
        took = run.converge()
        print(f"seed {seed} converged {took:.1f}s after the faults stopped")
    finally:
        run.stop()
    run.verify()
    summary = run.summary()
    print(summary)
    out = Path(__file__).resolve().parents[2] / "artifacts" / "chaos"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"seed-{seed}.txt").write_text(summary + "\n")
