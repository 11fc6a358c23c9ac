"""`manage.py after_restore`: run once on a database restored from a dump, before any worker
or beat is started on it. Cancels every operation the dump left active (they must not run now:
the world moved on since the dump) and says what to do next. Idempotent. See
`lifecycle/services/snapshot.py` and the runbook in docs/operations.md."""
from __future__ import annotations

from django.core.management.base import BaseCommand

from lifecycle.services.audit import Actor
from lifecycle.services.snapshot import operations_fence_restored


class Command(BaseCommand):
    help = "After restoring the database from a dump: cancel the operations it left active."

    def handle(self, *args, **options):
        result = operations_fence_restored(actor=Actor.system("manage.py after_restore"))
        for line in result["cancelled"]:
            self.stdout.write(f"  cancelled: {line}")
        self.stdout.write(
            f"after_restore: {len(result['cancelled'])} operations from the dump cancelled. "
            "Next: start the workers and beat, run `manage.py reconcile` and `manage.py "
            "doctor`; re-adopt the containers the dump does not know with `manage.py adopt "
            "--apply` (they are listed as unknown_container).")
