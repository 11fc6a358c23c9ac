"""edge.services.evaluate: the verdict on each part of one server's edge (ok, missing, wrong,
foreign, unknown), and observe_edge_bulk's orphan detection with stand-in clients (no HTTP)."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.conf import settings

from edge.errors import EdgeError
from edge.services import PARTS, EdgeTarget, evaluate, observe_edge_bulk

SID = str(uuid.uuid4())
T = EdgeTarget(server_id=SID, slug="alpha", backend_ip="10.1.0.5", backend_port=30001)
MINE = f"zlh:{SID}"


def cf_a(**over: Any) -> dict[str, Any]:
    r = {"id": "a1", "type": "A", "name": T.fqdn, "content": settings.VELOCITY_PUBLIC_IP,
         "proxied": False, "ttl": 60, "comment": MINE}
    r.update(over)
    return r


def cf_srv(**over: Any) -> dict[str, Any]:
    data = {"priority": 0, "weight": 5, "port": settings.VELOCITY_PUBLIC_PORT, "target": T.fqdn}
    data.update(over.pop("data", {}))
    r = {"id": "s1", "type": "SRV", "name": T.srv_name, "comment": MINE, "data": data}
    r.update(over)
    return r


def tech_a(ip: str = "10.1.0.5", comments: str = MINE, rtype: str = "A") -> dict[str, Any]:
    return {"name": T.internal_fqdn, "type": rtype, "rData": {"ipAddress": ip},
            "comments": comments}


def reg(address: str = "10.1.0.5:30001", hosts: list[str] | None = None) -> dict[str, Any]:
    return {"name": "alpha", "address": address, "hosts": [T.fqdn] if hosts is None else hosts}


def listings(a=(), srv=(), tech=(), vel: dict | None = None):
    cf = {}
    if a:
        cf[("A", T.fqdn)] = list(a)
    if srv:
        cf[("SRV", T.srv_name)] = list(srv)
    return {"cf": cf, "tech": {T.internal_fqdn: list(tech)} if tech else {},
            "velocity": {} if vel is None else vel}


def judge(**kw) -> dict[str, str]:
    return evaluate(T, **listings(**kw)).parts


def test_target_names():
    assert T.fqdn == f"alpha.{settings.EDGE_ZONE}"
    assert T.srv_name == f"_minecraft._tcp.alpha.{settings.EDGE_ZONE}"
    assert T.internal_fqdn == f"alpha.{settings.TECHNITIUM_ZONE}"
    assert T.owner_comment == MINE and T.backend == "10.1.0.5:30001"


def test_everything_right_is_ok():
    obs = evaluate(T, **listings(a=[cf_a()], srv=[cf_srv()], tech=[tech_a()],
                                 vel={"alpha": reg()}))
    assert obs.parts == {p: "ok" for p in PARTS}
    assert obs.ok and obs.drift == [] and obs.problems == []
    assert obs.server_id == SID


def test_nothing_there_is_missing():
    obs = evaluate(T, cf={}, tech={}, velocity={})
    assert obs.parts == {p: "missing" for p in PARTS}
    assert not obs.ok and obs.drift == list(PARTS)


@pytest.mark.parametrize("part,kw", [
    ("cloudflare_a", {"a": [cf_a(content="198.51.100.7")]}),
    ("cloudflare_a", {"a": [cf_a(proxied=True)]}),
    ("cloudflare_srv", {"srv": [cf_srv(data={"port": 25566})]}),
    ("cloudflare_srv", {"srv": [cf_srv(data={"target": "other.example.com"})]}),
    ("cloudflare_srv", {"srv": [cf_srv(data={"priority": 10})]}),
    ("technitium_a", {"tech": [tech_a(ip="10.1.0.99")]}),
    ("velocity", {"vel": {"alpha": reg(address="10.1.0.5:30002")}}),
    ("velocity", {"vel": {"alpha": reg(hosts=["other.example.com"])}}),
])
def test_our_record_pointing_elsewhere_is_wrong(part, kw):
    assert judge(**kw)[part] == "wrong"


def test_an_srv_target_with_a_trailing_dot_is_still_right():
    assert judge(srv=[cf_srv(data={"target": T.fqdn + "."})])["cloudflare_srv"] == "ok"


@pytest.mark.parametrize("part,kw", [
    ("cloudflare_a", {"a": [cf_a(comment="")]}),
    ("cloudflare_a", {"a": [cf_a(comment=f"zlh:{uuid.uuid4()}")]}),
    ("cloudflare_srv", {"srv": [cf_srv(comment=None)]}),
    ("technitium_a", {"tech": [tech_a(comments="by hand")]}),
])
def test_a_record_without_our_marker_is_foreign_and_reported(part, kw):
    obs = evaluate(T, **listings(**kw))
    assert obs.parts[part] == "foreign"
    assert any("foreign" in p for p in obs.problems), obs.problems


def test_foreign_even_when_it_points_where_ours_would():
    assert judge(a=[cf_a(comment="manual")])["cloudflare_a"] == "foreign"


def test_ours_next_to_a_foreign_one_is_judged_on_ours():
    assert judge(a=[cf_a(comment="manual"), cf_a(id="a2")])["cloudflare_a"] == "ok"
    obs = evaluate(T, **listings(a=[cf_a(comment="manual"), cf_a(id="a2", content="1.2.3.4")]))
    assert obs.parts["cloudflare_a"] == "wrong"
    assert len(obs.problems) == 1 and "manual" in obs.problems[0]


def test_a_duplicate_of_ours_that_is_wrong_does_not_spoil_a_right_one():
    assert judge(a=[cf_a(content="1.2.3.4"), cf_a(id="a2")])["cloudflare_a"] == "ok"


def test_technitium_only_looks_at_a_records():
    assert judge(tech=[tech_a(rtype="TXT")])["technitium_a"] == "missing"


@pytest.mark.parametrize("unknown,parts", [
    ("cf", ("cloudflare_a", "cloudflare_srv")),
    ("tech", ("technitium_a",)),
    ("velocity", ("velocity",)),
])
def test_a_source_that_could_not_be_listed_is_unknown(unknown, parts):
    kw = listings(a=[cf_a()], srv=[cf_srv()], tech=[tech_a()], vel={"alpha": reg()})
    kw[unknown] = None
    obs = evaluate(T, **kw)
    for p in PARTS:
        assert obs.parts[p] == ("unknown" if p in parts else "ok"), p
    assert not obs.ok and sorted(obs.drift) == sorted(parts)


# --- observe_edge_bulk with stand-in clients -----------------------------------------------------
class _Listing:
    def __init__(self, method: str, rows: list[dict[str, Any]] | None) -> None:
        self.calls = 0
        self._rows = rows
        setattr(self, method, self._list)

    def _list(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls += 1
        if self._rows is None:
            raise EdgeError("listing failed", kind="unavailable", retryable=True)
        return list(self._rows)


class FakeClients:
    """Duck-types EdgeClients: one listing per source; None makes that listing fail."""

    def __init__(self, cf=(), tech=(), vel=()) -> None:
        self.cloudflare = _Listing("list_records", None if cf is None else list(cf))
        self.technitium = _Listing("records", None if tech is None else list(tech))
        self.velocity = _Listing("servers", None if vel is None else list(vel))

    def calls(self) -> dict[str, int]:
        return {"cloudflare": self.cloudflare.calls, "technitium": self.technitium.calls,
                "velocity": self.velocity.calls}


def test_bulk_finds_orphans_of_every_source_and_judges_targets():
    gone = str(uuid.uuid4())
    zone, internal = settings.EDGE_ZONE, settings.TECHNITIUM_ZONE
    clients = FakeClients(
        cf=[cf_a(), cf_srv(),
            {"id": "g1", "type": "A", "name": f"ghost.{zone}", "content": "x",
             "comment": f"zlh:{gone}"},
            {"id": "m1", "type": "A", "name": f"manual.{zone}", "content": "x",
             "comment": "hand-made"}],
        tech=[tech_a(),
              {"name": f"ghost.{internal}", "type": "A", "rData": {"ipAddress": "10.1.0.9"},
               "comments": f"zlh:{gone}"}],
        vel=[reg(), {"name": "Ghost", "address": "10.1.0.9:30000", "hosts": [f"ghost.{zone}"]},
             # The operator's lobby: not registered by us (no forced host of ours), never an
             # orphan, so a level-2 repair can never delete it.
             {"name": "lobby", "address": "10.9.9.9:25565", "hosts": ["play.example.net"]},
             {"name": "hub", "address": "10.9.9.8:25565", "hosts": []}],
    )
    result = observe_edge_bulk([T], clients=clients)
    assert result.sources == {"cloudflare": "healthy", "technitium": "healthy",
                              "velocity": "healthy"}
    assert result.by_server[SID].ok
    assert sorted((o["source"], o["name"], o.get("owner")) for o in result.orphans) == [
        ("cloudflare", f"ghost.{zone}", gone),
        ("technitium", f"ghost.{internal}", gone),
        ("velocity", "ghost", None),
    ]
    assert result.calls == {"cloudflare": 1, "technitium": 1, "velocity": 1}


def test_bulk_marks_a_failed_listing_unknown_and_takes_nothing_from_it():
    clients = FakeClients(cf=None, tech=[tech_a()],
                          vel=[{"name": "ghost", "address": "x",
                                "hosts": [f"ghost.{settings.EDGE_ZONE}"]}])
    result = observe_edge_bulk([T], clients=clients)
    assert result.sources["cloudflare"] == "unknown"
    assert result.sources["technitium"] == result.sources["velocity"] == "healthy"
    parts = result.by_server[SID].parts
    assert parts["cloudflare_a"] == parts["cloudflare_srv"] == "unknown"
    assert parts["technitium_a"] == "ok" and parts["velocity"] == "missing"
    assert [o["source"] for o in result.orphans] == ["velocity"]
