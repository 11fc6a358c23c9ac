"""The container firewall's desired state and how an observed firewall is judged (pure)."""
from __future__ import annotations

import pytest

from lifecycle.firewall import (
    desired_rules,
    judge,
    marker,
    net0_has_firewall,
    net0_with_firewall,
    normal_cidr,
    parse_marker,
)

SERVER = "6f1c2b9e-3a4d-4e5f-8a9b-0c1d2e3f4a5b"
OTHER = "00000000-0000-4000-8000-000000000001"
NET0 = "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=10.0.0.5/24,gw=10.0.0.1,firewall=1"
GOOD_OPTIONS = {"enable": 1, "policy_in": "DROP", "policy_out": "ACCEPT"}


@pytest.fixture(autouse=True)
def _agent_url(settings):
    settings.AGENT_URL_TEMPLATE = "http://{ip}:18888"


def as_read(rules):
    """Rules as PVE answers them: positions and one digest."""
    return [dict(r, pos=i, digest="d") for i, r in enumerate(rules)]


def good_rules(kind="game", ports=None):
    return as_read(desired_rules(SERVER, kind, ports or {"game": 25570}))


def test_a_game_server_opens_the_agent_and_game_ports_a_dev_container_the_ide_port():
    game = desired_rules(SERVER, "game", {"game": 25570})
    assert [(r["dport"], r["source"], r["comment"]) for r in game] == [
        ("18888", "+zlh-control", f"zlh:{SERVER}:agent"),
        ("25570", "+zlh-velocity", f"zlh:{SERVER}:game")]
    dev = desired_rules(SERVER, "dev", {"ide": 30001})
    assert [(r["dport"], r["source"]) for r in dev] == [("18888", "+zlh-control"),
                                                        ("30001", "+zlh-ide-proxy")]
    assert all(r["type"] == "in" and r["action"] == "ACCEPT" and r["proto"] == "tcp"
               for r in game + dev)


def test_as_desired_is_ok():
    verdict = judge(SERVER, "game", {"game": 25570}, config={"net0": NET0},
                    options=GOOD_OPTIONS, rules=good_rules())
    assert verdict.ok and verdict.as_dict() == {"state": "ok", "problems": [], "foreign": []}


def test_every_kind_of_drift_is_named():
    rules = good_rules()
    rules[1] = dict(rules[1], dport="25571")  # our game rule changed
    rules.append(dict(rules[0], pos=2))       # our agent rule twice
    verdict = judge(SERVER, "game", {"game": 25570}, config={"net0": NET0.replace(",firewall=1", "")},
                    options={"enable": 0, "policy_in": "ACCEPT"}, rules=rules)
    assert verdict.net0_wrong and verdict.options_wrong
    assert sorted(verdict.remove) == [1, 2]
    assert [r["comment"] for r in verdict.add] == [f"zlh:{SERVER}:game"]
    text = " | ".join(verdict.problems)
    for expected in ("net0 has no firewall=1", "enable=0", "policy_in=ACCEPT",
                     "policy_out=None", "rule 1 (game): changed", "rule 2 (agent): duplicate",
                     "rule game missing"):
        assert expected in text, text


def test_foreign_rules_are_reported_never_removed_and_other_servers_rules_are():
    rules = good_rules() + as_read([
        {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22", "source": "10.9.9.9",
         "enable": 1, "comment": "operator: ssh"},
        {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "25599",
         "source": "+zlh-velocity", "enable": 1, "comment": marker(OTHER, "game")},
    ])
    for i, rule in enumerate(rules):
        rule["pos"] = i
    verdict = judge(SERVER, "game", {"game": 25570}, config={"net0": NET0},
                    options=GOOD_OPTIONS, rules=rules)
    assert verdict.foreign == ["in ACCEPT tcp 22 10.9.9.9"]
    assert verdict.remove == [3]  # another server's, left from a VMID used before
    assert "rule 3 (game): another server's" in verdict.problems


def test_a_disabled_rule_of_ours_is_drift():
    rules = good_rules()
    rules[0] = dict(rules[0], enable=0)
    verdict = judge(SERVER, "game", {"game": 25570}, config={"net0": NET0},
                    options=GOOD_OPTIONS, rules=rules)
    assert not verdict.ok and verdict.remove == [0]


@pytest.mark.parametrize("comment", [None, "", "zlh:", "zlh:not-a-uuid:game",
                                     f"zlh:{SERVER}:GAME", f"x zlh:{SERVER}:game",
                                     f"zlh:{SERVER}:game:extra"])
def test_only_an_exact_marker_is_ours(comment):
    assert parse_marker(comment) is None


def test_net0_gets_the_flag_and_keeps_everything_else():
    bare = "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=10.0.0.5/24,gw=10.0.0.1"
    assert not net0_has_firewall(bare) and not net0_has_firewall(None)
    assert not net0_has_firewall(bare + ",firewall=0")
    fixed = net0_with_firewall(bare + ",firewall=0")
    assert fixed == bare + ",firewall=1" and net0_has_firewall(fixed)


@pytest.mark.parametrize("given, stored", [("10.0.0.7", "10.0.0.7"), ("10.0.0.7/32", "10.0.0.7"),
                                           ("10.0.0.7/24", "10.0.0.0/24"),
                                           (" 192.0.2.0/29 ", "192.0.2.0/29"),
                                           ("not-an-address", "not-an-address")])
def test_addresses_have_one_spelling(given, stored):
    assert normal_cidr(given) == stored
