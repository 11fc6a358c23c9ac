"""Read `.devstack/endpoints.json` and turn it into the control plane's environment variables."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).resolve().parent.parent / ".devstack" / "endpoints.json"


def load(path: str | Path = DEFAULT_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def control_plane_env(endpoints: dict[str, Any]) -> dict[str, str]:
    """The settings (as env vars) that point the control plane at this devstack."""
    pve, agents = endpoints["proxmox"], endpoints["agents"]
    cf, tech, vel = endpoints["cloudflare"], endpoints["technitium"], endpoints["velocity"]
    return {
        "PROXMOX_URL": pve["url"],
        "PROXMOX_TOKEN_ID": pve["token_id"],
        "PROXMOX_TOKEN_SECRET": pve["token_secret"],
        "PROXMOX_VERIFY_SSL": "false",
        "PROXMOX_OSTEMPLATE": pve["ostemplate"],
        "PROXMOX_STORAGE": pve["storage"],
        "PROXMOX_BACKUP_STORAGE": pve.get("backup_storage", "local"),
        "AGENT_URL_TEMPLATE": agents["url"],
        # The shared token only agents in legacy mode take (AGENT_LEGACY_TOKEN_UNTIL is left
        # empty: legacy agents are refused unless a test or the operator allows them).
        "AGENT_LEGACY_TOKEN": agents["token"],
        "CLOUDFLARE_API_URL": cf["url"],
        "CLOUDFLARE_API_TOKEN": cf["token"],
        "CLOUDFLARE_ZONE_ID": cf["zone_id"],
        "EDGE_ZONE": cf["zone_name"],
        "TECHNITIUM_URL": tech["url"],
        "TECHNITIUM_TOKEN": tech["token"],
        "TECHNITIUM_ZONE": tech["zone"],
        "VELOCITY_BRIDGE_URL": vel["url"],
        "VELOCITY_BRIDGE_TOKEN": vel["token"],
        "VELOCITY_PUBLIC_IP": vel["public_ip"],
        # Everything of the devstack runs on this machine: the container firewall's sources.
        "FIREWALL_CONTROL_PLANE_SOURCES": "127.0.0.1",
        "FIREWALL_VELOCITY_SOURCES": "127.0.0.1",
        "FIREWALL_IDE_PROXY_SOURCES": "127.0.0.1",
        # The IDE proxy: where dev containers' IDEs are served, the key it verifies tokens with,
        # and what it presents to read the revoked ones.
        **({"IDE_URL_TEMPLATE": endpoints["ide"]["url_template"],
            "IDE_TOKEN_SECRETS": endpoints["ide"]["token_secret"],
            "IDE_PROXY_TOKEN": endpoints["ide"]["proxy_token"]} if "ide" in endpoints else {}),
        **{f"DISCORD_WEBHOOK_{name.upper()}": url
           for name, url in endpoints["discord"]["webhooks"].items()},
    }
