"""Issue or revoke portal API tokens: `manage.py apitoken USERNAME --create [--staff]`.

The token is printed as the last line of output and never stored in clear.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from lifecycle.models import ApiToken
from lifecycle.services.accounts import api_token_create, api_token_revoke
from lifecycle.services.audit import Actor


class Command(BaseCommand):
    help = "Issue (--create), list or revoke (--revoke PREFIX) API tokens of a user."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--create", action="store_true", help="issue a new token")
        parser.add_argument("--staff", action="store_true", help="make the user staff")
        parser.add_argument("--name", default="default", help="a label for the token")
        parser.add_argument("--revoke", metavar="PREFIX", help="revoke the token with this prefix")

    def handle(self, *args, username, create, staff, name, revoke, **options):
        actor = Actor.system("manage.py apitoken")
        if create:
            token, raw = api_token_create(username=username, staff=staff, name=name, actor=actor)
            self.stderr.write(f"Issued token {token.prefix}… for {username}"
                              f"{' (staff)' if token.user.is_staff else ''}. It is shown once:")
            self.stdout.write(raw)
            return
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}; use --create to make one.")
        if revoke:
            token = ApiToken.objects.filter(user=user, prefix=revoke, revoked_at__isnull=True).first()
            if token is None:
                raise CommandError(f"{username} has no live token with prefix {revoke!r}.")
            api_token_revoke(token=token, actor=actor)
            self.stdout.write(f"Revoked {revoke}…")
            return
        for token in ApiToken.objects.filter(user=user):
            state = "revoked" if token.revoked_at else "live"
            self.stdout.write(f"{token.prefix}…  {token.name}  {state}  created {token.created_at:%Y-%m-%d}"
                              f"  last used {token.last_used_at or 'never'}")
