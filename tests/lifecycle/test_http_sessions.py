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


def test_sessions_read_the_environment_once_not_per_call(stack, monkeypatch):
    """requests scans os.environ for proxies and a CA bundle at every call unless told not to;
    without proxy variables our sessions read it once: the CA bundle becomes their `verify`."""
    from core.http import bounded_session

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    session = bounded_session(max_bytes=1024)
    assert session.trust_env is False
    assert session.verify == "/etc/ssl/certs/ca-certificates.crt"
    pve = ProxmoxClient.from_settings()
    assert pve.api._store["session"].trust_env is False
    assert pve.cluster_resources() is not None  # still talks to the devstack

    # Behind a proxy: read per call, so NO_PROXY is matched against each URL.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert bounded_session(max_bytes=1024).trust_env is True


def test_tls_connections_share_one_context_per_trust_setting_and_still_verify(stack, settings):
    """A new TLS connection does not load the CA bundle again (one SSL context per process and
    trust setting), and a client that verifies still refuses the devstack's self-signed
    Proxmox: sharing the context changed the cost, not the check."""
    import requests as _requests
    import ssl

    from core.http import tls_context

    clients = []
    for _ in range(3):  # three threads' clients: three connections, one context
        thread = threading.Thread(target=lambda: clients.append(ProxmoxClient.shared()))
        thread.start()
        thread.join(timeout=10)
    for client in clients:
        client.cluster_resources()
        pools = client.api._store["session"].get_adapter("https://x").poolmanager.pools
        [pool] = pools._container.values()
        assert pool.conn_kw["ssl_context"] is tls_context(verify=False)
    assert tls_context(verify=False).verify_mode == ssl.CERT_NONE

    settings.PROXMOX_VERIFY_SSL = True
    checking = ProxmoxClient.from_settings()
    try:
        checking.cluster_resources()
    except Exception as exc:  # proxmoxer wraps nothing: requests' SSLError comes through
        chain = [exc, exc.__cause__, exc.__context__]
        assert any(isinstance(e, (_requests.exceptions.SSLError, ssl.SSLError))
                   or "CERTIFICATE_VERIFY_FAILED" in str(e) for e in chain if e), chain
    else:
        raise AssertionError("a verifying client accepted a self-signed certificate")
    verifying = tls_context(verify=True, ca_certs=_ca_bundle())
    assert verifying.check_hostname and verifying.verify_mode == ssl.CERT_REQUIRED
    assert verifying is tls_context(verify=True, ca_certs=_ca_bundle())


def _ca_bundle():
    from core.http import ca_bundle
    bundle = ca_bundle()
    return bundle if isinstance(bundle, str) else __import__("certifi").where()
