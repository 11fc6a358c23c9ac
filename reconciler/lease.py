"""The singleton: a Redis lease for mutual exclusion plus a fencing epoch in MariaDB.

Acquiring = `SET NX PX` with a random token, then bumping the epoch in the database. The lease is
renewed (token-checked, Lua) at every step and released by token. Every write the reconciler
makes runs inside `fenced(epoch)`: a conditional UPDATE of the lease row that matches only the
current epoch. A controller whose lease expired (paused, partitioned, Redis wiped) and was taken
over holds an older epoch, so its writes are refused by the database, not by its own judgement.
"""
from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now

from .models import ControllerLease

NAME = "reconciler"
KEY = "zlh:reconciler:lease"

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LeaseLost(Exception):
    """The lease expired or was taken over; stop acting."""


class FencedOut(Exception):
    """A write carried an epoch older than the current one and was refused."""


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
                                socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT)


@dataclass
class Lease:
    token: str
    epoch: int
    client: redis.Redis

    @property
    def ttl_ms(self) -> int:
        return int(settings.RECONCILER_LEASE_SECONDS * 1000)

    def renew(self) -> None:
        """Extend the Redis lease and check the epoch is still ours; LeaseLost otherwise."""
        try:
            renewed = self.client.eval(_RENEW, 1, KEY, self.token, self.ttl_ms)
        except redis.RedisError as exc:
            raise LeaseLost(f"redis: {exc.__class__.__name__}") from exc
        if not renewed:
            raise LeaseLost("the Redis lease is gone or held by someone else")
        if current_epoch() != self.epoch:
            raise LeaseLost(f"epoch {self.epoch} superseded")

    def release(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client.eval(_RELEASE, 1, KEY, self.token)


def holder_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(holder: str | None = None) -> Lease | None:
    """Take the lease without waiting; None if another controller holds it (or Redis is down:
    no lease, no cycle — the database stays untouched)."""
    client = _redis()
    token = holder or holder_identity()
    try:
        if not client.set(KEY, token, nx=True, px=int(settings.RECONCILER_LEASE_SECONDS * 1000)):
            return None
    except redis.RedisError:
        return None
    with transaction.atomic():
        ControllerLease.objects.get_or_create(name=NAME)
        row = ControllerLease.objects.select_for_update().get(name=NAME)
        row.epoch += 1
        row.holder = token[:128]
        row.save(update_fields=["epoch", "holder"])
        ControllerLease.objects.filter(name=NAME).update(acquired_at=Now())
    return Lease(token=token, epoch=row.epoch, client=client)


def current_epoch() -> int:
    return ControllerLease.objects.filter(name=NAME).values_list("epoch", flat=True).first() or 0


@contextlib.contextmanager
def fenced(epoch: int) -> Iterator[None]:
    """A transaction whose writes count only if `epoch` is still current: the conditional
    UPDATE below matches no row for an older epoch (FencedOut, everything rolled back), and it
    keeps the lease row locked until commit, so no newer controller starts in between."""
    with transaction.atomic():
        if ControllerLease.objects.filter(name=NAME, epoch=epoch).update(last_write_at=Now()) != 1:
            raise FencedOut(f"epoch {epoch} is no longer current")
        yield
