"""The two state machines: transition tables, conditional UPDATEs, the DB-enforced slot."""
from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import Q

from lifecycle.choices import InstanceStatus as S
from lifecycle.choices import OperationKind
from lifecycle.choices import OperationState as O
from lifecycle.errors import InvalidTransition, TransitionConflict
from lifecycle.models import AuditEvent, ContainerInstance, Operation
from lifecycle.services.operations import operation_create
from lifecycle.services.servers import server_create
from lifecycle.statemachines import instance as instance_sm
from lifecycle.statemachines import operation as operation_sm
from lifecycle.statemachines.instance import instance_transition
from lifecycle.statemachines.operation import operation_transition
from tests.support.platform import SYSTEM, game_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def server(platform, alice):
    return server_create(owner=alice.user, data=game_body("sm-test"))


def test_every_status_has_a_row_in_the_table_and_targets_are_statuses():
    assert set(instance_sm.TRANSITIONS) == set(S.values)
    for targets in instance_sm.TRANSITIONS.values():
        assert targets <= set(S.values)
    assert instance_sm.TRANSITIONS[S.PURGED] == frozenset()
    assert set(operation_sm.TRANSITIONS) == set(O.values)


def test_allowed_transition_updates_the_row_and_writes_audit(server):
    inst = server.instance
    frm = instance_transition(instance_id=inst.id, expected=S.PENDING, to=S.PROVISIONING,
                              actor=SYSTEM, action="provision:start")
    assert frm == S.PENDING
    inst.refresh_from_db()
    assert inst.status == S.PROVISIONING
    event = AuditEvent.objects.get(instance=inst, action="provision:start")
    assert (event.from_status, event.to_status, event.actor_label) == (
        S.PENDING, S.PROVISIONING, "tests")


def test_forbidden_transition_raises_and_changes_nothing(server):
    with pytest.raises(InvalidTransition):
        instance_transition(instance_id=server.instance.id, expected=S.PENDING, to=S.PURGED,
                            actor=SYSTEM)
    assert ContainerInstance.objects.get().status == S.PENDING


def test_wrong_expected_state_is_a_conflict(server):
    with pytest.raises(TransitionConflict, match="is pending"):
        instance_transition(instance_id=server.instance.id, expected=S.RUNNING, to=S.STOPPING,
                            actor=SYSTEM)
    assert not AuditEvent.objects.filter(action__startswith="status:").exists()


def test_several_expected_states_record_the_real_source(server):
    iid = server.instance.id
    instance_transition(instance_id=iid, expected=S.PENDING, to=S.PROVISIONING, actor=SYSTEM)
    instance_transition(instance_id=iid, expected=S.PROVISIONING, to=S.RUNNING, actor=SYSTEM)
    frm = instance_transition(instance_id=iid, expected=[S.RUNNING, S.STOPPED], to=S.DELETING,
                              actor=SYSTEM, action="delete")
    assert frm == S.RUNNING
    assert AuditEvent.objects.get(action="delete").from_status == S.RUNNING


def test_purge_frees_the_name(server, alice):
    iid = server.instance.id
    for frm, to in [(S.PENDING, S.DELETING), (S.DELETING, S.DELETED), (S.DELETED, S.PURGING),
                    (S.PURGING, S.PURGED)]:
        instance_transition(instance_id=iid, expected=frm, to=to, actor=SYSTEM)
    assert ContainerInstance.objects.get(pk=iid).live_slug is None
    again = server_create(owner=alice.user, data=game_body("sm-test"))
    assert again.instance.id != iid


def test_database_refuses_a_second_active_operation(server):
    with pytest.raises(IntegrityError), transaction.atomic():
        Operation.objects.create(instance=server.instance, kind=OperationKind.START,
                                 active_slot=server.instance.id)


def test_database_refuses_an_active_operation_without_slot(server):
    with pytest.raises(IntegrityError), transaction.atomic():
        Operation.objects.create(instance=server.instance, kind=OperationKind.START,
                                 state=O.QUEUED, active_slot=None)


def test_terminal_operation_frees_the_slot_for_the_next_one(server):
    op = server.operation
    operation_transition(operation_id=op.id, expected=O.QUEUED, to=O.RUNNING,
                         fields={"worker": "w1"})
    with pytest.raises(TransitionConflict):
        operation_transition(operation_id=op.id, expected=O.RUNNING, to=O.SUCCEEDED,
                             condition=Q(worker="someone-else"))
    operation_transition(operation_id=op.id, expected=O.RUNNING, to=O.SUCCEEDED)
    op.refresh_from_db()
    assert op.active_slot is None and op.finished_at is not None
    with transaction.atomic():
        nxt = operation_create(instance_id=server.instance.id, kind=OperationKind.STOP,
                               requested_by="tests")
    assert nxt.active_slot == server.instance.id
    with pytest.raises(InvalidTransition):
        operation_transition(operation_id=op.id, expected=O.SUCCEEDED, to=O.RUNNING)


@pytest.mark.django_db(transaction=True)
def test_racing_transitions_exactly_one_wins(platform, alice):
    """Eight threads (own connections) try pending -> provisioning at once: one succeeds."""
    iid = server_create(owner=alice.user, data=game_body("race-sm")).instance.id
    barrier = threading.Barrier(8)
    outcomes = []

    def attempt():
        try:
            barrier.wait(timeout=30)
            instance_transition(instance_id=iid, expected=S.PENDING, to=S.PROVISIONING,
                                actor=SYSTEM, action="race")
            outcomes.append("won")
        except TransitionConflict:
            outcomes.append("lost")
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert AuditEvent.objects.filter(action="race").count() == 1
