"""The devstack's call journal and bench/bare_replay.py, which bench/provision_throughput.py
trusts to say how much time the control plane adds: a provision journaled by every stand-in,
replayed by a bare client on the devstack reset, does the same work (every status as recorded,
the container, its records and its registration there again)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from lifecycle.services.servers import server_create
from tests.support.platform import game_body
from tests.support.stack import wait_status

SYSTEMS = ("proxmox", "agents", "cloudflare", "technitium", "velocity")


def bare_replay():
    path = Path(__file__).resolve().parents[2] / "bench" / "bare_replay.py"
    spec = importlib.util.spec_from_file_location("bare_replay", path)
    module = sys.modules["bare_replay"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_journaled_provision_replays_to_the_same_state(stack, worker, owner):
    for system in SYSTEMS:
        stack.sim(system, "POST", "/_sim/journal")
    inst = server_create(owner=owner.user, data=game_body("replayed")).instance
    wait_status(inst.id, "running", timeout=60)
    journals = {s: (stack.endpoints[s]["sim"], stack.sim(s, "GET", "/_sim/journal")["calls"])
                for s in SYSTEMS}
    for system in SYSTEMS:
        stack.sim(system, "DELETE", "/_sim/journal")
    assert all(journals[s][1] for s in SYSTEMS), {s: len(j) for s, (_, j) in journals.items()}
    # The journal holds what was sent, bodies included (Technitium's form, the agent's JSON).
    assert any(c["method"] == "POST" and c["body"] for c in journals["technitium"][1])
    assert stack.sim("proxmox", "GET", "/_sim/journal") == {"calls": []}  # off again
    made = {"containers": len(stack.containers()), "cf": len(stack.cf_records()),
            "velocity": len(stack.velocity_servers())}

    stack.reset()
    assert not stack.containers() and not stack.cf_records()
    result = bare_replay().replay(journals)
    assert result.calls == sum(len(j) for _, j in journals.values())
    assert result.mismatched == [] and result.seconds > 0
    assert {"containers": len(stack.containers()), "cf": len(stack.cf_records()),
            "velocity": len(stack.velocity_servers())} == made
    (container,) = stack.containers()
    assert container["vmid"] == inst.vmid and container["status"] == "running"
