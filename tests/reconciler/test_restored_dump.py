"""A database restored from an older dump (issue 16, item 3; the migration notes' PBS restore):
nothing is destroyed or recreated by itself, the requests the dump left active are not run, and
the reconciler and the doctor name exactly what differs: the servers made after the dump
(containers of ours the database does not know: adoptable by their tag) and those deleted
after it (their containers are gone: missing). One command adopts the former back."""
from __future__ import annotations

import re
import subprocess
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models.functions import Now

from lifecycle.models import ContainerInstance, Operation
from lifecycle.services.actions import server_request
from lifecycle.services.audit import Actor
from lifecycle.worker.sweeper import operation_sweep
from reconciler.doctor import doctor_report
from reconciler.models import Finding
from tests.support.stack import wait_status
from tests.support.waiting import wait_until

from .helpers import cycles, running

pytestmark = pytest.mark.django_db(transaction=True)


def _db_args() -> list[str]:
    s = connection.settings_dict
    return [f"--host={s['HOST'] or '127.0.0.1'}", f"--port={s['PORT'] or 3306}",
            f"--user={s['USER']}", f"--password={s['PASSWORD']}"]


def _dump(path) -> None:
    connection.close()
    with open(path, "wb") as out:
        subprocess.run(["mariadb-dump", *_db_args(), "--single-transaction",
                        connection.settings_dict["NAME"]], stdout=out, check=True, timeout=120)


def _restore(path) -> None:
    connection.close()
    with open(path, "rb") as dump:
        subprocess.run(["mariadb", *_db_args(), connection.settings_dict["NAME"]], stdin=dump,
                       check=True, timeout=120)


def test_a_database_restored_from_an_older_dump_destroys_nothing_and_names_each_difference(
        stack, worker, owner, tmp_path):
    deleted_later = [running(owner, f"gone{i}") for i in (1, 2)]
    kept = running(owner, "kept")
    # A request the dump holds as queued, its message lost: it must not run after the restore.
    stale = Operation.objects.create(instance_id=kept.id, kind="stop", state="queued",
                                     active_slot=kept.id, requested_by="owner",
                                     enqueued_at=Now())
    dump = tmp_path / "zlh.sql"
    _dump(dump)

    # After the dump: the request was dealt with, three servers made, two deleted and purged.
    Operation.objects.filter(pk=stale.pk).update(state="cancelled", active_slot=None)
    made_later = [running(owner, f"newer{i}") for i in (1, 2, 3)]
    for inst in deleted_later:
        staff = Actor.system("tests")
        server_request(instance_id=inst.id, kind="delete", actor=staff)
        wait_status(inst.id, "deleted")
        server_request(instance_id=inst.id, kind="purge", actor=staff)
        wait_status(inst.id, "purged", timeout=90)
    world = {c["vmid"] for c in stack.containers()}
    assert {i.vmid for i in made_later} <= world
    assert not {i.vmid for i in deleted_later} & world

    _restore(dump)
    assert ContainerInstance.objects.filter(slug__startswith="newer").count() == 0
    assert Operation.objects.get(pk=stale.pk).state == "queued"  # as the dump has it
    out = StringIO()
    call_command("after_restore", stdout=out)
    assert "1 operations from the dump cancelled" in out.getvalue()
    op = Operation.objects.get(pk=stale.pk)
    assert op.state == "cancelled" and op.error["kind"] == "restored_snapshot"
    assert operation_sweep()["sent"] == 0  # nothing left to re-send

    stack.pve("DELETE", "/_sim/calls")
    cycles(3)
    findings = {(f.finding_type, f.subject) for f in Finding.objects.filter(open=True)}
    assert findings == (
        {("unknown_container", f"ct-{i.vmid}") for i in made_later}
        | {("container_missing", str(i.id)) for i in deleted_later}), findings
    report = doctor_report()
    assert not report["ok"] and len(report["problems"]) == 5, report
    assert {p["check"] for p in report["problems"]} == {
        "reconciler finding: unknown_container", "reconciler finding: container_missing"}
    # Nothing was created, started, stopped or destroyed; the kept server still runs.
    calls = stack.pve("GET", "/_sim/calls?last=100000")["calls"]
    touched = [(m, p) for m, p, _ in calls
               if (m == "POST" and (re.search(r"/lxc/?$", p) or "/status/" in p))
               or (m == "DELETE" and re.search(r"/lxc/\d+/?$", p))]
    assert touched == []
    assert {c["vmid"] for c in stack.containers()} == world
    assert {c["vmid"]: c["status"] for c in stack.containers()}[kept.vmid] == "running"
    assert ContainerInstance.objects.get(pk=kept.id).status == "running"

    # One command adopts the servers the dump does not know back, under their own ids.
    out = StringIO()
    call_command("adopt", "--apply", stdout=out)
    assert "3 adopted" in out.getvalue(), out.getvalue()
    assert set(ContainerInstance.objects.filter(slug__startswith="newer").values_list(
        "id", flat=True)) == {i.id for i in made_later}
    cycles(2)
    assert not Finding.objects.filter(open=True, finding_type="unknown_container").exists()
    # They were ours all along: not released (their leftovers would read as a purged server's).
    with pytest.raises(CommandError, match="adopted back by its own tag"):
        call_command("adopt", "--release", str(made_later[0].vmid), stdout=StringIO())
    assert ContainerInstance.objects.get(pk=made_later[0].id).status == "running"
    # Their agents hold credentials the dump never had: the operator is told, per server, to
    # reset them (nothing guesses or overwrites a credential).
    wait_until(lambda: not Operation.objects.filter(state__in=("queued", "running")).exists(),
               timeout=60, what="the credential operations")
    ends = set(Operation.objects.filter(instance__slug__startswith="newer").values_list(
        "kind", "state", "error__kind"))
    assert ends == {("rotate_credential", "failed", "credential_mismatch")}, ends
