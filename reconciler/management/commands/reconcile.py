"""Run the reconciler: `manage.py reconcile [--once] [--dry-run] [--interval 60]`.

Without --once it loops (one cycle per interval) until interrupted; the beat schedule runs the
same cycle every 60 s, and the lease makes sure only one acts at a time.
"""
from __future__ import annotations

import json
import time

from django.core.management.base import BaseCommand

from reconciler.services import run_cycle


class Command(BaseCommand):
    help = "Reconcile once (--once) or in a loop; --dry-run proposes repairs without making them."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true")
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument("--interval", type=float, default=60.0)
        parser.add_argument("--cycles", type=int, default=0, help="stop after N cycles (0: never)")

    def handle(self, *args, once, dry_run, interval, cycles, **options):
        done = 0
        while True:
            summary = run_cycle(dry_run=dry_run or None)
            self.stdout.write(json.dumps(summary, default=str))
            done += 1
            if once or (cycles and done >= cycles):
                return
            time.sleep(max(1.0, interval))
