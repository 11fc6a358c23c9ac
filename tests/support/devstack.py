"""The devstack (fakepve + agents) as a real process for tests, and helpers to drive its
`/_sim/` controls over HTTP."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import urllib3

from devstack.endpoints import control_plane_env

REPO = Path(__file__).resolve().parents[2]
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # self-signed devstack cert


class Devstack:
    def __init__(self, workdir: Path, *, time_scale: float = 0.0) -> None:
        self.endpoints_path = workdir / "endpoints.json"
        self.log_path = workdir / "devstack.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.launcher", "--time-scale", str(time_scale),
             "--endpoints", str(self.endpoints_path)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self.endpoints_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"devstack did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        self.endpoints = json.loads(self.endpoints_path.read_text())
        self.env = control_plane_env(self.endpoints)
        self.http = requests.Session()
        self.http.verify = False

    # --- Proxmox sim ------------------------------------------------------------------------
    def pve(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, self.endpoints["proxmox"]["sim"] + path, timeout=30,
                                 verify=False,
                                 **kwargs)
        resp.raise_for_status()
        return resp.json()

    def pve_api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Proxmox's own public API, as a person would use it to make drift."""
        pve = self.endpoints["proxmox"]
        headers = {"Authorization": f"PVEAPIToken={pve['token_id']}={pve['token_secret']}"}
        return self.http.request(method, pve["url"] + "/api2/json" + path, headers=headers,
                                 timeout=30, verify=False, **kwargs)

    def containers(self) -> list[dict[str, Any]]:
        return self.pve("GET", "/_sim/containers")

    def pve_calls(self) -> int:
        return self.pve("GET", "/_sim/calls?last=1")["total"]

    def fault(self, **spec: Any) -> None:
        self.pve("POST", "/_sim/faults", json=spec)

    # --- agents sim ---------------------------------------------------------------------------
    def agents(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, self.endpoints["agents"]["sim"] + path, timeout=30,
                                 **kwargs)
        resp.raise_for_status()
        return resp.json()

    def agent(self, vmid: int) -> dict[str, Any]:
        return self.agents("GET", f"/_sim/agents/{vmid}")

    # --- edge sims ------------------------------------------------------------------------------
    def sim(self, service: str, method: str, path: str, **kwargs: Any) -> Any:
        """A control call to any stand-in, "proxmox" included (its own TLS certificate)."""
        resp = self.http.request(method, self.endpoints[service]["sim"] + path, timeout=30,
                                 verify=False, **kwargs)
        resp.raise_for_status()
        return resp.json()

    def cf_records(self) -> list[dict[str, Any]]:
        return self.sim("cloudflare", "GET", "/_sim/records")

    def cf_api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Cloudflare's own API, as a person would use it."""
        cf = self.endpoints["cloudflare"]
        return self.http.request(method, f"{cf['url']}/zones/{cf['zone_id']}{path}",
                                 headers={"Authorization": f"Bearer {cf['token']}"}, timeout=30,
                                 **kwargs)

    def tech_records(self) -> list[dict[str, Any]]:
        zones = self.sim("technitium", "GET", "/_sim/records")
        return [r for records in zones.values() for r in records]

    def velocity_servers(self) -> list[dict[str, Any]]:
        vel = self.endpoints["velocity"]
        resp = self.http.get(vel["url"] + "/servers",
                             headers={"Authorization": f"Bearer {vel['token']}"}, timeout=30)
        resp.raise_for_status()
        return resp.json()["servers"]

    def discord_posts(self, channel: str | None = None) -> list[dict[str, Any]]:
        """The messages the Discord stand-in saved, as posted (up to ten embeds each)."""
        return self.sim("discord", "GET", "/_sim/messages" + (f"?channel={channel}" if channel else ""))

    def discord_messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """One entry per notification delivered: each embed of each saved message, with the
        message's id and other keys (`batch`: how many embeds its message carried)."""
        return [{**post, "embeds": [embed], "batch": len(post["embeds"])}
                for post in self.discord_posts(channel) for embed in post.get("embeds") or [{}]]

    def reset(self, *, time_scale: float = 0.0) -> None:
        self.pve("POST", "/_sim/reset")
        self.agents("POST", "/_sim/reset")
        for service in ("cloudflare", "technitium", "velocity", "discord", "ide"):
            self.sim(service, "POST", "/_sim/reset")
        self.pve("POST", "/_sim/time-scale", json={"scale": time_scale})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def apply_settings(settings: Any, env: dict[str, str]) -> None:
    """Point this process's Django settings at the devstack (as the env does for workers)."""
    for key, value in env.items():
        if key.endswith("_ID") or key.endswith("_TOKEN") or key.endswith("_SECRET"):
            setattr(settings, key, value)  # identifiers and secrets stay strings
            continue
        current = getattr(settings, key, None)
        if isinstance(current, (list, tuple)):  # as env.list reads it
            setattr(settings, key, [v.strip() for v in value.split(",") if v.strip()])
            continue
        if isinstance(current, bool):  # as env.bool reads it
            setattr(settings, key, value.strip().lower() in ("1", "true", "yes", "on"))
            continue
        try:
            typed: Any = float(value) if "." in value and value.replace(".", "", 1).isdigit() \
                else int(value)
        except ValueError:
            typed = value
        setattr(settings, key, typed)
    settings.DISCORD_WEBHOOKS = {
        name: env.get(f"DISCORD_WEBHOOK_{name.upper()}", "")
        for name in ("critical", "warning", "info", "lifecycle")
    }
