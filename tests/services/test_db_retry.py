"""Whole-transaction retry on a real InnoDB deadlock (1213)."""
from __future__ import annotations

import threading

import pytest
from django.db import OperationalError, connection, transaction

from core.db import is_lock_conflict, retry_on_lock_conflict
from lifecycle.models import AccountQuota
from tests.support.platform import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_real_deadlock_is_retried_and_both_transactions_commit():
    a = make_user("dl-a").user.quota.pk
    b = make_user("dl-b").user.quota.pk
    barrier = threading.Barrier(2)
    attempts = {"ab": 0, "ba": 0}
    errors = []

    def locker(name, first, second):
        @retry_on_lock_conflict
        def work():
            attempts[name] += 1
            with transaction.atomic():
                AccountQuota.objects.select_for_update().get(pk=first)
                if attempts[name] == 1:
                    barrier.wait(timeout=30)  # both hold their first lock now
                AccountQuota.objects.select_for_update().get(pk=second)
                AccountQuota.objects.filter(pk=first).update(max_servers=100 + attempts[name])

        try:
            work()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=locker, args=("ab", a, b)),
               threading.Thread(target=locker, args=("ba", b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    # InnoDB chose one victim, which ran its whole transaction again.
    assert sorted(attempts.values()) == [1, 2]
    assert AccountQuota.objects.filter(pk__in=[a, b], max_servers__gt=100).count() == 2


def test_only_lock_conflicts_count_as_retryable():
    assert is_lock_conflict(OperationalError(1213, "Deadlock found"))
    assert is_lock_conflict(OperationalError(1205, "Lock wait timeout exceeded"))
    assert not is_lock_conflict(OperationalError(2006, "MySQL server has gone away"))
    assert not is_lock_conflict(ValueError("1213"))
