#!/usr/bin/env python
"""Bulk edge observation: API calls per source for many servers.

Seeds the devstack's Cloudflare, Technitium and Velocity stand-ins with the records of N game
servers (plus some drift), runs `observe_edge_bulk` and prints calls per source, pages and time.
Calls must grow with pages (N * 2 records / page size), never with servers.

    .venv/bin/python bench/edge_observe.py [--servers 100,500,2000] [--page-size 1000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import REPO  # noqa: F401 - sets up sys.path and settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="100,500,2000")
    parser.add_argument("--page-size", default="100,1000")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings

    from edge.services import EdgeClients, EdgeTarget, observe_edge_bulk
    from tests.support.devstack import Devstack

    stack = Devstack(Path(tempfile.mkdtemp(prefix="edgebench-")))
    for key, value in stack.env.items():
        setattr(settings, key, value)
    rows = []
    try:
        for n in (int(x) for x in args.servers.split(",")):
            stack.reset()
            targets = [EdgeTarget(server_id=str(uuid.uuid4()), slug=f"srv{i}",
                                  backend_ip=f"10.{1 + i // 60000}.{(i // 250) % 240}.{i % 250 + 2}",
                                  backend_port=30000 + i % 1000) for i in range(n)]
            ip = settings.VELOCITY_PUBLIC_IP
            stack.sim("cloudflare", "POST", "/_sim/records", json=[
                rec for t in targets for rec in (
                    {"type": "A", "name": t.fqdn, "content": ip, "ttl": 60, "proxied": False,
                     "comment": t.owner_comment},
                    {"type": "SRV", "name": t.srv_name, "ttl": 60, "comment": t.owner_comment,
                     "data": {"priority": 0, "weight": 5, "port": 25565, "target": t.fqdn}})
            ][: 2 * n - 3])  # a little drift: the last server misses records
            stack.sim("technitium", "POST", "/_sim/records", json={
                "zone": settings.TECHNITIUM_ZONE, "records": [
                    {"name": t.internal_fqdn, "type": "A", "rData": {"ipAddress": t.backend_ip},
                     "comments": t.owner_comment} for t in targets]})
            stack.sim("velocity", "POST", "/_sim/servers", json=[
                {"name": t.slug, "address": t.backend, "hosts": [t.fqdn]} for t in targets])
            for page_size in (int(x) for x in args.page_size.split(",")):
                settings.CLOUDFLARE_PAGE_SIZE = page_size
                clients = EdgeClients()
                t0 = time.monotonic()
                bulk = observe_edge_bulk(targets, clients=clients)
                elapsed = time.monotonic() - t0
                drifted = sum(1 for o in bulk.by_server.values() if not o.ok)
                rows.append((n, page_size, bulk.calls["cloudflare"], bulk.calls["technitium"],
                             bulk.calls["velocity"], drifted, elapsed))
    finally:
        stack.stop()

    print("bulk edge observe: calls per source (one paged listing each)")
    print(f"  {'servers':>7} {'page':>5} {'cloudflare':>10} {'technitium':>10} {'velocity':>8}"
          f" {'drifted':>7} {'seconds':>7}")
    for n, page, cf, tech, vel, drifted, elapsed in rows:
        print(f"  {n:>7} {page:>5} {cf:>10} {tech:>10} {vel:>8} {drifted:>7} {elapsed:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
