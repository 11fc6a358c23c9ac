"""What the agent installs before the first boot: the game (variant, version, mods, config
files with the Velocity forwarding secret, server.properties with the allocated port) or the
dev runtime and the IDE."""
from __future__ import annotations

from typing import Any

from django.conf import settings

from ...catalog import PLANS
from ...choices import Kind, Variant
from ...models import ContainerInstance


def provisioning_payload(inst: ContainerInstance) -> dict[str, Any]:
    """What the agent installs before the first boot."""
    if inst.kind == Kind.DEV:
        return {
            "kind": "dev",
            "serverId": str(inst.id),
            "runtime": inst.runtime,
            "runtimeVersion": inst.runtime_version,
            "codeServer": inst.enable_code_server,
            "port": inst.ports.get("ide"),
        }
    secret = settings.VELOCITY_FORWARDING_SECRET
    plan = PLANS[inst.plan]
    properties = {
        # The allocated port: unique on the node, the address Velocity forwards players to.
        "server-port": inst.ports.get("game", 25565),
        "online-mode": "false",  # Velocity authenticates players and forwards them
        "enforce-secure-profile": "false",
        "motd": f"ZeroLagHub - {inst.slug}",
        "max-players": 20 if plan.memory_mb <= 2048 else 40,
        "view-distance": 10,
    }
    mods: list[dict[str, str]] = []
    files: dict[str, str] = {}
    if inst.variant == Variant.FABRIC:
        mods = [{"name": "fabric-api"}, {"name": "FabricProxy-Lite"}]
        files["config/FabricProxy-Lite.toml"] = (
            'hackOnlineMode = true\nhackEarlySend = false\nhackMessageChain = true\n'
            f'disconnectMessage = "This server only accepts players through ZeroLagHub."\n'
            f'secret = "{secret}"\n'
        )
    elif inst.variant == Variant.PAPER:
        files["config/paper-global.yml"] = (
            "proxies:\n  velocity:\n    enabled: true\n    online-mode: true\n"
            f"    secret: '{secret}'\n"
        )
    return {
        "kind": "game",
        "serverId": str(inst.id),
        "variant": inst.variant,
        "version": inst.version,
        "memoryMb": inst.memory_mb,
        "mods": mods,
        "files": files,
        "serverProperties": properties,
    }
