"""Raising notifications (fail-soft, durable, deduplicated) and delivering them to Discord.

`notify_*` write an outbox row in the caller's transaction and wake the sender after commit;
they never call Discord and never raise because Discord is down. The sender holds a per-channel
lease, sends that channel's rows strictly in order (up to ten to a message), waits out 429s,
backs off on failures, and stops (flagging the channel, and saying so on another one) when a
webhook is gone.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from core.clock import db_after, db_now
from core.db import retry_on_lock_conflict

from . import discord
from .choices import Channel, DeliveryState, Kind
from .models import AlertState, ChannelState, Notification
from core.redaction import redact, redact_text

logger = logging.getLogger(__name__)
#: The sender task (notifications/tasks.py), sent by name and routed by zlh/celery.py.
SEND_CHANNEL_TASK = "notifications.send_channel"
LEASE_SECONDS = 60
BATCH = 200


def webhook_url(channel: str) -> str:
    return settings.DISCORD_WEBHOOKS.get(channel, "") or ""


# --- raising ---------------------------------------------------------------------------------
def notify(channel: str, title: str, body: str = "", *, fields: list[dict[str, Any]] | None = None,
           alert_key: str = "", payload: dict[str, Any] | None = None,
           mention: bool = False, subject: str = "") -> Notification | None:
    """Write a notification; returns the row, or None when an alert repeat was suppressed."""
    if channel not in Channel.values:
        raise ValueError(f"unknown channel {channel!r}")
    # Its own transaction is run again on a lock conflict; inside a caller's, the caller's
    # retry decides (core.db.retry_on_lock_conflict).
    return _notify(channel, title, body, fields=fields, alert_key=alert_key,
                   payload=payload, mention=mention, subject=subject)


@retry_on_lock_conflict
def _notify(channel: str, title: str, body: str, *, fields: list[dict[str, Any]] | None,
            alert_key: str, payload: dict[str, Any] | None, mention: bool,
            subject: str) -> Notification | None:
    with transaction.atomic():
        if alert_key and not _alert_should_send(alert_key, channel, title):
            return None
        row = Notification.objects.create(
            channel=channel,
            kind=Kind.FIRING if alert_key else Kind.EVENT,
            alert_key=alert_key[:200],
            subject=str(subject)[:64],
            title=discord.clip(redact_text(title), discord.TITLE_MAX),
            body=redact_text(body or ""),
            fields=redact(fields or []),
            payload=redact(payload or {}),
            mention=mention,
            state=DeliveryState.PENDING if webhook_url(channel) else DeliveryState.UNCONFIGURED,
        )
        if row.state == DeliveryState.PENDING:
            transaction.on_commit(lambda: enqueue_send(channel))
    return row


def notify_critical(title: str, body: str = "", **kwargs: Any) -> Notification | None:
    kwargs.setdefault("mention", True)
    return notify(Channel.CRITICAL, title, body, **kwargs)


def notify_warning(title: str, body: str = "", **kwargs: Any) -> Notification | None:
    return notify(Channel.WARNING, title, body, **kwargs)


def notify_info(title: str, body: str = "", **kwargs: Any) -> Notification | None:
    return notify(Channel.INFO, title, body, **kwargs)


def notify_lifecycle(title: str, body: str = "", **kwargs: Any) -> Notification | None:
    return notify(Channel.LIFECYCLE, title, body, **kwargs)


def _alert_row(alert_key: str, channel: str) -> AlertState:
    """The alert's state row, locked. Made first with a plain insert when it does not exist
    (a racing insert waits on the key, then finds it): a locking read of a missing row takes a
    gap lock, and two of those followed by inserts deadlock."""
    if not AlertState.objects.filter(alert_key=alert_key).exists():
        try:
            with transaction.atomic():
                AlertState.objects.create(alert_key=alert_key, channel=channel)
        except IntegrityError:
            pass  # made by the racing call: locked and read below
    return AlertState.objects.select_for_update().get(alert_key=alert_key)


def _alert_should_send(alert_key: str, channel: str, title: str) -> bool:
    """Alertmanager-style dedupe: a firing alert is sent once per repeat interval."""
    now = timezone.now()
    state = _alert_row(alert_key, channel)
    repeat = timedelta(seconds=settings.NOTIFY_REPEAT_INTERVAL_SECONDS)
    state.last_fired_at = now
    if state.firing and state.last_sent_at and now - state.last_sent_at < repeat:
        state.suppressed += 1
        state.save(update_fields=["last_fired_at", "suppressed"])
        return False
    if not state.firing:
        state.first_fired_at = now
    state.firing, state.last_sent_at, state.channel = True, now, channel
    state.title = discord.clip(redact_text(title), discord.TITLE_MAX)
    state.resolved_at = None
    state.save()
    return True


def alert_resolve(alert_key: str, *, body: str = "") -> Notification | None:
    """Clear an alert: one "resolved" message if it was firing, nothing otherwise."""
    with transaction.atomic():
        state = AlertState.objects.select_for_update().filter(alert_key=alert_key).first()
        if state is None or not state.firing:
            return None
        state.firing = False
        state.resolved_at = timezone.now()
        state.save(update_fields=["firing", "resolved_at"])
        row = Notification.objects.create(
            channel=state.channel, kind=Kind.RESOLVED, alert_key=alert_key,
            title=state.title or alert_key, body=redact_text(body),
            state=(DeliveryState.PENDING if webhook_url(state.channel)
                   else DeliveryState.UNCONFIGURED))
        if row.state == DeliveryState.PENDING:
            transaction.on_commit(lambda: enqueue_send(state.channel))
    return row


def enqueue_send(channel: str, *, countdown: float | None = None) -> None:
    """Wake the channel's sender; fail-soft (the periodic flush catches what this misses)."""
    try:
        current_app.send_task(SEND_CHANNEL_TASK, args=[channel], countdown=countdown)
    except Exception:  # broker down: the rows wait in the outbox
        logger.warning("could not wake the %s notification sender; the flush will", channel,
                       exc_info=False)


# --- delivering ------------------------------------------------------------------------------
def _claim(channel: str, owner: str) -> bool:
    ChannelState.objects.get_or_create(channel=channel)
    return bool(ChannelState.objects.filter(channel=channel).filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=Now()) | Q(lease_owner=owner)
    ).update(lease_owner=owner, lease_expires_at=db_after(LEASE_SECONDS)))


def _renew(channel: str, owner: str) -> bool:
    return bool(ChannelState.objects.filter(channel=channel, lease_owner=owner).update(
        lease_expires_at=db_after(LEASE_SECONDS)))


def _release(channel: str, owner: str) -> None:
    ChannelState.objects.filter(channel=channel, lease_owner=owner).update(
        lease_owner="", lease_expires_at=None)


def channel_send(channel: str) -> dict[str, Any]:
    """Deliver the channel's pending notifications in order. One sender per channel."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{time.monotonic_ns()}"
    if not _claim(channel, owner):
        return {"channel": channel, "skipped": "another sender holds the channel"}
    sent = 0
    single = False
    try:
        deadline = time.monotonic() + 50
        for _ in range(BATCH):
            state = ChannelState.objects.get(channel=channel)
            if state.disabled:
                return {"channel": channel, "sent": sent, "stopped": "channel disabled"}
            now = db_now() if state.next_attempt_at else None
            if state.next_attempt_at and state.next_attempt_at > now:
                wait = (state.next_attempt_at - now).total_seconds()
                enqueue_send(channel, countdown=wait)
                return {"channel": channel, "sent": sent, "waiting": wait}
            rows = list(Notification.objects.filter(channel=channel,
                                                    state=DeliveryState.PENDING)
                        .order_by("id")[:1 if single else discord.EMBEDS_MAX])
            if not rows:
                return {"channel": channel, "sent": sent}
            url = webhook_url(channel)
            if not url:
                Notification.objects.filter(pk__in=[r.pk for r in rows]).update(
                    state=DeliveryState.UNCONFIGURED)
                continue
            group, message = _group(rows)
            result = discord.send(url, message, timeout=settings.DISCORD_TIMEOUT,
                                  max_bytes=settings.DISCORD_MAX_ANSWER_BYTES)
            if result.outcome == "bad_message" and len(group) > 1:
                # Which of them Discord refuses is not said: each goes alone from now on, so
                # only that one is given up.
                single = True
                continue
            if not _apply(channel, group, result, owner):
                return {"channel": channel, "sent": sent, "stopped": result.outcome}
            sent += len(group) if result.outcome == "sent" else 0
            if time.monotonic() > deadline or not _renew(channel, owner):
                enqueue_send(channel)
                return {"channel": channel, "sent": sent, "more": True}
        enqueue_send(channel)
        return {"channel": channel, "sent": sent, "more": True}
    finally:
        _release(channel, owner)


def _message(row: Notification) -> dict[str, Any]:
    return discord.build_message(
        channel=row.channel, kind=row.kind, title=row.title, body=row.body, fields=row.fields,
        alert_key=row.alert_key, created_at=row.created_at.isoformat(), mention=row.mention,
        role_id=settings.DISCORD_CRITICAL_ROLE_ID)


def _group(rows: list[Notification]) -> tuple[list[Notification], dict[str, Any]]:
    """The first rows (in order) that go out as one message, and that message: up to
    `discord.EMBEDS_MAX` embeds within Discord's size limit for a whole message. A row that
    mentions the on-call role goes alone (the mention is the message's content). A burst of
    servers becoming ready is then a few messages, not one per server hitting the webhook's
    rate limit."""
    first = _message(rows[0])
    group, embeds = [rows[0]], list(first["embeds"])
    if "content" in first:
        return group, first
    size = sum(discord.embed_size(e) for e in embeds)
    for row in rows[1:]:
        if row.mention:
            break
        embed = _message(row)["embeds"][0]
        size += discord.embed_size(embed)
        if size > discord.EMBED_TOTAL_MAX or len(embeds) >= discord.EMBEDS_MAX:
            break
        group.append(row)
        embeds.append(embed)
    return group, {**first, "embeds": embeds}


def _apply(channel: str, group: list[Notification], result: discord.SendResult,
           owner: str) -> bool:
    """Record what happened to the rows of one message; True to go on with the next, False to
    stop for now."""
    now = timezone.now()
    detail = redact_text(result.detail)[:500]
    ids = [row.pk for row in group]
    if result.outcome == "sent":
        Notification.objects.filter(pk__in=ids).update(
            state=DeliveryState.SENT, sent_at=now, discord_message_id=result.message_id,
            attempts=F("attempts") + 1, last_error="")
        ChannelState.objects.filter(channel=channel).update(consecutive_failures=0, last_error="",
                                                            next_attempt_at=None)
        return True
    Notification.objects.filter(pk__in=ids).update(attempts=F("attempts") + 1,
                                                   last_error=detail)
    row = group[0]
    if result.outcome == "rate_limited":
        # Wait it out without holding a worker: the same row goes first when the sender is
        # woken after `retry_after` (a short countdown).
        logger.info("discord %s: rate limited for %.2fs", channel, result.retry_after)
        ChannelState.objects.filter(channel=channel).update(
            next_attempt_at=db_after(result.retry_after))
        enqueue_send(channel, countdown=result.retry_after)
        return False
    if result.outcome == "bad_message":
        # Discord refuses this message as it is; it would block the channel for ever.
        Notification.objects.filter(pk=row.pk).update(state=DeliveryState.FAILED)
        logger.error("discord %s refused notification %s: %s", channel, row.pk, detail)
        return True
    if result.outcome == "webhook_gone":
        _disable_channel(channel, detail)
        return False
    state = ChannelState.objects.get(channel=channel)
    failures = state.consecutive_failures + 1
    backoff = min(settings.NOTIFY_BACKOFF_MAX_SECONDS, 2 ** min(failures, 10))
    ChannelState.objects.filter(channel=channel).update(
        consecutive_failures=failures, last_error=detail,
        next_attempt_at=db_after(backoff))
    logger.warning("discord %s unreachable (%s); retrying in %ss", channel, detail, backoff)
    enqueue_send(channel, countdown=backoff)
    return False


def _disable_channel(channel: str, detail: str) -> None:
    with transaction.atomic():
        changed = ChannelState.objects.filter(channel=channel, disabled=False).update(
            disabled=True, disabled_reason=detail[:300], disabled_at=timezone.now())
        if not changed:
            return
        logger.error("discord webhook of channel %s stopped working: %s", channel, detail)
        other = Channel.WARNING if channel == Channel.CRITICAL else Channel.CRITICAL
        notify(other, f"Discord webhook for #{channel} stopped working",
               f"Sending to #{channel} has stopped: {detail}. Its notifications wait in the "
               "outbox; fix DISCORD_WEBHOOK_" + channel.upper() + " and re-enable the channel "
               "in the admin to deliver them.",
               alert_key=f"webhook-broken:{channel}", mention=other == Channel.CRITICAL)


def channel_enable(channel: str) -> None:
    """After the operator fixed the webhook: resume, and deliver what waited."""
    ChannelState.objects.filter(channel=channel).update(
        disabled=False, disabled_reason="", disabled_at=None, next_attempt_at=None,
        consecutive_failures=0)
    alert_resolve(f"webhook-broken:{channel}", body=f"#{channel} re-enabled")
    enqueue_send(channel)


def notifications_flush() -> dict[str, int]:
    """Periodic safety net: wake the sender of every channel with due pending rows."""
    woken = {}
    for channel in Channel.values:
        pending = Notification.objects.filter(channel=channel,
                                              state=DeliveryState.PENDING).count()
        if pending:
            state = ChannelState.objects.filter(channel=channel).first()
            if state is None or not state.disabled:
                enqueue_send(channel)
                woken[channel] = pending
    return woken
