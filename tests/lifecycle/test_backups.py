"""World backups on the real stack (issue 15, the on-demand part): the API, the vzdump in the
devstack's Proxmox, the agent flushing the world first, exactly one archive per backup even
when workers die or messages are duplicated, quotas, and removal of archives."""
from __future__ import annotations

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from lifecycle.choices import BackupState
from lifecycle.models import AccountQuota, Backup, ContainerInstance, Operation
from lifecycle.services.audit import Actor
from lifecycle.services.backups import backup_remove, backup_request, backup_sweep
from lifecycle.services.operations import operation_enqueue
from lifecycle.services.servers import server_create
from tests.reconciler.helpers import running
from tests.support.platform import game_body, make_user
from tests.support.stack import wait_operation
from tests.support.waiting import wait_until
from tests.support.workers import start_worker

pytestmark = pytest.mark.django_db(transaction=True)


def api(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {user.token}")
    return client


@pytest.fixture
def staff_api(stack):
    return api(make_user("operator", staff=True))


def archives(stack, vmid=None):
    resp = stack.pve_api("GET", "/nodes/pve1/storage/local/content",
                         params={"content": "backup", **({"vmid": vmid} if vmid else {})})
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def backed_up(owner, server, **body):
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups", body, format="json")
    assert resp.status_code == 202, resp.content
    backup = resp.json()
    try:
        wait_operation(backup["operation"], timeout=60)
    except AssertionError:
        op = Operation.objects.get(pk=backup["operation"])
        raise AssertionError(f"backup operation {op.state}: {op.error} / {op.log}") from None
    return Backup.objects.get(pk=backup["id"])


def test_a_running_server_is_backed_up_and_keeps_running(stack, worker, owner):
    server = running(owner, "saved")
    before = stack.agent(server.vmid)
    backup = backed_up(owner, server, notes="before the update")

    assert backup.state == BackupState.READY and backup.flushed is True
    assert backup.volid.startswith(f"local:backup/vzdump-lxc-{server.vmid}-")
    assert backup.size_bytes and backup.size_bytes >= 64 * 1024**2
    [archive] = archives(stack, server.vmid)
    assert archive["volid"] == backup.volid and backup.marker in archive["notes"]
    # The world was flushed and saving paused before the snapshot, and saving is on again.
    after = stack.agent(server.vmid)
    assert after["flushes"] == before["flushes"] + 1 and after["savesOff"] is False
    # The archive holds the world as it was.
    disk = stack.pve("GET", "/_sim/backups")[backup.volid]
    assert disk["world"]["seed"] == before["world"]["seed"]
    # It kept running throughout: no stop, no reboot.
    assert after["state"] == "running" and after["boots"] == before["boots"]
    assert after["uncleanStops"] == 0
    server.refresh_from_db()
    assert server.status == "running"
    op = Operation.objects.get(pk=backup.operation_id)
    msgs = " | ".join(line["msg"] for line in op.log)
    assert "save-all flush" in msgs and "save-on" in msgs
    assert msgs.index("save-all flush") < msgs.index("vzdump") < msgs.index("save-on")

    listed = api(owner).get(f"/api/v1/servers/{server.id}/backups").json()["results"]
    assert [(b["id"], b["kind"], b["state"], b["notes"]) for b in listed] == [
        (str(backup.id), "manual", "ready", "before the update")]
    assert listed[0]["size_bytes"] == backup.size_bytes


def test_a_stopped_server_is_backed_up_without_the_agent(stack, worker, owner):
    server = running(owner, "asleep")
    resp = api(owner).post(f"/api/v1/servers/{server.id}/stop")
    wait_operation(resp.json()["id"])
    backup = backed_up(owner, server)
    assert backup.state == BackupState.READY and backup.flushed is None
    server.refresh_from_db()
    assert server.status == "stopped"


def test_an_agent_that_does_not_answer_does_not_prevent_the_backup(stack, worker, owner):
    server = running(owner, "mute")
    stack.agents("POST", f"/_sim/agents/{server.vmid}/hang")
    backup = backed_up(owner, server)
    assert backup.state == BackupState.READY and backup.flushed is False
    op = Operation.objects.get(pk=backup.operation_id)
    assert any("did not flush the world" in line["msg"] for line in op.log)


def test_duplicate_deliveries_and_a_killed_worker_make_one_archive(stack, worker_env, owner,
                                                                   tmp_path):
    """The vzdump takes a while (time scale): its message is delivered four more times while it
    runs, and the worker running it is killed halfway; another worker takes the operation over.
    One archive, one backup, whatever happens."""
    stack.reset(time_scale=0.5)  # vzdump: 3 PVE seconds -> 1.5 s
    victim = start_worker(worker_env(), tmp_path, name="victim", concurrency=1)
    try:
        server = running(owner, "dupes")
        resp = api(owner).post(f"/api/v1/servers/{server.id}/backups", {}, format="json")
        backup_id, op_id = resp.json()["id"], resp.json()["operation"]
        for _ in range(4):
            operation_enqueue(operation_id=op_id)
        wait_until(lambda: Backup.objects.filter(pk=backup_id).exclude(task_upid="").exists(),
                   timeout=60, what="the vzdump to start")
        victim.kill()
    finally:
        victim.stop()
    rescuer = start_worker(worker_env(), tmp_path, name="rescuer", concurrency=2)
    try:
        wait_operation(op_id, timeout=90, sweep=True)
    finally:
        rescuer.stop()
    backup = Backup.objects.get(pk=backup_id)
    assert backup.state == BackupState.READY
    # The worker that flushed the world died before it could turn saving on again: the one
    # that took over did.
    assert backup.flushed is True and stack.agent(server.vmid)["savesOff"] is False
    [archive] = archives(stack, server.vmid)
    assert archive["volid"] == backup.volid
    vzdumps = [t for t in stack.pve_api("GET", "/nodes/pve1/tasks",
                                        params={"limit": 500}).json()["data"]
               if t["type"] == "vzdump"]
    assert len(vzdumps) == 1, "\n".join(
        [f"{t['type']} {t.get('status')} {t.get('exitstatus')}" for t in vzdumps]
        + [line["msg"] for line in Operation.objects.get(pk=op_id).log])


def test_backups_count_against_the_account_quota(stack, worker, owner):
    server = running(owner, "quota")
    AccountQuota.objects.filter(user=owner.user).update(max_backups=2)
    first = backed_up(owner, server)
    backed_up(owner, server)
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups", {}, format="json")
    assert resp.status_code == 409 and resp.json()["code"] == "quota_exceeded"
    assert "2 of 2 backups" in resp.json()["message"]
    quota = api(owner).get("/api/v1/me/quota").json()
    assert (quota["used_backups"], quota["max_backups"]) == (2, 2)
    assert quota["used_backup_bytes"] == sum(
        Backup.objects.filter(owner=owner.user).values_list("size_bytes", flat=True))
    # Deleting one frees its place (the archive is removed from the storage).
    resp = api(owner).delete(f"/api/v1/servers/{server.id}/backups/{first.id}")
    assert resp.status_code == 202 and resp.json()["state"] == "deleting"
    wait_until(lambda: Backup.objects.get(pk=first.id).state == BackupState.DELETED,
               timeout=30, what="the archive to be removed")
    assert first.volid not in [a["volid"] for a in archives(stack, server.vmid)]
    assert len(archives(stack, server.vmid)) == 1
    assert api(owner).get(f"/api/v1/servers/{server.id}/backups/{first.id}").status_code == 404
    backed_up(owner, server)


def test_a_size_quota_refuses_too(stack, worker, owner):
    server = running(owner, "bytes")
    AccountQuota.objects.filter(user=owner.user).update(max_backup_gb=1)
    Backup.objects.create(instance=server, owner=owner.user, kind="manual", state="ready",
                          volid="local:backup/vzdump-lxc-1-2026_01_01-00_00_00.tar.zst",
                          size_bytes=2 * 1024**3)
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups", {}, format="json")
    assert resp.status_code == 409 and "GB" in resp.json()["message"]


def test_concurrent_requests_never_overshoot_the_quota(stack, owner):
    """Eight requests at once for eight servers of one account with room for three: three are
    accepted (the quota row is locked), the others refused; nothing is half made."""
    servers = [server_create(owner=owner.user, data=game_body(f"quota-race-{i}")).instance
               for i in range(8)]
    # No worker here: only the requests are raced, as if the servers ran.
    ContainerInstance.objects.filter(pk__in=[s.id for s in servers]).update(status="running")
    Operation.objects.filter(instance_id__in=[s.id for s in servers]).update(
        state="succeeded", active_slot=None)
    AccountQuota.objects.filter(user=owner.user).update(max_backups=3)
    gate = threading.Barrier(8)
    results = []

    def one(server):
        try:
            gate.wait(timeout=10)
            backup_request(instance_id=server.id, actor=Actor.system("test"))
            results.append("ok")
        except Exception as exc:  # noqa: BLE001 - counted below
            results.append(type(exc).__name__)
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["QuotaExceeded"] * 5 + ["ok"] * 3, results
    assert Backup.objects.filter(owner=owner.user).count() == 3
    assert Operation.objects.filter(kind="backup").count() == 3


def test_bad_requests_are_refused_and_other_accounts_see_nothing(stack, worker, owner):
    server = running(owner, "mine")
    backup = backed_up(owner, server)
    stranger = make_user("stranger")
    # Another account: the server and its backups do not exist for it.
    assert api(stranger).get(f"/api/v1/servers/{server.id}/backups").status_code == 404
    assert api(stranger).get(
        f"/api/v1/servers/{server.id}/backups/{backup.id}").status_code == 404
    assert api(stranger).delete(
        f"/api/v1/servers/{server.id}/backups/{backup.id}").status_code == 404
    assert api(stranger).post(f"/api/v1/servers/{server.id}/backups", {},
                              format="json").status_code == 404
    # A backup id of another server of the same account is not this server's.
    other = running(owner, "yours")
    assert api(owner).get(f"/api/v1/servers/{other.id}/backups/{backup.id}").status_code == 404
    # Notes are bounded; unknown fields are refused.
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups", {"notes": "x" * 201},
                           format="json")
    assert resp.status_code == 400 and "notes" in resp.json()["fields"]
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups", {"kind": "pre_purge"},
                           format="json")
    assert resp.status_code == 400
    # Not while another operation runs on the server, nor of a deleted server.
    resp = api(owner).delete(f"/api/v1/servers/{other.id}")
    assert resp.status_code == 202
    resp = api(owner).post(f"/api/v1/servers/{other.id}/backups", {}, format="json")
    assert resp.status_code == 409, resp.content
    assert Backup.objects.filter(instance=other).count() == 0
    # Deleting twice is one deletion.
    for _ in range(2):
        assert api(owner).delete(
            f"/api/v1/servers/{server.id}/backups/{backup.id}").status_code == 202
    wait_until(lambda: Backup.objects.get(pk=backup.id).state == BackupState.DELETED,
               timeout=30, what="the archive to be removed")


def test_a_failed_vzdump_fails_the_backup_once_and_a_new_one_works(stack, worker, owner):
    from notifications.models import Notification

    from lifecycle.services.backups import backup_usage

    server = running(owner, "unlucky")
    stack.pve("POST", "/_sim/task-errors",
              json={"type": "vzdump", "message": "job errors", "count": 100})
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups", {}, format="json")
    op = wait_operation(resp.json()["operation"], states=("failed",), timeout=120, sweep=True)
    backup = Backup.objects.get(pk=resp.json()["id"])
    assert backup.state == BackupState.FAILED and "job errors" in backup.error["message"]
    assert "job errors" in op.error["message"]
    # The operator hears of it once; the server is untouched and saving is on again.
    warnings = [n for n in Notification.objects.filter(channel="warning", kind="firing")
                if "Backup unlucky failed" in n.title]
    assert len(warnings) == 1
    server.refresh_from_db()
    assert server.status == "running"
    assert stack.agent(server.vmid)["savesOff"] is False
    # A failed backup does not count against the quota, and a new one succeeds.
    assert backup_usage(user_id=owner.user.pk).count == 0
    stack.pve("DELETE", "/_sim/task-errors")
    assert backed_up(owner, server).state == BackupState.READY


def test_removal_is_idempotent_and_resent_by_the_sweep(stack, worker, owner, settings):
    server = running(owner, "gone")
    backup = backed_up(owner, server)
    # The archive vanished behind our back (an operator pruned the storage).
    resp = stack.pve_api("DELETE", f"/nodes/pve1/storage/local/content/{backup.volid}")
    assert resp.status_code == 200, resp.text
    Backup.objects.filter(pk=backup.id).update(state=BackupState.DELETING)
    assert backup_remove(backup_id=backup.id) == "deleted"
    assert backup_remove(backup_id=backup.id) == "nothing to do"
    # A row left in `deleting` (its message lost) is sent again by the sweep.
    second = backed_up(owner, server)
    Backup.objects.filter(pk=second.id).update(state=BackupState.DELETING)
    settings.BACKUP_DELETE_RETRY_SECONDS = 0
    assert backup_sweep()["removals_resent"] >= 1
    wait_until(lambda: Backup.objects.get(pk=second.id).state == BackupState.DELETED,
               timeout=30, what="the resent removal")
    assert archives(stack, server.vmid) == []


def _deleted(owner, name):
    server = running(owner, name)
    resp = api(owner).delete(f"/api/v1/servers/{server.id}")
    wait_operation(resp.json()["id"])
    return server


def test_a_purge_takes_a_final_backup_first(stack, worker, owner, staff_api):
    server = _deleted(owner, "farewell")
    world = stack.agent(server.vmid)["world"]
    resp = staff_api.post(f"/api/v1/servers/{server.id}/purge")
    op = wait_operation(resp.json()["id"], timeout=90)
    [final] = Backup.objects.filter(instance=server)
    assert (final.kind, final.state, final.operation_id) == ("pre_purge", "ready", op.id)
    assert final.expires_at is not None
    days = (final.expires_at - final.created_at).total_seconds() / 86400
    assert 13.9 < days < 14.1
    # The archive holds the world the server had, and it outlives the container.
    assert stack.pve("GET", "/_sim/backups")[final.volid]["world"]["seed"] == world["seed"]
    assert [a["volid"] for a in archives(stack, server.vmid)] == [final.volid]
    assert server.vmid not in [c["vmid"] for c in stack.containers()]
    msgs = [line["msg"] for line in op.log]
    backed = next(i for i, m in enumerate(msgs) if m.startswith("final backup"))
    destroyed = next(i for i, m in enumerate(msgs) if "destroy" in m.lower())
    assert backed < destroyed, msgs
    # The platform keeps it: it does not count against the owner's backup quota.
    assert api(owner).get("/api/v1/me/quota").json()["used_backups"] == 0


def test_no_archive_no_purge(stack, worker, owner, staff_api):
    server = _deleted(owner, "keepme")
    stack.pve("POST", "/_sim/task-errors",
              json={"type": "vzdump", "message": "job errors", "count": 100})
    resp = staff_api.post(f"/api/v1/servers/{server.id}/purge")
    op = wait_operation(resp.json()["id"], states=("failed",), timeout=120, sweep=True)
    assert "job errors" in op.error["message"]
    # The container and its world are still there; the server can be purged again later.
    assert server.vmid in [c["vmid"] for c in stack.containers()]
    server.refresh_from_db()
    assert server.status == "purging"
    stack.pve("DELETE", "/_sim/task-errors")
    backup_sweep()  # the failed attempt's backup row ends `failed`
    assert Backup.objects.get(instance=server, operation=op).state == BackupState.FAILED
    resp = staff_api.post(f"/api/v1/servers/{server.id}/purge")
    wait_operation(resp.json()["id"], timeout=90)
    assert Backup.objects.get(instance=server, state="ready").kind == "pre_purge"


def test_expired_final_backups_are_removed(stack, worker, owner, staff_api):
    server = _deleted(owner, "expiring")
    resp = staff_api.post(f"/api/v1/servers/{server.id}/purge")
    wait_operation(resp.json()["id"], timeout=90)
    final = Backup.objects.get(instance=server)
    assert backup_sweep()["backups_expired"] == 0
    from django.db.models.functions import Now
    Backup.objects.filter(pk=final.pk).update(expires_at=Now())
    assert backup_sweep()["backups_expired"] == 1
    wait_until(lambda: Backup.objects.get(pk=final.pk).state == BackupState.DELETED,
               timeout=30, what="the expired archive to be removed")
    assert archives(stack, server.vmid) == []


# --- restore in place ----------------------------------------------------------------------

def _change_world(stack, vmid, seed):
    """Players play on: the world is no longer the one backed up."""
    stack.agents("POST", f"/_sim/agents/{vmid}/world", json={"seed": seed})
    assert stack.agent(vmid)["world"]["seed"] == seed


def _restore(owner, server, backup):
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups/{backup.id}/restore")
    assert resp.status_code == 202, resp.content
    return resp.json()["id"]


def test_restore_in_place_brings_the_backed_up_world_back(stack, worker, owner):
    server = running(owner, "rewind")
    old_world = stack.agent(server.vmid)["world"]
    backup = backed_up(owner, server)
    _change_world(stack, server.vmid, "griefed-world")
    op = wait_operation(_restore(owner, server, backup), timeout=120)

    fresh = server.__class__.objects.get(pk=server.id)
    assert fresh.status == "running"
    assert (fresh.ip, fresh.ports) == (server.ip, server.ports)
    assert fresh.vmid != server.vmid  # restored into a new container, then switched
    agent = stack.agent(fresh.vmid)
    assert agent["world"]["seed"] == old_world["seed"] and agent["state"] == "running"
    # The old container is gone; its VMID waits in quarantine.
    assert server.vmid not in [c["vmid"] for c in stack.containers()]
    from lifecycle.models import Allocation
    assert Allocation.objects.get(pool__name="vmid", value=server.vmid).state == "quarantined"
    assert Allocation.objects.get(pool__name="vmid", value=fresh.vmid).role == "vmid"
    # The state it replaced was backed up first, and still holds the griefed world.
    pre = Backup.objects.get(instance=server, kind="pre_restore")
    assert pre.state == "ready" and pre.expires_at is not None
    assert stack.pve("GET", "/_sim/backups")[pre.volid]["world"]["seed"] == "griefed-world"
    # The agent holds a new credential version (rotated on restore), and answers with it.
    from lifecycle.models import AgentCredential
    cred = AgentCredential.objects.get(pk=server.id)
    assert agent["credentialVersion"] == cred.version and cred.enrolled_at is not None
    # Players still get there: the edge names the same address and IP.
    assert [s for s in stack.velocity_servers() if s.get("address", "").startswith(server.ip)]
    msgs = " | ".join(line["msg"] for line in op.log)
    assert "current state backed up" in msgs and "the server is CT" in msgs


def test_a_restore_that_fails_midway_leaves_the_server_on_its_old_container(stack, worker,
                                                                            owner):
    server = running(owner, "steadfast")
    backup = backed_up(owner, server)
    _change_world(stack, server.vmid, "todays-world")
    stack.pve("POST", "/_sim/task-errors",
              json={"type": "vzrestore", "message": "unable to restore CT - archive is "
                    "damaged", "count": 100})
    op = wait_operation(_restore(owner, server, backup), states=("failed",), timeout=180,
                        sweep=True)
    assert "damaged" in op.error["message"]
    fresh = server.__class__.objects.get(pk=server.id)
    assert (fresh.vmid, fresh.status) == (server.vmid, "running")
    assert stack.agent(server.vmid)["world"]["seed"] == "todays-world"
    assert [c["vmid"] for c in stack.containers()] == [server.vmid]
    spare = op.params["spare_vmid"]
    from lifecycle.models import Allocation
    assert Allocation.objects.get(pool__name="vmid", value=spare).state == "quarantined"
    # The backup is untouched and a restore can be asked for again.
    stack.pve("DELETE", "/_sim/task-errors")
    assert Backup.objects.get(pk=backup.id).state == "ready"
    wait_operation(_restore(owner, server, backup), timeout=120)


def test_a_stopped_server_is_restored_stopped_and_starts_later(stack, worker, owner):
    server = running(owner, "dormant")
    old_seed = stack.agent(server.vmid)["world"]["seed"]
    backup = backed_up(owner, server)
    from lifecycle.services.actions import server_request
    wait_operation(server_request(instance_id=server.id, kind="stop",
                                  actor=Actor.system("test")).id)
    # The credential moves on meanwhile: the backup holds a version two rotations old.
    for _ in range(2):
        wait_operation(server_request(instance_id=server.id, kind="rotate_credential",
                                      actor=Actor.system("test")).id)
    wait_operation(_restore(owner, server, backup), timeout=120)
    fresh = server.__class__.objects.get(pk=server.id)
    assert fresh.status == "stopped"
    assert [c["status"] for c in stack.containers() if c["vmid"] == fresh.vmid] == ["stopped"]
    wait_operation(server_request(instance_id=server.id, kind="start",
                                  actor=Actor.system("test")).id, timeout=90)
    assert stack.agent(fresh.vmid)["world"]["seed"] == old_seed


def test_restores_refuse_what_cannot_be_restored(stack, worker, owner):
    server = running(owner, "picky")
    backup = backed_up(owner, server)
    failed = Backup.objects.create(instance=server, owner=owner.user, kind="manual",
                                   state="failed")
    making = Backup.objects.create(instance=server, owner=owner.user, kind="manual",
                                   state="creating")
    for bad, words in ((failed, "failed"), (making, "still being made")):
        resp = api(owner).post(f"/api/v1/servers/{server.id}/backups/{bad.id}/restore")
        assert resp.status_code == 409 and words in resp.json()["message"], resp.content
    # Another account's backup does not exist for you; nor does a deleted one.
    stranger = make_user("stranger")
    assert api(stranger).post(
        f"/api/v1/servers/{server.id}/backups/{backup.id}/restore").status_code == 404
    # Two restores at once: one runs.
    first = api(owner).post(f"/api/v1/servers/{server.id}/backups/{backup.id}/restore")
    second = api(owner).post(f"/api/v1/servers/{server.id}/backups/{backup.id}/restore")
    assert first.status_code == 202
    assert second.status_code == 409 and second.json()["code"] == "operation_in_progress"
    # The backup being read cannot be deleted meanwhile.
    resp = api(owner).delete(f"/api/v1/servers/{server.id}/backups/{backup.id}")
    assert resp.status_code == 409 and "restore" in resp.json()["message"]
    wait_operation(first.json()["id"], timeout=120)
    assert Operation.objects.filter(instance=server, kind="restore_backup").count() == 1


# --- scheduled backups ---------------------------------------------------------------------

def _in_flight_by_node():
    from collections import Counter
    return Counter(Operation.objects.filter(
        state__in=("queued", "running"), kind__in=("backup", "restore_backup"))
        .values_list("instance__node__name", flat=True))


def test_scheduled_backups_are_spread_bounded_per_node_and_pruned(stack, worker_env, owner,
                                                                  settings, tmp_path):
    """Six servers over two nodes, backed up every 4 s by schedule with at most one backup in
    flight per node, ticks every 0.2 s for 20 s: every server gets its backups, a node never
    has two at once, and retention keeps the newest two of each server (all on one day)."""
    from lifecycle.services.backup_schedule import backup_schedule_tick

    stack.reset(time_scale=0.2)  # a vzdump takes 0.6 s: jobs overlap if nothing bounds them
    proc = start_worker(worker_env(), tmp_path, name="sched", concurrency=6)
    try:
        servers = [running(owner, f"sched-{i}") for i in range(6)]
        assert {s.node.name for s in servers} == {"pve1", "pve2"}
        settings.BACKUP_SCHEDULED = True
        settings.BACKUP_SCHEDULE_INTERVAL_SECONDS = 4
        settings.BACKUP_NODE_CONCURRENCY = 1
        AccountQuota.objects.filter(user=owner.user).update(max_backups=1000)
        import time
        peak = 0
        requested = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            counts = backup_schedule_tick()
            requested += counts["requested"]
            peak = max([peak, *_in_flight_by_node().values()])
            time.sleep(0.2)
        settings.BACKUP_SCHEDULED = False
        wait_until(lambda: not _in_flight_by_node(), timeout=60, what="the last backups")
    finally:
        proc.stop()
    assert peak == 1, peak
    made = Backup.objects.filter(kind="scheduled")
    per_server = {s.slug: made.filter(instance=s).count() for s in servers}
    # ~5 intervals each; the per-node limit slows them, but nobody starves.
    assert all(n >= 2 for n in per_server.values()), per_server
    assert requested == made.count()
    # Retention: the newest two of each server are kept, the others removed (all one day).
    settings.BACKUP_SCHEDULED = True
    from lifecycle.services.backup_schedule import backup_retention_apply
    backup_retention_apply()
    for s in servers:
        kept = made.filter(instance=s, state="ready").order_by("-created_at")
        assert kept.count() == 2, (s.slug, list(kept.values_list("state", flat=True)))
    # Manual backups are never pruned by retention.
    assert not Backup.objects.filter(kind="manual").exclude(state="ready").exists()


def test_over_quota_a_scheduled_backup_prunes_the_oldest_scheduled_one_first(stack, worker,
                                                                            owner, settings):
    from lifecycle.services.backup_schedule import backup_schedule_tick

    server = running(owner, "crowded")
    manual = backed_up(owner, server)
    settings.BACKUP_SCHEDULED = True
    settings.BACKUP_SCHEDULE_INTERVAL_SECONDS = 1
    AccountQuota.objects.filter(user=owner.user).update(max_backups=3)
    import time
    for _ in range(40):
        backup_schedule_tick()
        wait_until(lambda: not _in_flight_by_node(), timeout=60, what="the backup")
        if Backup.objects.filter(kind="scheduled").count() >= 4:
            break
        time.sleep(0.3)
    scheduled = Backup.objects.filter(kind="scheduled")
    assert scheduled.count() >= 4
    # Never over the quota; the manual backup stays; the oldest scheduled ones went first.
    from lifecycle.services.backups import backup_usage
    assert backup_usage(user_id=owner.user.pk).count <= 3
    assert Backup.objects.get(pk=manual.id).state == "ready"
    live = list(scheduled.filter(state__in=("ready", "creating")).order_by("created_at"))
    gone = list(scheduled.exclude(state__in=("ready", "creating")).order_by("created_at"))
    assert gone and max(b.created_at for b in gone) <= min(b.created_at for b in live)


# --- verification --------------------------------------------------------------------------

def test_verification_restores_into_a_scratch_container_and_finds_a_corrupted_backup(
        stack, worker, owner, settings):
    from notifications.models import Notification

    from lifecycle.models import AgentCredential, Allocation
    from lifecycle.worker.verify import backup_verify_run

    settings.BACKUP_VERIFY = True
    server = running(owner, "proven")
    good = backed_up(owner, server)
    _change_world(stack, server.vmid, "later-world")
    bad = backed_up(owner, server)
    stack.pve("POST", "/_sim/backups/corrupt", json={"volid": bad.volid})
    live_before = stack.agent(server.vmid)
    cred_before = AgentCredential.objects.get(pk=server.id).version

    assert backup_verify_run(limit=5) == {"ok": 1, "failed": 1, "unchecked": 0}
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.verify_state == "ok" and good.verified_at is not None
    assert good.verification["world"]["loads"] is True
    assert bad.verify_state == "failed" and "does not load" in bad.verification["error"]
    # The operator is told, once, about the backup that cannot be restored.
    warnings = [n for n in Notification.objects.filter(channel="warning", kind="firing")
                if "cannot be restored" in n.title]
    assert len(warnings) == 1 and "proven" in warnings[0].title
    # No scratch container is left, its VMIDs and IPs wait in quarantine, and the live server
    # never noticed: same container, same agent, same credential.
    assert [c["vmid"] for c in stack.containers()] == [server.vmid]
    scratch = Allocation.objects.filter(instance=server, role="verify")
    assert scratch.count() == 4 and set(scratch.values_list("state", flat=True)) == {
        "quarantined"}
    live_after = stack.agent(server.vmid)
    assert live_after["credentialVersion"] == live_before["credentialVersion"] == cred_before
    assert live_after["boots"] == live_before["boots"]
    assert AgentCredential.objects.get(pk=server.id).version == cred_before
    # Checked backups are not checked again; nothing is left to do.
    assert backup_verify_run(limit=5) == {"ok": 0, "failed": 0, "unchecked": 0}


def test_a_check_that_cannot_be_made_leaves_the_backup_unchecked(stack, worker, owner,
                                                                 settings):
    from lifecycle.worker.verify import backup_verify_run

    settings.BACKUP_VERIFY = True
    server = running(owner, "unprovable")
    backup = backed_up(owner, server)
    # The scratch container's start fails (the node has trouble): not the backup's fault.
    stack.pve("POST", "/_sim/task-errors", json={"type": "vzstart", "count": 1,
                                                 "message": "got timeout"})
    assert backup_verify_run(limit=1) == {"ok": 0, "failed": 0, "unchecked": 1}
    backup.refresh_from_db()
    assert backup.verify_state == "" and "not checked" in backup.verification["error"]
    assert [c["vmid"] for c in stack.containers()] == [server.vmid]
    assert backup_verify_run(limit=1) == {"ok": 1, "failed": 0, "unchecked": 0}


# --- restore as a new server ---------------------------------------------------------------

def test_a_purged_servers_final_backup_becomes_a_new_server(stack, worker, owner, staff_api):
    from lifecycle.models import AgentCredential, ContainerInstance

    server = _deleted(owner, "departed")
    world = stack.agent(server.vmid)["world"]
    wait_operation(staff_api.post(f"/api/v1/servers/{server.id}/purge").json()["id"],
                   timeout=90)
    # The owner still sees the purged server's final backup...
    [final] = api(owner).get(f"/api/v1/servers/{server.id}/backups").json()["results"]
    assert final["kind"] == "pre_purge" and final["state"] == "ready"
    # ...and makes a new server of it.
    resp = api(owner).post(
        f"/api/v1/servers/{server.id}/backups/{final['id']}/restore-as-new",
        {"name": "phoenix"}, format="json")
    assert resp.status_code == 202, resp.content
    new = wait_status_running(resp.json()["id"])
    assert (new.kind, new.variant, new.version, new.plan) == (
        server.kind, server.variant, server.version, server.plan)
    agent = stack.agent(new.vmid)
    assert agent["world"]["seed"] == world["seed"]          # the world came back
    assert agent["serverId"] == str(new.id)                 # it speaks for the new server
    assert agent["credentialVersion"] == AgentCredential.objects.get(pk=new.id).version
    props = agent["payload"]["serverProperties"]
    assert props["server-port"] == new.ports["game"]        # reconfigured, world kept
    assert "ZeroLagHub - phoenix" in props["motd"]
    assert any(s.get("name") == "phoenix" for s in stack.velocity_servers())
    assert ContainerInstance.objects.get(pk=server.id).status == "purged"


def test_a_live_servers_backup_is_cloned_without_touching_the_original(stack, worker, owner):
    from lifecycle.models import AgentCredential

    server = running(owner, "original")
    backup = backed_up(owner, server)
    before = (stack.agent(server.vmid), AgentCredential.objects.get(pk=server.id).version)
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups/{backup.id}/restore-as-new",
                           {"name": "twin"}, format="json", HTTP_IDEMPOTENCY_KEY="twin-1")
    assert resp.status_code == 202, resp.content
    again = api(owner).post(f"/api/v1/servers/{server.id}/backups/{backup.id}/restore-as-new",
                            {"name": "twin"}, format="json", HTTP_IDEMPOTENCY_KEY="twin-1")
    assert again.status_code == 202 and again.json()["id"] == resp.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    twin = wait_status_running(resp.json()["id"])
    assert twin.ip != server.ip and twin.vmid != server.vmid
    assert stack.agent(twin.vmid)["world"]["seed"] == before[0]["world"]["seed"]
    after = stack.agent(server.vmid)
    assert after["credentialVersion"] == before[0]["credentialVersion"] == before[1]
    assert after["boots"] == before[0]["boots"] and after["state"] == "running"
    # Bad input: a taken name, a backup that failed, another account's backup.
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups/{backup.id}/restore-as-new",
                           {"name": "twin"}, format="json")
    assert resp.status_code == 409 and resp.json()["code"] == "name_taken"
    failed = Backup.objects.create(instance=server, owner=owner.user, kind="manual",
                                   state="failed")
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups/{failed.id}/restore-as-new",
                           {"name": "nope"}, format="json")
    assert resp.status_code == 409 and "failed" in resp.json()["message"]
    stranger = make_user("stranger")
    assert api(stranger).post(
        f"/api/v1/servers/{server.id}/backups/{backup.id}/restore-as-new",
        {"name": "stolen"}, format="json").status_code == 404
    resp = api(owner).post(f"/api/v1/servers/{server.id}/backups/{backup.id}/restore-as-new",
                           {"name": "x", "plan": "heavy"}, format="json")
    assert resp.status_code == 400


def wait_status_running(server_id):
    from tests.support.stack import wait_status
    return wait_status(server_id, "running", timeout=90)


def test_a_container_deleted_behind_our_back_comes_back_from_its_latest_backup(
        stack, worker, owner, settings):
    """The reconciler's level-2 recreate (off by default, on here) provisions the missing
    server again from its latest backup: the world is the backed-up one, not a fresh one."""
    from tests.reconciler.helpers import cycles
    from tests.support.stack import wait_status

    server = running(owner, "lazarus")
    older = backed_up(owner, server)
    _change_world(stack, server.vmid, "newer-world")
    latest = backed_up(owner, server)
    assert latest.created_at >= older.created_at
    _change_world(stack, server.vmid, "lost-world")  # never backed up: lost with the container
    stack.pve_api("POST", f"/nodes/{server.node.name}/lxc/{server.vmid}/status/stop")
    stack.pve_api("DELETE", f"/nodes/{server.node.name}/lxc/{server.vmid}")
    settings.RECONCILER_ENABLED_LEVELS = [0, 1, 2]
    cycles(2)
    back = wait_status(server.id, "running", timeout=120)
    provision = Operation.objects.filter(instance=server, kind="provision").order_by(
        "-created_at").first()
    assert provision.params["source_backup"] == str(latest.id)
    assert stack.agent(back.vmid)["world"]["seed"] == "newer-world"


def test_an_archive_left_by_a_backup_that_failed_is_removed_by_the_sweep(stack, worker, owner):
    """The vzdump made its archive, but the backup could not confirm it and ran out of tries:
    the storage must not keep an archive nobody knows of."""
    server = running(owner, "leaky")
    backup = backed_up(owner, server)
    Backup.objects.filter(pk=backup.pk).update(state="failed", task_upid="UPID:pve1:x:")
    assert len(archives(stack, server.vmid)) == 1
    assert backup_sweep()["failed_archives_removed"] == 1
    assert archives(stack, server.vmid) == []
    assert Backup.objects.get(pk=backup.pk).task_upid == ""
    assert backup_sweep()["failed_archives_removed"] == 0
