"""`manage.py doctor [--json]`: the control plane's consistency report (read-only).

Exit 0 when nothing is wrong, 1 when something is (each problem on a line, grouped by check;
`--json` prints the report as one JSON object). See `reconciler/doctor.py` for the checks.
"""
from __future__ import annotations

import json as jsonlib
import sys

from django.core.management.base import BaseCommand

from reconciler.doctor import doctor_report


class Command(BaseCommand):
    help = "Check the database's own consistency (read-only); exit 1 if anything is wrong."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="the report as JSON")

    def handle(self, *args, json: bool = False, **options):  # noqa: A002 - the option's name
        report = doctor_report()
        if json:
            self.stdout.write(_dumps(report))
        else:
            self._human(report)
        if not report["ok"]:
            sys.exit(1)

    def _human(self, report: dict) -> None:
        if report["ok"]:
            self.stdout.write(f"doctor: nothing wrong ({report['checked_at']} UTC)")
            return
        self.stdout.write(f"doctor: {len(report['problems'])} problems "
                          f"({report['checked_at']} UTC)")
        current = None
        for p in report["problems"]:
            if p["check"] != current:
                current = p["check"]
                self.stdout.write(f"\n{current} ({report['counts'][current]}):")
            self.stdout.write(f"  - {p['subject']}: {p['detail']}")


def _dumps(report: dict) -> str:
    return jsonlib.dumps(report, sort_keys=True)
