"""lifecycle.operation_kinds.SPECS against the operation kinds and the server state machine:
every kind has one spec, every spec's flow loads, and every status move a spec implies is one
the transition table allows."""
from __future__ import annotations

import pytest

from lifecycle.choices import (
    LIVE_STATUSES,
    TRANSIENT_STATUSES,
    DesiredState,
    InstanceStatus,
    OperationKind,
)
from lifecycle.operation_kinds import SPECS, spec_for
from lifecycle.statemachines.instance import TRANSITIONS, can_transition

S = InstanceStatus
KINDS = [k.value for k in OperationKind]
#: Statuses only the create path produces: nobody can ask for an operation from them.
CREATE_ONLY = {S.PENDING}


def test_every_kind_has_exactly_one_spec():
    assert sorted(SPECS) == sorted(KINDS)
    assert len(SPECS) == len(OperationKind)
    for kind, spec in SPECS.items():
        assert spec.kind == kind
        assert spec_for(kind) is spec


def test_spec_for_an_unknown_kind_raises():
    with pytest.raises(KeyError):
        spec_for("teleport")


@pytest.mark.parametrize("kind", KINDS)
def test_the_flow_loads_with_run_and_on_failure(kind):
    flow = SPECS[kind].load_flow()
    assert callable(flow.run)
    assert hasattr(flow, "on_failure")
    assert flow.on_failure is None or callable(flow.on_failure)


@pytest.mark.parametrize("kind", KINDS)
def test_statuses_named_are_real(kind):
    spec = SPECS[kind]
    statuses = set(S.values)
    assert spec.requestable_from and spec.requestable_from <= statuses
    assert spec.begins_from and spec.begins_from <= statuses
    assert spec.working is None or spec.working in statuses
    assert spec.ends_in is None or spec.ends_in in statuses
    assert spec.desired_after is None or spec.desired_after in DesiredState.values


#: Kinds that never change the server's status (no working status, no end status).
IN_PLACE = [k for k in KINDS if SPECS[k].working is None]


def test_only_credential_rotation_backups_restores_from_backups_and_resizes_keep_the_status():
    assert IN_PLACE == [OperationKind.ROTATE_CREDENTIAL, OperationKind.BACKUP,
                        OperationKind.RESTORE_BACKUP, OperationKind.RESIZE]
    for kind in IN_PLACE:
        spec = SPECS[kind]
        assert spec.ends_in is None and spec.desired_after is None
        assert spec.begins_from == spec.requestable_from


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in IN_PLACE])
def test_the_working_status_is_transient(kind):
    assert SPECS[kind].working in TRANSIENT_STATUSES


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in IN_PLACE])
def test_every_begin_status_may_move_to_working(kind):
    spec = SPECS[kind]
    for status in spec.begins_from:
        assert status == spec.working or can_transition(status, spec.working), \
            f"{kind}: {status} -> {spec.working} is not in the transition table"


@pytest.mark.parametrize("kind", [k for k in KINDS if SPECS[k].ends_in is not None])
def test_working_may_move_to_the_end_status(kind):
    spec = SPECS[kind]
    assert can_transition(spec.working, spec.ends_in), \
        f"{kind}: {spec.working} -> {spec.ends_in} is not in the transition table"


def test_a_restore_may_end_in_either_target():
    spec = SPECS[OperationKind.RESTORE]
    assert spec.ends_in is None and spec.desired_after is None
    for target in (S.RUNNING, S.STOPPED):
        assert can_transition(spec.working, target)


@pytest.mark.parametrize("kind", KINDS)
def test_requestable_covers_every_begin_status_but_the_create_only_ones(kind):
    spec = SPECS[kind]
    missing = set(spec.begins_from) - CREATE_ONLY - set(spec.requestable_from)
    assert not missing, f"{kind}: a server in {sorted(missing)} can start it but never ask"


@pytest.mark.parametrize("kind", KINDS)
def test_extra_requestable_statuses_are_the_working_one(kind):
    """Asking again while the flow's own status is set carries on (e.g. a failed delete)."""
    spec = SPECS[kind]
    extra = set(spec.requestable_from) - set(spec.begins_from)
    assert extra <= {spec.working}, f"{kind}: requestable from {sorted(extra)} but cannot begin"


def test_a_deleted_server_can_only_be_restored_or_purged():
    assert sorted(k for k, s in SPECS.items() if S.DELETED in s.requestable_from) == \
        sorted([OperationKind.RESTORE, OperationKind.PURGE])


def test_delete_is_possible_from_every_live_status():
    assert LIVE_STATUSES <= SPECS[OperationKind.DELETE].begins_from


def test_only_purge_and_the_credential_rotation_are_staff_only_and_purge_confirmed():
    assert sorted(k for k, s in SPECS.items() if s.staff_only) == \
        sorted([OperationKind.PURGE, OperationKind.ROTATE_CREDENTIAL])
    assert [k for k, s in SPECS.items() if s.confirm] == [OperationKind.PURGE]


def test_api_and_admin_actions_are_unique():
    api = [s.api_action for s in SPECS.values() if s.api_action is not None]
    admin = [s.admin_action for s in SPECS.values() if s.admin_action]
    assert len(api) == len(set(api)) and len(admin) == len(set(admin))
    assert all(s.admin_label for s in SPECS.values() if s.admin_action)


def test_the_transition_table_covers_every_status():
    assert set(TRANSITIONS) == set(S.values)
    for frm, targets in TRANSITIONS.items():
        assert targets <= set(S.values), frm
        assert frm not in targets, f"{frm} -> {frm} would be a no-op transition"
    assert TRANSITIONS[S.PURGED] == frozenset()
