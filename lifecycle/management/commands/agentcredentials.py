"""Agent credentials at rest: `manage.py agentcredentials --reencrypt`.

After a new key was put in front of AGENT_CREDENTIAL_KEYS (the old one kept behind it), this
re-encrypts every stored agent secret with the new key; the old key can then be removed.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from lifecycle.models import AgentCredential
from lifecycle.services.agent_credentials import CredentialUnreadable, agent_credentials_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt every agent secret with the first key of AGENT_CREDENTIAL_KEYS."

    def add_arguments(self, parser):
        parser.add_argument("--reencrypt", action="store_true",
                            help="re-encrypt every stored secret with the first key")

    def handle(self, *args, reencrypt, **options):
        if not reencrypt:
            legacy = AgentCredential.objects.filter(legacy_since__isnull=False).count()
            self.stdout.write(f"{AgentCredential.objects.count()} agent credentials, "
                              f"{legacy} on the legacy token. --reencrypt to re-encrypt them.")
            return
        try:
            done = agent_credentials_reencrypt()
        except CredentialUnreadable as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{done} agent credentials re-encrypted with the first key.")
