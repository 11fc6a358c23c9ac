"""lifecycle.selectors against the database, seeded with factories: who sees which servers, and
the per-node capacity counts."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from lifecycle import selectors
from lifecycle.choices import (
    AllocationState,
    InstanceStatus,
    OperationKind,
    OperationState,
    PoolKind,
)
from tests.factories import (
    AllocationFactory,
    ContainerInstanceFactory,
    NodeFactory,
    OperationFactory,
    UserFactory,
    pools_for,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def people():
    return {"alice": UserFactory(username="alice"), "bob": UserFactory(username="bob"),
            "staff": UserFactory(username="operator", staff=True)}


def test_users_see_their_own_servers_and_staff_see_all(people):
    node = NodeFactory()
    mine = ContainerInstanceFactory.create_batch(3, owner=people["alice"], node=node)
    theirs = ContainerInstanceFactory.create_batch(2, owner=people["bob"], node=node)

    alice_sees = list(selectors.server_list_for(user=people["alice"]))
    assert {s.id for s in alice_sees} == {s.id for s in mine}
    assert {s.id for s in selectors.server_list_for(user=people["bob"])} == \
        {s.id for s in theirs}
    staff_sees = list(selectors.server_list_for(user=people["staff"]))
    assert {s.id for s in staff_sees} == {s.id for s in mine + theirs}
    # Newest first.
    assert [s.created_at for s in staff_sees] == sorted((s.created_at for s in staff_sees),
                                                        reverse=True)


def test_a_user_cannot_get_another_users_server(people):
    server = ContainerInstanceFactory(owner=people["bob"])
    assert selectors.server_get_for(user=people["alice"], server_id=server.id) is None
    assert selectors.server_get_for(user=people["bob"], server_id=server.id).id == server.id
    assert selectors.server_get_for(user=people["staff"], server_id=server.id).id == server.id


def test_the_list_carries_the_last_operation_in_one_query(people):
    node = NodeFactory()
    servers = ContainerInstanceFactory.create_batch(4, owner=people["alice"], node=node)
    for s in servers:
        OperationFactory(instance=s, kind=OperationKind.PROVISION)
        OperationFactory(instance=s, kind=OperationKind.STOP, state=OperationState.QUEUED)
    idle = ContainerInstanceFactory(owner=people["alice"], node=node)

    with CaptureQueriesContext(connection) as ctx:
        rows = {s.id: s for s in selectors.server_list_for(user=people["alice"])}
        nodes = {s.node.name for s in rows.values()}
    assert len(ctx.captured_queries) == 1, [q["sql"] for q in ctx.captured_queries]
    assert nodes == {node.name}
    for s in servers:
        assert (rows[s.id].last_op_kind, rows[s.id].last_op_state) == ("stop", "queued")
    assert rows[idle.id].last_op_id is None


def test_operation_get_for_respects_ownership(people):
    op = OperationFactory(instance=ContainerInstanceFactory(owner=people["bob"]))
    assert selectors.operation_get_for(user=people["alice"], operation_id=op.id) is None
    assert selectors.operation_get_for(user=people["bob"], operation_id=op.id) == op
    assert selectors.operation_get_for(user=people["staff"], operation_id=op.id) == op


def test_node_capacity_counts(people):
    busy = NodeFactory(name="pve-busy", memory_mb=10_000, allocated_memory_mb=6144)
    empty = NodeFactory(name="pve-empty", enabled=False)
    pools = pools_for(busy)
    for i in range(5):
        AllocationFactory(pool=pools["ip"], value=1000 + i)
    AllocationFactory(pool=pools["ip"], value=2000, claimed=True)
    AllocationFactory(pool=pools["ip"], value=2001, quarantined=True)
    for i in range(3):
        AllocationFactory(pool=pools["port"], value=30000 + i)
    AllocationFactory(pool=pools["port"], value=30500, state=AllocationState.CONFLICTED)
    for i in range(7):  # VMIDs are cluster-wide: counted for no node
        AllocationFactory(pool=pools["vmid"], value=5000 + i)
    assert pools["vmid"].kind == PoolKind.VMID and pools["vmid"].node is None

    for status in (InstanceStatus.RUNNING, InstanceStatus.STOPPED, InstanceStatus.DELETED,
                   InstanceStatus.FAILED):
        ContainerInstanceFactory(node=busy, status=status, owner=people["alice"])
    ContainerInstanceFactory(node=busy, status=InstanceStatus.PURGED, owner=people["alice"])
    ContainerInstanceFactory(owner=people["alice"], unplaced=True)

    with CaptureQueriesContext(connection) as ctx:
        rows = {r["name"]: r for r in selectors.node_capacity_list()}
    assert len(ctx.captured_queries) == 3
    assert rows["pve-busy"] == {"name": "pve-busy", "enabled": True, "memory_mb": 10_000,
                                "allocated_memory_mb": 6144, "free_ips": 5, "free_ports": 3,
                                "servers": 4}
    assert rows["pve-empty"] == {"name": "pve-empty", "enabled": False,
                                 "memory_mb": empty.memory_mb, "allocated_memory_mb": 0,
                                 "free_ips": 0, "free_ports": 0, "servers": 0}
