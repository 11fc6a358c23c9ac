"""Celery tasks of the notifications app (queue `notify`)."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="notifications.send_channel", ignore_result=True)
def send_channel(channel: str) -> dict:
    from .services import channel_send

    return channel_send(channel)


@shared_task(name="notifications.flush", ignore_result=True)
def flush() -> dict:
    from .services import notifications_flush

    return notifications_flush()
