"""One clock for every deadline: the database's.

Leases, backoffs, purge windows and quarantines are written by one process and compared by
another, often in SQL. Django's `Now()` is the database server's clock; `timezone.now()` is the
clock of whichever host runs the code, and hosts drift. So every deadline that is compared in
SQL, or compared with a value the database wrote, is written and read with the database clock:

- writes: `db_after(seconds)` (an SQL expression, `Now() + interval`), or `Now()` itself;
- SQL comparisons: `Now()` or `db_before(seconds)`;
- a comparison in Python with a stored deadline: `db_now()` (one `SELECT UTC_TIMESTAMP(6)`).

Every connection pins its session time zone to UTC (`init_command` in settings), so `Now()` is
UTC whatever the server's global time zone is, the same zone Django stores datetimes in.
Timestamps nobody compares across hosts (audit times, `auto_now` fields) stay on the app clock.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.db import connection
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.functions import Now


def db_now() -> datetime:
    """The database's current time (UTC, aware)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT UTC_TIMESTAMP(6)")
        value = cursor.fetchone()[0]
    return value.replace(tzinfo=dt_timezone.utc)


def db_after(seconds: float) -> ExpressionWrapper:
    """`Now() + seconds`, computed by the database (for writing a deadline)."""
    return ExpressionWrapper(Now() + timedelta(seconds=seconds), output_field=DateTimeField())


def db_before(seconds: float) -> ExpressionWrapper:
    """`Now() - seconds`, computed by the database (for comparing with a stored time)."""
    return ExpressionWrapper(Now() - timedelta(seconds=seconds), output_field=DateTimeField())
