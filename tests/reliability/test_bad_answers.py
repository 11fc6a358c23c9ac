"""A bad answer from outside never stops the loop (issue 13, item 2).

Each stand-in is made to answer garbage through its `/_sim/faults` hooks (a body of the wrong
shape, an HTML page, a huge body, a body dripped a byte at a time, a nonsensical
`retry-after`). Every client reads the answer within a size cap and a deadline and checks its
shape; the reconciler marks that one source `unknown` for the cycle and goes on; a cycle that
errors anyway is reported once and resolved when cycles complete again.
"""
from __future__ import annotations

import email.utils
import time

import pytest

from edge.clients.cloudflare import CloudflareClient, retry_after_seconds
from edge.errors import EdgeError
from lifecycle.clients.agent import AgentClient, AgentError
from lifecycle.models import ContainerInstance, Operation
from lifecycle.services.servers import server_create
from notifications.models import AlertState, Notification
from notifications.services import channel_send, notify_info
from reconciler import services as reconciler_services
from reconciler.models import ControllerRun, Finding
from reconciler.services import CYCLE_ALERT_KEY, run_cycle
from tests.reconciler.helpers import running
from tests.support.platform import game_body
from tests.support.stack import wait_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reconciler]

PLENTY = 50  # fault calls: more than one cycle makes


def cloudflare(stack, **kwargs) -> CloudflareClient:
    cf = stack.endpoints["cloudflare"]
    return CloudflareClient(base_url=cf["url"], token=cf["token"], zone_id=cf["zone_id"],
                            **kwargs)


# --- size caps and deadlines (core/http.py), shown on the Cloudflare client --------------------

def test_a_huge_answer_is_refused_at_the_cap_not_read_whole(stack):
    stack.sim("cloudflare", "POST", "/_sim/faults",
              json={"method": "GET", "path": "dns_records", "status": 200,
                    "size_bytes": 3 * 1024 * 1024, "count": 1})
    client = cloudflare(stack, max_bytes=1024 * 1024)
    with pytest.raises(EdgeError) as caught:
        client.list_records()
    assert caught.value.kind == "bad_answer" and caught.value.retryable
    assert "limit" in caught.value.message
    assert client.list_records() == []  # the next answer is read normally


def test_a_slow_drip_answer_is_cut_at_the_calls_deadline(stack):
    """One byte every 0.2 s never trips a per-read timeout of 1 s; the call's deadline does."""
    stack.sim("cloudflare", "POST", "/_sim/faults",
              json={"method": "GET", "path": "dns_records", "status": 200, "drip_s": 0.2,
                    "body": {"success": True, "result": [], "pad": "x" * 200}, "count": 1})
    client = cloudflare(stack, timeout=1)
    started = time.monotonic()
    with pytest.raises(EdgeError) as caught:
        client.list_records()
    took = time.monotonic() - started
    assert caught.value.kind == "bad_answer", caught.value
    assert took < 3, f"the call took {took:.1f}s against a 1s deadline"


# --- Cloudflare's retry-after -----------------------------------------------------------------

RATE_LIMITED = {"success": False, "errors": [{"code": 971, "message": "Please wait"}]}


def test_retry_after_zero_does_not_loop_without_bound(stack):
    stack.sim("cloudflare", "POST", "/_sim/faults",
              json={"method": "GET", "path": "dns_records", "status": 429, "count": 1000,
                    "body": RATE_LIMITED, "headers": {"retry-after": "0"}})
    client = cloudflare(stack, max_retry_wait=4)
    started = time.monotonic()
    with pytest.raises(EdgeError) as caught:
        client.list_records()
    assert caught.value.kind == "rate_limited" and caught.value.retryable
    assert client.calls <= 5, f"{client.calls} calls for one listing"
    assert time.monotonic() - started < 10


def test_retry_after_as_an_http_date_is_waited_out(stack):
    soon = email.utils.formatdate(time.time() + 2, usegmt=True)
    stack.sim("cloudflare", "POST", "/_sim/faults",
              json={"method": "GET", "path": "dns_records", "status": 429, "count": 1,
                    "body": RATE_LIMITED, "headers": {"retry-after": soon}})
    client = cloudflare(stack, max_retry_wait=30)
    assert client.list_records() == []
    assert client.calls == 2
    assert 1 <= client.waited <= 3


@pytest.mark.parametrize("value, expected", [
    ("7", 7.0), ("0", 1.0), ("-5", 1.0), ("", 1.0), (None, 1.0), ("soon", 1.0), ("nan", 1.0),
    ("Thu, 01 Jan 1970 00:00:00 GMT", 1.0),
])
def test_retry_after_values(value, expected):
    assert retry_after_seconds(value) == expected


# --- the agent: its answers are the tenant's to write -------------------------------------------

@pytest.mark.parametrize("body", [
    {"crash": 1, "state": "running"},
    {"crash": {"count": None}, "state": "running"},
    {"state": ["running"]},
    [1, 2, 3],
])
def test_an_agent_status_of_the_wrong_shape_is_a_bad_answer(stack, worker, owner, body):
    inst = running(owner, "shape")
    stack.agents("POST", "/_sim/faults", json={"method": "GET", "path": "/status$",
                                               "status": 200, "body": body, "count": 1})
    client = AgentClient.for_server(inst)
    with pytest.raises(AgentError) as caught:
        client.status()
    assert caught.value.kind == "bad_answer" and caught.value.retryable
    assert client.status()["state"] == "running"


# --- the reconciler: one source answering nonsense is unknown, the cycle goes on ----------------

GARBAGE = {
    "proxmox": ("pve", {"method": "GET", "path": "cluster/resources", "status": 200,
                        "body": [{"vmid": "abc", "type": "lxc"}]}),
    "proxmox-html": ("pve", {"method": "GET", "path": "cluster/resources", "status": 200,
                             "raw": "<html><body>502 Bad Gateway</body></html>"}),
    "proxmox-no-envelope": ("pve", {"method": "GET", "path": "cluster/resources",
                                    "status": 200, "raw": '{"nodata": []}',
                                    "content_type": "application/json"}),
    "proxmox-drip": ("pve", {"method": "GET", "path": "cluster/resources", "status": 200,
                             "drip_s": 0.5, "body": {"data": []}}),
    "technitium": ("technitium", {"path": "records/get", "status": 200,
                                  "body": {"status": "ok", "response": {"records": None}}}),
    "velocity": ("velocity", {"method": "GET", "path": "^/servers$", "status": 200,
                              "body": [{"name": "lobby"}]}),
    "cloudflare": ("cloudflare", {"method": "GET", "path": "dns_records", "status": 200,
                                  "raw": "<html>Cloudflare is having a moment</html>"}),
}


def _inject(stack, service: str, spec: dict) -> None:
    spec = {**spec, "count": PLENTY}
    if service == "pve":
        stack.fault(**spec)
    else:
        stack.sim(service, "POST", "/_sim/faults", json=spec)


def _clear(stack, service: str) -> None:
    if service == "pve":
        stack.pve("DELETE", "/_sim/faults")
    else:
        stack.sim(service, "DELETE", "/_sim/faults")


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_a_source_answering_garbage_is_unknown_and_the_cycle_completes(stack, worker, owner,
                                                                      case, settings):
    running(owner, "steady")
    settings.PROXMOX_TIMEOUT = 1  # the deadline a dripped answer must miss
    service, spec = GARBAGE[case]
    source = case.split("-")[0]
    _inject(stack, service, spec)
    try:
        summary = run_cycle()
    finally:
        _clear(stack, service)
    assert summary["outcome"] == "completed", summary
    assert summary["sources"][source] == "unknown", summary["sources"]
    others = {k: v for k, v in summary["sources"].items() if k != source}
    assert set(others.values()) == {"healthy"}, others
    # Nothing was concluded from the unknown source, and the operator was told about it.
    assert not Finding.objects.filter(open=True).exists()
    assert AlertState.objects.get(alert_key=f"source:{source}").firing
    # The next cycle, with the source sane again, completes with every source healthy.
    summary = run_cycle()
    assert summary["outcome"] == "completed"
    assert set(summary["sources"].values()) == {"healthy"}
    assert not AlertState.objects.get(alert_key=f"source:{source}").firing


@pytest.mark.parametrize("body", [{"crash": 1}, {"crash": {"count": None}, "state": "running"}])
def test_one_agent_answering_garbage_does_not_stop_the_cycle(stack, worker, owner, body):
    sane = running(owner, "sane")
    odd = running(owner, "odd")
    stack.agents("POST", "/_sim/faults",
                 json={"method": "GET", "path": f"/agents/{odd.vmid}/status$", "status": 200,
                       "body": body, "count": PLENTY})
    try:
        summary = run_cycle()
    finally:
        stack.agents("DELETE", "/_sim/faults")
    assert summary["outcome"] == "completed", summary
    assert summary["sources"]["agents"] == "healthy"
    findings = list(Finding.objects.filter(open=True).values_list("finding_type", "instance_id"))
    assert findings == [("agent_unreachable", odd.id)], findings
    assert sane.id not in [i for _, i in findings]


# --- a cycle that errors is reported once and resolved ----------------------------------------

def test_a_cycle_that_errors_alerts_once_and_resolves_when_cycles_complete(stack, worker,
                                                                          owner, monkeypatch):
    """The reconciler's own failure (here: a fault planted in its diff step) must not be
    silent: one warning however many cycles fail, and a resolution once one completes."""
    running(owner, "watched")

    def broken(world):
        raise RuntimeError("planted: the diff step failed")

    monkeypatch.setattr(reconciler_services, "diff", broken)
    first, second = run_cycle(), run_cycle()
    assert first["outcome"] == second["outcome"] == "error"
    assert "planted" in ControllerRun.objects.order_by("-pk").first().error
    warnings = Notification.objects.filter(alert_key=CYCLE_ALERT_KEY)
    assert [(n.channel, n.kind) for n in warnings] == [("warning", "firing")]

    monkeypatch.undo()
    assert run_cycle()["outcome"] == "completed"
    assert sorted(warnings.values_list("kind", flat=True)) == ["firing", "resolved"]
    assert not AlertState.objects.get(alert_key=CYCLE_ALERT_KEY).firing


# --- the lifecycle: a garbage answer is retried, not a platform error ---------------------------

def test_a_garbage_container_config_during_provisioning_is_retried(stack, worker, owner):
    stack.fault(method="GET", path=r"/lxc/\d+/config$", status=200, body="nonsense", count=1)
    result = server_create(owner=owner.user, data=game_body("config-garbage"))
    inst = wait_status(result.instance.id, "running")
    op = Operation.objects.get(pk=result.operation.id)
    assert op.state == "succeeded" and op.attempt == 2
    assert any("unexpected answer" in e["msg"] for e in op.log), op.log
    assert len(stack.containers()) == 1
    assert ContainerInstance.objects.get(pk=inst.id).status == "running"


# --- Discord ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [
    {"status": 429, "body": {"retry_after": "soon", "message": "slow down"}},
    {"status": 429, "body": {"retry_after": None}, "headers": {"Retry-After": "later"}},
    {"status": 200, "body": [1, 2, 3]},
    {"status": 500, "raw": "<html>oops</html>"},
    {"status": 200, "size_bytes": 1024 * 1024},
])
def test_discord_answering_garbage_never_breaks_the_sender(stack, spec):
    hook_path = stack.endpoints["discord"]["webhooks"]["info"].split("/api")[-1]
    stack.sim("discord", "POST", "/_sim/faults",
              json={"method": "POST", "path": hook_path.split("?")[0], "count": 1, **spec})
    notify_info("garbage-proof")
    for _ in range(20):
        channel_send("info")
        if Notification.objects.filter(state="sent").exists():
            break
        time.sleep(1)
    titles = [m["embeds"][0]["title"] for m in stack.discord_messages("info")]
    # Delivered once: the garbage answers never reached the stand-in's message store.
    assert titles == ["garbage-proof"]
    assert Notification.objects.get().state == "sent"
