"""Set an account's limits: `manage.py setquota USERNAME --max-servers N [--max-memory-mb M]`."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from lifecycle.services.accounts import quota_set, quota_usage
from lifecycle.services.audit import Actor


class Command(BaseCommand):
    help = "Set the maximum number of servers and total memory of an account."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--max-servers", type=int)
        parser.add_argument("--max-memory-mb", type=int)

    def handle(self, *args, username, max_servers, max_memory_mb, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        for flag, value in (("--max-servers", max_servers), ("--max-memory-mb", max_memory_mb)):
            if value is not None and value < 0:
                raise CommandError(f"{flag} must be 0 or more.")
        quota = quota_set(user=user, max_servers=max_servers, max_memory_mb=max_memory_mb,
                          actor=Actor.system("manage.py setquota"))
        used = quota_usage(user_id=user.pk)
        self.stdout.write(
            f"{username}: {used.servers}/{quota.max_servers} servers, "
            f"{used.memory_mb}/{quota.max_memory_mb} MB"
        )
