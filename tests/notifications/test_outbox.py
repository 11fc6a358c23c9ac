"""The notification outbox against the Discord stand-in: fail-soft callers, durable delivery in
order, 429s waited out, dead webhooks flagged, secrets masked, alerts deduplicated."""
from __future__ import annotations

import logging
import time
from collections import Counter

import pytest
from django.db import transaction

from notifications.choices import DeliveryState
from notifications.models import AlertState, ChannelState, Notification
from notifications.services import (
    alert_resolve,
    channel_enable,
    channel_send,
    notifications_flush,
    notify,
    notify_critical,
    notify_info,
    notify_lifecycle,
    notify_warning,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.notifications]

CHANNELS = ("critical", "warning", "info", "lifecycle")


def delivered(stack, channel=None):
    return stack.discord_messages(channel)


def titles(messages):
    return [m["embeds"][0]["title"] for m in messages]


def test_outage_then_every_notification_delivered_once_in_order(stack, worker):
    stack.sim("discord", "POST", "/_sim/outage", json={"on": True})
    raised: dict[str, list[str]] = {c: [] for c in CHANNELS}
    slowest = 0.0
    for i in range(50):
        channel = CHANNELS[i % 4]
        started = time.monotonic()
        with transaction.atomic():  # as an event's own transaction would
            notify(channel, f"{channel} event {i}", "while Discord is down")
        slowest = max(slowest, time.monotonic() - started)
        raised[channel].append(f"{channel} event {i}")
    assert slowest < 0.5, f"a caller waited {slowest:.2f}s"
    wait_until(lambda: ChannelState.objects.filter(consecutive_failures__gte=1).count() >= 1,
               timeout=30, what="the sender to hit the outage")
    assert delivered(stack) == []
    assert Notification.objects.filter(state="pending").count() == 50

    stack.sim("discord", "POST", "/_sim/outage", json={"on": False})
    wait_until(lambda: len(delivered(stack)) >= 50, timeout=90, interval=0.5,
               on_tick=notifications_flush, what="all 50 to be delivered")
    time.sleep(1)  # anything duplicated would show up now
    messages = delivered(stack)
    assert len(messages) == 50
    for channel in CHANNELS:
        assert titles(delivered(stack, channel)) == raised[channel]
    assert set(Notification.objects.values_list("state", flat=True)) == {"sent"}
    assert all(n.discord_message_id for n in Notification.objects.all())


def test_a_burst_that_hits_429_waits_and_loses_nothing(stack, worker):
    stack.sim("discord", "POST", "/_sim/rate-limit", json={"limit": 1, "window": 2})
    for i in range(25):
        notify_lifecycle(f"burst {i}")
    wait_until(lambda: len(delivered(stack, "lifecycle")) >= 25, timeout=60, interval=0.3,
               what="the burst to be delivered")
    time.sleep(0.5)
    assert titles(delivered(stack, "lifecycle")) == [f"burst {i}" for i in range(25)]
    statuses = Counter(status for _, path, status in
                       stack.sim("discord", "GET", "/_sim/calls")["calls"] if "webhooks" in path)
    posts = stack.discord_posts("lifecycle")
    assert statuses[429] >= 1, statuses  # the stand-in's 1-per-2s limit was hit...
    assert statuses[200] == len(posts)    # ...and every message still went out exactly once
    assert len(posts) < 25 and all(len(p["embeds"]) <= 10 for p in posts)


def test_a_burst_goes_out_ten_to_a_message_in_order(stack):
    """100 servers ready at once: ten messages of ten embeds, not 100 posts queueing behind the
    webhook's rate limit; a critical alert that mentions the on-call role goes alone."""
    stack.sim("discord", "POST", "/_sim/rate-limit", json={"limit": 1000, "window": 2})
    for i in range(100):
        notify_lifecycle(f"ready {i}", "players can join", fields=[{"name": "node",
                                                                     "value": "pve1"}])
    channel_send("lifecycle")
    posts = stack.discord_posts("lifecycle")
    assert [len(p["embeds"]) for p in posts] == [10] * 10
    assert titles(delivered(stack, "lifecycle")) == [f"ready {i}" for i in range(100)]
    sent = Notification.objects.filter(channel="lifecycle")
    assert set(sent.values_list("state", flat=True)) == {"sent"}
    assert Counter(sent.values_list("discord_message_id", flat=True)) == \
        Counter({p["id"]: 10 for p in posts})

    notify_critical("disk full on pve1", mention=False)
    notify_critical("pve2 down", mention=True)
    notify_critical("disk full on pve3", mention=False)
    channel_send("critical")
    posts = stack.discord_posts("critical")
    assert [[e["title"] for e in p["embeds"]] for p in posts] == [
        ["disk full on pve1"], ["pve2 down"], ["disk full on pve3"]]
    assert "<@&" in posts[1]["content"]


def test_big_notifications_share_a_message_only_within_discords_size_limit(stack):
    for i in range(6):
        notify_info(f"long {i}", "z" * 2500)  # three fit in 6,000 characters at most two
    channel_send("info")
    posts = stack.discord_posts("info")  # the stand-in refuses a message over the limit
    assert [len(p["embeds"]) for p in posts] == [2, 2, 2]
    assert titles(delivered(stack, "info")) == [f"long {i}" for i in range(6)]


def test_a_refused_message_of_many_is_sent_again_one_by_one(stack):
    stack.sim("discord", "POST", "/_sim/faults", json={
        "method": "POST", "path": "/webhooks/", "count": 1, "status": 400,
        "body": {"message": "Invalid Form Body", "code": 50035}})
    for i in range(4):
        notify_info(f"event {i}")
    channel_send("info")
    posts = stack.discord_posts("info")
    assert [len(p["embeds"]) for p in posts] == [1, 1, 1, 1]
    assert titles(delivered(stack, "info")) == [f"event {i}" for i in range(4)]
    assert set(Notification.objects.values_list("state", flat=True)) == {"sent"}


def test_a_deleted_webhook_stops_its_channel_and_says_so_elsewhere(stack):
    hook_id = stack.endpoints["discord"]["webhooks"]["lifecycle"].split("/")[-2]
    stack.sim("discord", "POST", f"/_sim/webhooks/{hook_id}/delete")
    notify_lifecycle("first")
    notify_lifecycle("second")
    result = channel_send("lifecycle")
    assert result["stopped"] == "webhook_gone"
    state = ChannelState.objects.get(channel="lifecycle")
    assert state.disabled and "10015" in state.disabled_reason
    assert Notification.objects.filter(channel="lifecycle", state="pending").count() == 2
    channel_send("critical")
    [alarm] = delivered(stack, "critical")
    assert "#lifecycle stopped working" in alarm["embeds"][0]["title"]
    assert alarm["allowed_mentions"] == {"parse": [], "roles": ["424242424242"]}
    assert channel_send("lifecycle")["stopped"] == "channel disabled"  # no more calls to it

    # The operator fixes the URL (here: points the channel at the warning webhook) and
    # re-enables it; what waited is delivered, and the alarm resolves.
    from django.conf import settings
    settings.DISCORD_WEBHOOKS["lifecycle"] = stack.endpoints["discord"]["webhooks"]["warning"]
    channel_enable("lifecycle")
    channel_send("lifecycle")
    assert titles(delivered(stack, "warning")) == ["first", "second"]
    channel_send("critical")
    assert titles(delivered(stack, "critical"))[-1].startswith("Resolved: Discord webhook")


def test_a_planted_secret_appears_nowhere(stack, worker, caplog):
    caplog.set_level(logging.INFO)
    secrets = ["sk_live_51Hx9aZQpL3mN8vT2yR7", "hunter2-Correct-Horse-99",
               "ghp_AbCdEf1234567890XyZwVuTsRqPoNmLk"]
    webhook = stack.endpoints["discord"]["webhooks"]["info"]
    notify_warning(
        "Repair failed", f"upstream said: password={secrets[1]} while calling {webhook}",
        payload={"api_token": secrets[0], "nested": {"Authorization": f"Bearer {secrets[2]}"},
                 "note": f"token is {secrets[2]}"},
        fields=[{"name": "secret", "value": secrets[0]},
                {"name": "error", "value": f"Exception('DSN mysql://zlh:{secrets[1]}@db/zlh')"}])
    try:
        raise RuntimeError(f"proxmox refused PVEAPIToken=root@pam!zlh={secrets[0]}")
    except RuntimeError as exc:
        logging.getLogger("lifecycle.test").exception("operation failed: %s", exc)
        notify_critical("Operation failed", str(exc))
    wait_until(lambda: len(delivered(stack)) >= 2, timeout=30, what="both to be delivered")

    stored = str(list(Notification.objects.values()))
    seen = str(delivered(stack))
    logs = worker.log() + "\n".join(
        logging.getLogger().handlers[0].format(r) for r in caplog.records)
    for secret in secrets:
        assert secret not in stored, "secret in the outbox rows"
        assert secret not in seen, "secret sent to Discord"
        assert secret not in logs, "secret in the logs"
    assert webhook.split("/")[-1] not in stored + seen + logs  # the webhook token itself
    assert "***" in seen


def test_one_alert_raised_10_times_sends_once_and_resolves_once(stack, worker):
    for _ in range(10):
        notify_warning("Node pve2 unreachable", "no answer for 60 s", alert_key="node-down:pve2")
    assert alert_resolve("node-down:pve2", body="pve2 answers again")
    assert alert_resolve("node-down:pve2") is None  # already resolved: nothing more
    wait_until(lambda: len(delivered(stack, "warning")) >= 2, timeout=30, what="2 messages")
    time.sleep(0.5)
    messages = delivered(stack, "warning")
    assert titles(messages) == ["Node pve2 unreachable", "Resolved: Node pve2 unreachable"]
    assert messages[1]["embeds"][0]["color"] == 0x2ECC71
    state = AlertState.objects.get(alert_key="node-down:pve2")
    assert (state.firing, state.suppressed) == (False, 9)
    # Firing again after it resolved is news: sent again.
    notify_warning("Node pve2 unreachable", alert_key="node-down:pve2")
    wait_until(lambda: len(delivered(stack, "warning")) >= 3, timeout=30, what="refiring")


def test_messages_fit_discords_limits_and_mentions_are_suppressed(stack):
    notify_info("x" * 400, "y" * 9000,
                fields=[{"name": f"f{i}", "value": "v" * 2000} for i in range(40)])
    channel_send("info")
    [message] = delivered(stack, "info")  # the stand-in refuses anything over the limits
    embed = message["embeds"][0]
    assert embed["title"].endswith("[truncated]") and len(embed["title"]) <= 256
    assert len(embed["fields"]) <= 25
    assert message["allowed_mentions"] == {"parse": []}
    assert "content" not in message or "<@" not in message["content"]
    assert Notification.objects.get().state == DeliveryState.SENT


def test_callers_do_not_fail_or_wait_when_redis_is_down(stack):
    from tests.support.procs import child_env, run_parallel

    dead = child_env(**{**stack.env, "REDIS_URL": "redis://127.0.0.1:9/15",
                        "TEST_REDIS_URL": "redis://127.0.0.1:9/15"})
    [result] = run_parallel("tests.support.workloads.raise_notifications",
                            [{"count": 5}], env=dead, timeout=120)
    assert result["raised"] == 5 and result["slowest"] < 10
    assert Notification.objects.filter(state="pending").count() == 5
    # Redis is back (this process uses the live one): the flush delivers them.
    notifications_flush()
    for channel in CHANNELS:
        channel_send(channel)
    assert len(delivered(stack)) == 5


@pytest.mark.django_db(transaction=True)
def test_the_first_firing_of_an_alert_from_many_threads_at_once_is_one_message():
    """Eight threads (eight connections) fire a new alert at the same moment: no deadlock
    reaches a caller, and the dedupe makes one message of them."""
    import threading

    from django.db import connection

    from notifications.models import Notification
    from notifications.services import notify_warning

    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def fire():
        try:
            barrier.wait(timeout=10)
            notify_warning("Out of capacity", "all at once", alert_key="race-alert")
        except BaseException as exc:  # noqa: BLE001 - any error fails the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=fire) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert Notification.objects.filter(alert_key="race-alert").count() == 1
