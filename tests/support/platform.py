"""Seed a small platform (VMID pool, two nodes with IP and port pools) and API users."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lifecycle.models import Node
from lifecycle.services.accounts import api_token_create, quota_set
from lifecycle.services.allocations import vmid_pool_ensure
from lifecycle.services.audit import Actor
from lifecycle.services.nodes import node_create

SYSTEM = Actor.system("tests")


def seed_platform(
    *,
    vmids: tuple[int, int] = (5000, 5999),
    nodes: tuple[str, ...] = ("pve1", "pve2"),
    memory_mb: int = 4_000_000,
    ports: tuple[int, int] = (30000, 30999),
    subnet_prefix: int = 22,
) -> list[Node]:
    vmid_pool_ensure(start=vmids[0], end=vmids[1])
    out = []
    for i, name in enumerate(nodes, start=1):
        base = f"10.{i}.0"
        out.append(node_create(
            name=name, memory_mb=memory_mb, cores=64, subnet=f"{base}.0/{subnet_prefix}",
            gateway=f"{base}.1", port_range=ports, actor=SYSTEM,
        ))
    return out


@dataclass
class ApiUser:
    user: Any
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.token}"}

    @property
    def http_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_user(username: str, *, staff: bool = False, max_servers: int = 1000,
              max_memory_mb: int = 100_000_000) -> ApiUser:
    token, raw = api_token_create(username=username, staff=staff, actor=SYSTEM)
    quota_set(user=token.user, max_servers=max_servers, max_memory_mb=max_memory_mb, actor=SYSTEM)
    return ApiUser(user=token.user, token=raw)


def game_body(name: str, **over: Any) -> dict[str, Any]:
    body = {"name": name, "kind": "game", "variant": "vanilla", "version": "1.21.1",
            "plan": "vanilla"}
    body.update(over)
    return body
