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
    return {
        "PROXMOX_URL": pve["url"],
        "PROXMOX_TOKEN_ID": pve["token_id"],
        "PROXMOX_TOKEN_SECRET": pve["token_secret"],
        "PROXMOX_VERIFY_SSL": "false",
        "PROXMOX_OSTEMPLATE": pve["ostemplate"],
        "PROXMOX_STORAGE": pve["storage"],
        "AGENT_URL_TEMPLATE": agents["url"],
        "AGENT_TOKEN": agents["token"],
    }
