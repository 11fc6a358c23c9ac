"""Scheduled backups, the pure parts: when a server is due, and what retention keeps."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from lifecycle.catalog import BackupPolicy
from lifecycle.services.backup_schedule import latest_slot, phase_of, retention_keep

DAY = 24 * 3600
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def test_phases_spread_a_fleet_over_the_interval():
    phases = [phase_of(uuid.uuid4(), DAY) for _ in range(2000)]
    per_hour = [0] * 24
    for p in phases:
        per_hour[p // 3600] += 1
    # 2000 servers over 24 hours: about 83 an hour, none of the hours crowded or empty.
    assert min(per_hour) > 40 and max(per_hour) < 130, per_hour


def test_the_slot_is_stable_and_moves_one_interval_at_a_time():
    sid = uuid.uuid4()
    slot = latest_slot(sid, DAY, T0)
    assert slot <= T0.timestamp() < slot + DAY
    assert latest_slot(sid, DAY, T0 + timedelta(seconds=1)) == slot or \
        latest_slot(sid, DAY, T0 + timedelta(seconds=1)) == slot + DAY
    assert latest_slot(sid, DAY, T0 + timedelta(days=1)) == slot + DAY
    assert (slot - phase_of(sid, DAY)) % DAY == 0


def _daily(n, hours=24):
    return [(i, T0 - timedelta(hours=hours * i)) for i in range(n)]


def test_retention_keeps_the_last_the_daily_and_the_weekly():
    policy = BackupPolicy(interval_seconds=DAY, keep_last=2, keep_daily=7, keep_weekly=4)
    backups = _daily(60)  # one a day for 60 days, id 0 the newest
    keep = retention_keep(backups, policy)
    assert {0, 1} <= keep                      # the last two
    assert set(range(7)) <= keep               # one for each of the last 7 days
    weekly = keep - set(range(7))
    assert 1 <= len(weekly) <= 4               # older weeks: the newest of each
    assert len(keep) <= 2 + 7 + 4
    assert 59 not in keep


def test_many_backups_on_one_day_keep_only_the_newest_beyond_keep_last():
    policy = BackupPolicy(interval_seconds=3600, keep_last=2, keep_daily=7, keep_weekly=4)
    backups = _daily(10, hours=1)  # ten within ten hours of one day
    assert retention_keep(backups, policy) == {0, 1}


def test_nothing_is_pruned_below_keep_last():
    policy = BackupPolicy(interval_seconds=DAY, keep_last=5, keep_daily=0, keep_weekly=0)
    assert retention_keep(_daily(3), policy) == {0, 1, 2}
