"""Start, graceful stop, restart, soft delete, restore, purge and quarantine, through the API
and real workers."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from lifecycle.models import Allocation, ContainerInstance, Node, Operation
from lifecycle.services.servers import server_create
from lifecycle.worker.sweeper import operation_sweep, quarantine_release, server_purge_due
from tests.support.platform import game_body, make_user

from tests.support.stack import wait_operation, wait_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.lifecycle]


def act(api, user, sid, verb, **kw):
    if verb == "delete":
        return api.delete(f"/api/v1/servers/{sid}", **user.headers)
    return api.post(f"/api/v1/servers/{sid}/{verb}", kw or None, format="json", **user.headers)


def running_server(owner, name="power"):
    result = server_create(owner=owner.user, data=game_body(name))
    return wait_status(result.instance.id, "running")


def test_stop_saves_the_world_then_start_and_restart(stack, worker, owner):
    api = APIClient()
    inst = running_server(owner)
    resp = act(api, owner, inst.id, "stop")
    assert resp.status_code == 202 and resp.json()["kind"] == "stop"
    assert resp["Location"] == f"/api/v1/operations/{resp.json()['id']}"
    wait_status(inst.id, "stopped")
    agent = stack.agent(inst.vmid)
    assert agent["saves"] == 1 and agent["uncleanStops"] == 0
    assert stack.containers()[0]["status"] == "stopped"
    assert ContainerInstance.objects.get(pk=inst.id).desired_state == "stopped"

    assert act(api, owner, inst.id, "stop").json()["code"] == "invalid_state"
    assert act(api, owner, inst.id, "start").status_code == 202
    wait_status(inst.id, "running")
    assert stack.agent(inst.vmid)["boots"] == 2

    op = act(api, owner, inst.id, "restart").json()
    # A second action while one is active is refused, not queued behind it.
    second = act(api, owner, inst.id, "restart")
    assert second.status_code == 409
    assert second.json()["code"] in ("operation_in_progress", "invalid_state")
    wait_operation(op["id"])
    wait_status(inst.id, "running")
    agent = stack.agent(inst.vmid)
    assert agent["boots"] == 3 and agent["saves"] == 2 and agent["uncleanStops"] == 0


def test_soft_delete_restore_and_purge(stack, worker, owner, staff):
    api = APIClient()
    inst = running_server(owner, "doomed")
    claimed = set(Allocation.objects.filter(instance=inst).values_list("id", flat=True))
    node_mem = Node.objects.get(pk=inst.node_id).allocated_memory_mb

    assert act(api, owner, inst.id, "delete").status_code == 202
    deleted = wait_status(inst.id, "deleted")
    assert deleted.desired_state == "deleted"
    window = deleted.purge_after - deleted.deleted_at
    assert timedelta(hours=23, minutes=59) < window <= timedelta(hours=24)
    assert stack.containers()[0]["status"] == "stopped"  # kept for the window
    assert stack.agent(inst.vmid)["saves"] == 1
    assert set(Allocation.objects.filter(instance=inst, state="claimed")
               .values_list("id", flat=True)) == claimed

    assert act(api, owner, inst.id, "restore").status_code == 202
    restored = wait_status(inst.id, "running")
    assert restored.deleted_at is None and restored.purge_after is None

    act(api, owner, inst.id, "delete")
    wait_status(inst.id, "deleted")
    assert act(api, owner, inst.id, "purge").status_code == 403  # staff only
    assert act(api, staff, inst.id, "purge").status_code == 202
    purged = wait_status(inst.id, "purged")
    assert purged.live_slug is None and purged.desired_state == "purged"
    assert stack.containers() == []
    rows = Allocation.objects.filter(id__in=claimed)
    assert set(rows.values_list("state", flat=True)) == {"quarantined"}
    assert all(r.quarantine_until > timezone.now() + timedelta(hours=23) for r in rows)
    assert Node.objects.get(pk=inst.node_id).allocated_memory_mb == node_mem - inst.memory_mb
    assert act(api, owner, inst.id, "restore").json()["code"] == "invalid_state"
    # The name is free again; the quarantined VMID is not handed out again.
    again = server_create(owner=owner.user, data=game_body("doomed")).instance
    assert again.vmid != inst.vmid


def test_quarantined_vmid_is_not_reused_inside_the_quarantine_period(stack, worker, owner):
    Allocation.objects.filter(pool__kind="vmid", value__gt=5001).delete()  # pool of 2: 5000, 5001
    first = running_server(owner, "first")
    second = running_server(owner, "second")
    assert {first.vmid, second.vmid} == {5000, 5001}
    api = APIClient()
    act(api, owner, first.id, "delete")
    wait_status(first.id, "deleted")
    ContainerInstance.objects.filter(pk=first.id).update(purge_after=timezone.now())
    assert server_purge_due() == 1
    wait_status(first.id, "purged")
    # Inside the quarantine period: no VMID to hand out, clear error, nothing half-made.
    resp = api.post("/api/v1/servers", game_body("third"), format="json", **owner.headers)
    assert resp.status_code == 503 and resp.json()["code"] == "capacity_exhausted"
    quarantine_release()
    assert Allocation.objects.get(pool__kind="vmid", value=first.vmid).state == "quarantined"
    # Quarantine over, and Proxmox confirms the VMID is absent: usable again.
    Allocation.objects.filter(state="quarantined").update(quarantine_until=timezone.now())
    released = quarantine_release()
    assert released["vmids_freed"] == 1
    assert server_create(owner=owner.user, data=game_body("third")).instance.vmid == first.vmid


def test_quarantine_keeps_a_vmid_proxmox_still_shows(stack, worker, owner):
    inst = running_server(owner, "lingering")
    Allocation.objects.filter(instance=inst).update(
        state="quarantined", quarantine_until=timezone.now() - timedelta(seconds=1))
    result = quarantine_release()
    # Its container (carrying its tag) still runs: not even its IP and port are freed.
    assert result["vmids_freed"] == 0 and result["freed"] == 0 and result["held"] == 3
    assert set(Allocation.objects.filter(instance=inst).values_list("state", flat=True)) == {
        "quarantined"}


def test_delete_when_the_container_is_already_gone_succeeds(stack, worker, owner):
    inst = running_server(owner, "vanished")
    for path in (f"/nodes/{inst.node.name}/lxc/{inst.vmid}/status/stop",):
        assert stack.pve_api("POST", path).status_code == 200
    stack.pve_api("DELETE", f"/nodes/{inst.node.name}/lxc/{inst.vmid}")
    assert stack.containers() == []
    api = APIClient()
    assert act(api, owner, inst.id, "delete").status_code == 202
    wait_status(inst.id, "deleted")
    ContainerInstance.objects.filter(pk=inst.id).update(purge_after=timezone.now())
    server_purge_due()
    wait_status(inst.id, "purged")
    op = Operation.objects.filter(instance=inst, kind="purge").get()
    assert any("does not exist" in e["msg"] for e in op.log)


def test_actions_are_refused_for_other_users_and_bad_states(stack, worker, owner):
    api = APIClient()
    inst = running_server(owner, "mine")
    other = make_user("intruder")
    for verb in ("stop", "start", "restart", "restore", "retry", "delete"):
        resp = act(api, other, inst.id, verb)
        assert resp.status_code == 404, (verb, resp.content)
    assert act(api, owner, inst.id, "start").json()["message"] == "The server is already running."
    assert act(api, owner, inst.id, "retry").status_code == 409
    assert act(api, owner, inst.id, "restore").status_code == 409
    assert act(api, owner, inst.id, "restore", target="sideways").status_code == 400
    assert Operation.objects.filter(instance=inst).count() == 1


def test_a_lost_message_is_sent_again_by_the_sweeper(stack, worker_env, owner, tmp_path,
                                                    settings):
    import time

    settings.OPERATION_REENQUEUE_AFTER_SECONDS = 60
    from tests.support import broker
    from tests.support.workers import start_worker

    result = server_create(owner=owner.user, data=game_body("lost-msg"))
    assert broker.queued_task_ids("lifecycle") == [str(result.operation.id)]
    broker.client().flushall()  # Redis wiped before any worker saw the message
    proc = start_worker(worker_env(), tmp_path, name="late")
    try:
        time.sleep(1.5)
        assert Operation.objects.get(pk=result.operation.id).state == "queued"
        assert operation_sweep()["lost"] == 0  # sent recently: not yet considered lost
        Operation.objects.filter(pk=result.operation.id).update(
            enqueued_at=timezone.now() - timedelta(minutes=5))
        assert operation_sweep() == {"lost": 1, "expired": 0, "sent": 1, "expired_requests": 0}
        wait_status(result.instance.id, "running")
    finally:
        proc.stop()


def test_a_crash_while_starting_is_reported_and_the_start_retried(stack, worker, owner):
    from tests.support.waiting import wait_until

    inst = running_server(owner, "crashy")
    api = APIClient()
    act(api, owner, inst.id, "stop")
    wait_status(inst.id, "stopped")
    stack.pve("POST", "/_sim/time-scale", json={"scale": 0.5})  # the game boots in 1.5 s
    stack.agents("DELETE", "/_sim/calls")
    op = act(api, owner, inst.id, "start").json()
    # Crash the game the worker started (the container's boot autostarts it too: crashing
    # that one before the worker asks would only be undone by the worker's own start).
    wait_until(lambda: any(method == "POST" and path.endswith("/game/start")
                           for method, path, *_ in stack.agents("GET", "/_sim/calls")["calls"]),
               timeout=30, what="the worker to start the game")
    wait_until(lambda: stack.agent(inst.vmid)["state"] == "starting", timeout=30,
               what="the game to be starting")
    stack.agents("POST", f"/_sim/agents/{inst.vmid}/crash",
                 json={"reason": "java.lang.OutOfMemoryError: Java heap space"})
    wait_operation(op["id"], timeout=60)
    wait_status(inst.id, "running")
    wait_until(lambda: stack.discord_messages("warning"), timeout=30, what="the crash report")
    [warning] = stack.discord_messages("warning")
    assert warning["embeds"][0]["title"] == "crashy crashed while starting"
    assert "OutOfMemoryError" in warning["embeds"][0]["description"]
    assert Operation.objects.get(pk=op["id"]).attempt == 2
