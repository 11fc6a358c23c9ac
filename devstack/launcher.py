"""Start the devstack: Proxmox (fakepve) with two nodes and an API token, and the agents.

    python -m devstack.launcher [--time-scale 0.05] [--endpoints .devstack/endpoints.json]
                                [--proxmox-port 0] [--agents-port 0]

Everything binds to 127.0.0.1; port 0 picks a free port. The URLs and credentials of what was
started are written to the endpoints file (DESIGN §9), then "DEVSTACK READY <file>" is printed.
Runs until SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import tempfile
from pathlib import Path

from aiohttp import web
from fakepve.certs import make_cert

from .agents import AgentFleet
from .proxmox import OSTEMPLATE, DevPve

HOST = "127.0.0.1"
TOKEN_USER = "root@pam"
TOKEN_NAME = "zlh"
NODES = ("pve1", "pve2")


async def serve(args: argparse.Namespace) -> None:
    token_secret = os.environ.get("DEVSTACK_PROXMOX_TOKEN_SECRET") or secrets.token_hex(16)
    agent_token = os.environ.get("DEVSTACK_AGENT_TOKEN") or secrets.token_urlsafe(24)
    pve = DevPve(user=TOKEN_USER, password=secrets.token_urlsafe(16), host=HOST,
                 port=args.proxmox_port, nodes=NODES)
    pve.time_scale = args.time_scale
    pve.apitokens[f"{TOKEN_USER}!{TOKEN_NAME}"] = token_secret
    with tempfile.TemporaryDirectory(prefix="devstack-pki-") as pki:
        certfile, keyfile, _ = make_cert(pki, hosts=(HOST,))
        await pve.start(certfile, keyfile)

    fleet = AgentFleet(pve, agent_token)
    runner = web.AppRunner(fleet.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, args.agents_port)
    await site.start()
    agents_port = runner.addresses[0][1]

    endpoints = {
        "proxmox": {
            "url": pve.url,
            "token_id": f"{TOKEN_USER}!{TOKEN_NAME}",
            "token_secret": token_secret,
            "nodes": list(NODES),
            "verify_ssl": False,
            "ostemplate": OSTEMPLATE,
            "storage": "local-lvm",
            "sim": pve.url,
        },
        "agents": {
            "url": f"http://{HOST}:{agents_port}/agents/{{vmid}}",
            "token": agent_token,
            "sim": f"http://{HOST}:{agents_port}",
        },
    }
    path = Path(args.endpoints)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(endpoints, indent=2))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    print(f"DEVSTACK READY {path}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await pve.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float,
                        default=float(os.environ.get("DEVSTACK_TIME_SCALE", "0.05")),
                        help="real seconds per simulated second; 0 = instant")
    parser.add_argument("--endpoints", default=".devstack/endpoints.json")
    parser.add_argument("--proxmox-port", type=int, default=0)
    parser.add_argument("--agents-port", type=int, default=0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
