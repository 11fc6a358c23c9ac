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


def bulk_servers(owner: Any, count: int, *, start: int = 0, prefix: str = "s",
                 status: Any = "running", vmid_base: int = 100000,
                 port_base: int = 30000) -> list[Any]:
    """`count` placed game servers inserted at once (benchmarks and fleet-size tests), numbered
    from `start`, alternating over the nodes (pve1, pve2 of `seed_platform`). `status` is a
    status or a function of the number."""
    import uuid

    from lifecycle.models import ContainerInstance

    nodes = list(Node.objects.order_by("name"))
    servers = []
    for i in range(start, start + count):
        state = status(i) if callable(status) else status
        servers.append(ContainerInstance(
            id=uuid.uuid4(), owner=owner, name=f"{prefix}{i}", slug=f"{prefix}{i}",
            live_slug=f"{prefix}{i}", kind="game", variant="vanilla", version="1.21.1",
            plan="vanilla", memory_mb=2048, cores=2, disk_gb=8, node=nodes[i % len(nodes)],
            vmid=vmid_base + i, ip=f"10.{i % 2 + 1}.{(i // 250) % 250}.{i % 250 + 2}",
            ports={"game": port_base + i}, status=state,
            desired_state="stopped" if state == "stopped" else "running"))
    ContainerInstance.objects.bulk_create(servers, batch_size=2000)
    return servers
