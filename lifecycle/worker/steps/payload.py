"""What the agent installs before the first boot: the game (variant, version, mods, config
files with the Velocity forwarding secret, server.properties with the allocated port) or the
dev runtime and the IDE."""
from __future__ import annotations

from typing import Any

from django.conf import settings

from ...catalog import PLANS
from ...choices import Kind, Variant
from ...models import ContainerInstance

# Characters a value may not carry raw inside a quoted string of the file's format: every C0
# control, DEL, the C1 controls, YAML's own line breaks (NEL, LS, PS), the BOM and the two
# non-characters YAML does not accept as printable.
_UNSAFE = frozenset([*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, 0xFEFF, 0xFFFE,
                     0xFFFF])
_SHORT = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n",
          "\f": "\\f", "\r": "\\r"}


def _quoted(value: str, *, yaml: bool) -> str:
    out = []
    for ch in value:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:  # a byte that was not UTF-8 in the environment
            raise ValueError("the value is not valid Unicode text")
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif code in _UNSAFE:
            out.append(f"\\x{code:02X}" if yaml and code <= 0xFF else f"\\u{code:04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_string(value: str) -> str:
    """`value` as a TOML basic string ("…"): backslash, quote and every control character
    escaped, so whatever the value holds it can neither end the string nor start a new key."""
    return _quoted(value, yaml=False)


def yaml_string(value: str) -> str:
    """`value` as a YAML double-quoted scalar ("…"), escaped the same way (YAML's own escapes:
    `\\xXX` for the single-byte controls, `\\uXXXX` beyond)."""
    return _quoted(value, yaml=True)


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
            f"secret = {toml_string(secret)}\n"
        )
    elif inst.variant == Variant.PAPER:
        files["config/paper-global.yml"] = (
            "proxies:\n  velocity:\n    enabled: true\n    online-mode: true\n"
            f"    secret: {yaml_string(secret)}\n"
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
