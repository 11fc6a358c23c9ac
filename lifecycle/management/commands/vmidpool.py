"""Fill the cluster-wide VMID pool: `manage.py vmidpool --range 5000-5999` (idempotent)."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from lifecycle.services.allocations import vmid_pool_ensure


class Command(BaseCommand):
    help = "Make sure the VMID pool holds the given range (existing values are kept)."

    def add_arguments(self, parser):
        parser.add_argument("--range", required=True, help="e.g. 5000-5999")

    def handle(self, *args, range, **options):  # noqa: A002 - the option is called --range
        try:
            start, end = (int(v) for v in range.split("-", 1))
            _, added = vmid_pool_ensure(start=start, end=end)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"VMID pool {start}-{end}: {added} values added")
