"""A worker's flows reuse one HTTP session per outside system and thread (ProxmoxClient.shared,
EdgeClients.shared): connections are opened once, not per step; each thread has its own; a
change of settings gives a new client. Counted on the real devstack through urllib3's pools."""
from __future__ import annotations

import threading

from edge.services import EdgeClients
from lifecycle.clients.proxmox import ProxmoxClient


def opened(session) -> int:
    """TCP connections this requests session has opened so far (every pool of every adapter)."""
    return sum(pool.num_connections
               for adapter in set(session.adapters.values())
               for pool in adapter.poolmanager.pools._container.values())


def test_one_proxmox_session_per_thread_reused_from_call_to_call(stack, settings):
    first = ProxmoxClient.shared()
    for _ in range(20):
        first.cluster_resources()
    assert ProxmoxClient.shared() is first
    assert opened(first.api._store["session"]) == 1

    others: list[ProxmoxClient] = []
    thread = threading.Thread(target=lambda: others.append(ProxmoxClient.shared()))
    thread.start()
    thread.join(timeout=10)
    assert others and others[0] is not first

    settings.PROXMOX_TIMEOUT = settings.PROXMOX_TIMEOUT + 1
    assert ProxmoxClient.shared() is not first


def test_one_edge_session_per_system_and_thread(stack, settings):
    clients = EdgeClients.shared()
    for _ in range(10):
        clients.cloudflare.list_records(name="nothing.example", type="A")
        clients.technitium.records("nothing.internal.example")
        clients.velocity.servers()
    ticks: list[int] = []
    again = EdgeClients.shared(on_wait=lambda: ticks.append(1))
    assert again is clients and again.cloudflare.on_wait is not None
    assert [opened(c.http.session) for c in (clients.cloudflare, clients.technitium,
                                        clients.velocity)] == [1, 1, 1]
    settings.VELOCITY_TIMEOUT = settings.VELOCITY_TIMEOUT + 1
    assert EdgeClients.shared() is not clients
