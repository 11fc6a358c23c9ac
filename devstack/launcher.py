"""Start the devstack: Proxmox (fakepve) with two nodes and an API token, the agents, the edge
stand-ins (Cloudflare, Technitium, the Velocity bridge), the IDE proxy and Discord.

    python -m devstack.launcher [--time-scale 0.05] [--endpoints .devstack/endpoints.json]
                                [--proxmox-port 0] [--agents-port 0]

Everything binds to 127.0.0.1; port 0 picks a free port. The URLs and credentials of what was
started are written to the endpoints file, then "DEVSTACK READY <file>" is printed.
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
from .cloudflare import CloudflareStandIn
from .discord import DiscordStandIn
from .ideproxy import IdeProxyStandIn
from .proxmox import OSTEMPLATE, DevPve
from .technitium import TechnitiumStandIn
from .velocity import VelocityStandIn

HOST = "127.0.0.1"
TOKEN_USER = "root@pam"
TOKEN_NAME = "zlh"
NODES = ("pve1", "pve2")
ZONE = "play.zlh.test"
INTERNAL_ZONE = "zlh.internal"


async def _serve_app(app: web.Application, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner, runner.addresses[0][1]


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
    pve.disk_source = fleet.disk_of  # what a vzdump copies of a container's disk
    runners = []
    runner, agents_port = await _serve_app(fleet.app(), args.agents_port)
    runners.append(runner)
    cloudflare = CloudflareStandIn(token=secrets.token_urlsafe(24), zone_name=ZONE)
    runner, cf_port = await _serve_app(cloudflare.app(), 0)
    runners.append(runner)
    technitium = TechnitiumStandIn(token=secrets.token_hex(32), zone=INTERNAL_ZONE)
    runner, tech_port = await _serve_app(technitium.app(), 0)
    runners.append(runner)
    velocity = VelocityStandIn(token=secrets.token_urlsafe(24))
    runner, vel_port = await _serve_app(velocity.app(), 0)
    runners.append(runner)
    discord = DiscordStandIn()
    runner, discord_port = await _serve_app(discord.app(), 0)
    runners.append(runner)
    ide = IdeProxyStandIn(secret=secrets.token_urlsafe(32), proxy_token=secrets.token_urlsafe(24))
    runner, ide_port = await _serve_app(ide.app(), 0)
    runners.append(runner)

    endpoints = {
        "proxmox": {
            "url": pve.url,
            "token_id": f"{TOKEN_USER}!{TOKEN_NAME}",
            "token_secret": token_secret,
            "nodes": list(NODES),
            "verify_ssl": False,
            "ostemplate": OSTEMPLATE,
            "storage": "local-lvm",
            "backup_storage": "local",
            "sim": pve.url,
        },
        "agents": {
            "url": f"http://{HOST}:{agents_port}/agents/{{vmid}}",
            "token": agent_token,
            "sim": f"http://{HOST}:{agents_port}",
        },
        "cloudflare": {
            "url": f"http://{HOST}:{cf_port}/client/v4",
            "token": cloudflare.token,
            "zone_id": cloudflare.zone_id,
            "zone_name": ZONE,
            "sim": f"http://{HOST}:{cf_port}",
        },
        "technitium": {
            "url": f"http://{HOST}:{tech_port}",
            "token": technitium.token,
            "zone": INTERNAL_ZONE,
            "sim": f"http://{HOST}:{tech_port}",
        },
        "velocity": {
            "url": f"http://{HOST}:{vel_port}",
            "token": velocity.token,
            "public_ip": "203.0.113.10",
            "sim": f"http://{HOST}:{vel_port}",
        },
        "ide": {
            "url_template": f"http://{HOST}:{ide_port}/dev-{{vmid}}/",
            "token_secret": ide.secret,
            "proxy_token": ide.proxy_token,
            "sim": f"http://{HOST}:{ide_port}",
        },
        "discord": {
            "url": f"http://{HOST}:{discord_port}",
            "webhooks": discord.urls(f"http://{HOST}:{discord_port}"),
            "sim": f"http://{HOST}:{discord_port}",
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
    for runner in runners:
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
