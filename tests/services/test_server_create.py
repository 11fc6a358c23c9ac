"""server_create on real MariaDB: placement, allocation, idempotency, quota, exhaustion."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from lifecycle.choices import AllocationState, InstanceStatus, OperationKind, OperationState
from lifecycle.errors import (
    CapacityExhausted,
    IdempotencyMismatch,
    InvalidRequest,
    NameTaken,
    QuotaExceeded,
)
from lifecycle.models import Allocation, AuditEvent, ContainerInstance, Node, Operation
from lifecycle.services.accounts import quota_set
from lifecycle.services.servers import server_create
from tests.support.platform import SYSTEM, game_body, seed_platform

pytestmark = pytest.mark.django_db


def _counts():
    return {
        "instances": ContainerInstance.objects.count(),
        "operations": Operation.objects.count(),
        "claimed": Allocation.objects.filter(state=AllocationState.CLAIMED).count(),
        "node_memory": sum(Node.objects.values_list("allocated_memory_mb", flat=True)),
        "audit": AuditEvent.objects.filter(action="server:create").count(),
    }


def test_create_claims_vmid_ip_port_and_queues_provision(platform, alice):
    result = server_create(owner=alice.user, data=game_body("alpha"), idempotency_key="k-1")
    inst = result.instance
    assert result.created
    assert inst.status == InstanceStatus.PENDING
    assert inst.vmid == 5000
    assert inst.ip.startswith("10.")
    assert set(inst.ports) == {"game"}
    claimed = {a.role: a for a in Allocation.objects.filter(instance=inst).select_related("pool")}
    assert set(claimed) == {"vmid", "ip", "game"}
    assert claimed["vmid"].value == inst.vmid
    assert claimed["ip"].display == inst.ip
    assert claimed["ip"].pool.node_id == inst.node_id == claimed["game"].pool.node_id
    assert claimed["game"].value == inst.ports["game"]
    op = result.operation
    assert (op.kind, op.state, op.active_slot) == (
        OperationKind.PROVISION, OperationState.QUEUED, inst.id)
    assert inst.node.allocated_memory_mb == inst.memory_mb == 2048
    event = AuditEvent.objects.get(instance=inst, action="server:create")
    assert event.actor_label == "alice"


def test_placement_prefers_the_node_with_most_free_memory(db, alice):
    seed_platform(nodes=("pve1", "pve2"), memory_mb=10_000)
    Node.objects.filter(name="pve1").update(allocated_memory_mb=6_000)
    inst = server_create(owner=alice.user, data=game_body("beta")).instance
    assert inst.node.name == "pve2"


def test_replay_returns_the_same_server_and_other_body_is_refused(platform, alice):
    first = server_create(owner=alice.user, data=game_body("alpha"), idempotency_key="same")
    again = server_create(owner=alice.user, data=game_body("alpha"), idempotency_key="same")
    assert not again.created
    assert again.instance.id == first.instance.id
    assert again.operation.id == first.operation.id
    with pytest.raises(IdempotencyMismatch):
        server_create(owner=alice.user, data=game_body("alpha", plan="heavy"),
                      idempotency_key="same")
    assert ContainerInstance.objects.count() == 1


def test_same_key_is_per_account(platform, alice, bob):
    a = server_create(owner=alice.user, data=game_body("alpha"), idempotency_key="k")
    b = server_create(owner=bob.user, data=game_body("bravo"), idempotency_key="k")
    assert a.instance.id != b.instance.id


def test_name_taken_until_purged(platform, alice, bob):
    server_create(owner=alice.user, data=game_body("alpha"))
    before = _counts()
    with pytest.raises(NameTaken):
        server_create(owner=bob.user, data=game_body("alpha"))
    assert _counts() == before


def test_quota_counts_servers_and_memory(platform, alice):
    quota_set(user=alice.user, max_servers=2, max_memory_mb=5000, actor=SYSTEM)
    server_create(owner=alice.user, data=game_body("one"))
    with pytest.raises(QuotaExceeded, match="5000 MB"):
        server_create(owner=alice.user, data=game_body("two", plan="modded"))
    server_create(owner=alice.user, data=game_body("two"))
    with pytest.raises(QuotaExceeded, match="allows 2 servers"):
        server_create(owner=alice.user, data=game_body("three"))


@pytest.mark.parametrize("exhaust", ["vmid", "port", "ip", "memory", "no_nodes"])
def test_exhausted_pool_is_a_clear_error_and_leaves_nothing(db, alice, exhaust):
    seed_platform(vmids=(5000, 5001), nodes=("pve1",), memory_mb=100_000, ports=(30000, 30001))
    server_create(owner=alice.user, data=game_body("first"))
    node = Node.objects.get()
    if exhaust == "vmid":
        server_create(owner=alice.user, data=game_body("second"))
    elif exhaust == "port":
        Allocation.objects.filter(pool__kind="port", state="free").update(state="quarantined")
    elif exhaust == "ip":
        Allocation.objects.filter(pool__kind="ip", state="free").update(state="conflicted")
    elif exhaust == "memory":
        Node.objects.filter(pk=node.pk).update(allocated_memory_mb=99_000)
    else:
        Node.objects.update(enabled=False)
    before = _counts()
    with pytest.raises(CapacityExhausted) as err:
        server_create(owner=alice.user, data=game_body("third"))
    assert "try again later" in err.value.message or "operator" in err.value.message
    assert _counts() == before


def test_invalid_input_is_refused_before_anything_is_written(platform, alice):
    with pytest.raises(InvalidRequest) as err:
        server_create(owner=alice.user, data={"name": "No_Way", "kind": "game",
                                              "variant": "forge", "plan": "vanilla"})
    assert set(err.value.fields) >= {"name", "variant", "version"}
    assert ContainerInstance.objects.count() == 0


def _statements(ctx):
    # The test's own transaction turns our BEGIN/COMMIT into SAVEPOINTs: not ours to count.
    return [q["sql"] for q in ctx.captured_queries if "SAVEPOINT" not in q["sql"]]


def test_create_uses_a_bounded_number_of_queries(platform, alice):
    """15 statements whatever the number of servers, nodes or pool sizes (see bench/)."""
    for i in range(5):
        server_create(owner=alice.user, data=game_body(f"warm-{i}"))
    with CaptureQueriesContext(connection) as ctx:
        server_create(owner=alice.user, data=game_body("counted"), idempotency_key="q")
    assert len(_statements(ctx)) <= 15, _statements(ctx)
    with CaptureQueriesContext(connection) as ctx:
        server_create(owner=alice.user, data=game_body("counted"), idempotency_key="q")
    assert len(_statements(ctx)) <= 3, _statements(ctx)
