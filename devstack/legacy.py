"""The world as the old API left it: containers without our tag, DNS records without our
marker, Velocity registrations, for adoption tests and the adoption benchmark.

`seed_legacy(endpoints, servers)` puts each `LegacyServer` into the devstack's Proxmox,
Cloudflare, Technitium and Velocity over their `/_sim/` seed routes (bulk, so thousands take
seconds). Nothing here is imported by the control plane.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests


@dataclass
class LegacyServer:
    vmid: int
    hostname: str
    ip: str
    node: str = "pve1"
    prefix: int = 22
    gateway: str = ""
    memory: int = 2048
    cores: int = 2
    disk_gb: int = 8
    status: str = "running"
    tags: str = "old-api"
    port: int | None = None
    #: Edge records made by the old API (game servers): which exist, and where they point.
    cf_a: str | None = "velocity"      # "velocity" = Velocity's public IP; None = no record
    cf_srv: bool = True
    tech_a: str | None = "container"   # "container" = the container's IP
    velocity: bool = True
    comment: str | None = None          # the comment the old API left on its records
    description: str = "made by the old API"

    def config(self) -> dict[str, Any]:
        gw = self.gateway or self.ip.rsplit(".", 1)[0] + ".1"
        # In the canonical form Proxmox stores it in (as the old API's writes left it).
        return {"net0": f"name=eth0,bridge=vmbr0,gw={gw},"
                        f"hwaddr=BC:24:11:{self.vmid // 10000 % 100:02d}:{self.vmid // 100 % 100:02d}"
                        f":{self.vmid % 100:02d},ip={self.ip}/{self.prefix},type=veth",
                "cores": self.cores, "rootfs": f"local-lvm:vm-{self.vmid}-disk-0,"
                                              f"size={self.disk_gb}G",
                "hostname": self.hostname, "description": self.description,
                "ostype": "debian", "arch": "amd64"}


def seed_legacy(endpoints: dict[str, Any], servers: list[LegacyServer], *,
                zone: str, internal_zone: str, velocity_ip: str, velocity_port: int,
                http: requests.Session | None = None) -> None:
    http = http or requests.Session()
    http.verify = False

    def post(service: str, path: str, body: Any) -> None:
        resp = http.post(endpoints[service]["sim"] + path, json=body, timeout=120, verify=False)
        resp.raise_for_status()

    post("proxmox", "/_sim/containers", [
        {"vmid": s.vmid, "node": s.node, "tags": s.tags, "status": s.status,
         "hostname": s.hostname, "memory": s.memory, "config": s.config()} for s in servers])
    cf, tech, vel = [], [], []
    for s in servers:
        fqdn = f"{s.hostname}.{zone}"
        if s.cf_a is not None:
            cf.append({"type": "A", "name": fqdn, "ttl": 60, "proxied": False,
                       "content": velocity_ip if s.cf_a == "velocity" else s.cf_a,
                       "comment": s.comment})
        if s.cf_srv:
            cf.append({"type": "SRV", "name": f"_minecraft._tcp.{fqdn}", "ttl": 60,
                       "comment": s.comment,
                       "data": {"priority": 0, "weight": 5, "port": velocity_port,
                                "target": fqdn}})
        if s.tech_a is not None:
            record = {"name": f"{s.hostname}.{internal_zone}", "type": "A", "ttl": 60,
                      "rData": {"ipAddress": s.ip if s.tech_a == "container" else s.tech_a}}
            if s.comment:
                record["comments"] = s.comment
            tech.append(record)
        if s.velocity and s.port:
            vel.append({"name": s.hostname, "address": f"{s.ip}:{s.port}", "hosts": [fqdn]})
    if cf:
        post("cloudflare", "/_sim/records", cf)
    if tech:
        post("technitium", "/_sim/records", {"zone": internal_zone, "records": tech})
    if vel:
        post("velocity", "/_sim/servers", vel)
