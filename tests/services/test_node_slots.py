"""The per-node limit on Proxmox tasks (`services.node_slots`): the semaphore itself, on the real
database — many takers at once, a holder that dies, the same operation coming back."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest
from django.db import connection

from lifecycle.models import NodeTaskSlot
from lifecycle.services.node_slots import (
    node_slot_acquire,
    node_slot_release,
    node_slots_in_use,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_never_more_holders_than_places_however_many_try_at_once(settings):
    settings.PROXMOX_NODE_LIMIT_CREATE = 3
    barrier = Barrier(12)

    def take(i):
        barrier.wait(timeout=30)
        try:
            return node_slot_acquire(node="pve1", kind="create", holder=f"op-{i}",
                                     ttl_seconds=60)
        finally:
            connection.close()

    for _ in range(3):
        with ThreadPoolExecutor(max_workers=12) as pool:
            got = list(pool.map(take, range(12)))
        assert got.count(True) == 3, got
        assert node_slots_in_use(node="pve1", kind="create") == 3
        assert NodeTaskSlot.objects.exclude(holder="").count() == 3
        for i, ok in enumerate(got):
            if ok:
                assert node_slot_release(holder=f"op-{i}") == 1
        assert node_slots_in_use(node="pve1", kind="create") == 0


def test_the_same_holder_finds_its_place_again_and_kinds_and_nodes_are_apart(settings):
    settings.PROXMOX_NODE_LIMIT_START = 1
    assert node_slot_acquire(node="pve1", kind="start", holder="a", ttl_seconds=60)
    assert node_slot_acquire(node="pve1", kind="start", holder="a", ttl_seconds=60)  # again
    assert not node_slot_acquire(node="pve1", kind="start", holder="b", ttl_seconds=60)
    assert node_slot_acquire(node="pve2", kind="start", holder="b", ttl_seconds=60)
    assert node_slot_acquire(node="pve1", kind="stop", holder="b", ttl_seconds=60)
    assert NodeTaskSlot.objects.filter(holder="a").count() == 1


def test_a_holder_that_died_gives_its_place_up_when_its_time_is_up(settings):
    settings.PROXMOX_NODE_LIMIT_BACKUP = 1
    assert node_slot_acquire(node="pve1", kind="backup", holder="dead", ttl_seconds=1)
    assert not node_slot_acquire(node="pve1", kind="backup", holder="next", ttl_seconds=60)
    time.sleep(1.2)
    assert node_slot_acquire(node="pve1", kind="backup", holder="next", ttl_seconds=60)
    assert NodeTaskSlot.objects.get(node="pve1", kind="backup", slot=0).holder == "next"


def test_no_limit_takes_nothing(settings):
    settings.PROXMOX_NODE_LIMIT_RESTORE = 0
    assert all(node_slot_acquire(node="pve1", kind="restore", holder=f"h{i}", ttl_seconds=9)
               for i in range(20))
    assert not NodeTaskSlot.objects.exists()
