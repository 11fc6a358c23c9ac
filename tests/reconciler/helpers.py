"""Helpers for reconciler tests: running servers, cycles, and waiting for repairs."""
from __future__ import annotations

from reconciler.models import RepairEvent
from reconciler.services import run_cycle
from lifecycle.services.servers import server_create
from tests.support.platform import game_body
from tests.support.stack import wait_status
from tests.support.waiting import wait_until


def running(owner, name):
    return wait_status(server_create(owner=owner.user, data=game_body(name)).instance.id,
                       "running")


def settle(**filters):
    """Wait until no repair matching the filters is queued or running."""
    wait_until(lambda: not RepairEvent.objects.filter(state__in=("queued", "running"),
                                                      **filters).exists(),
               timeout=120, interval=0.2, what=f"repairs {filters} to finish")


def cycles(n=2, **kwargs):
    """Run up to n cycles, letting the repairs of each finish; returns the summaries."""
    out = []
    for _ in range(n):
        out.append(run_cycle(**kwargs))
        settle()
    return out
