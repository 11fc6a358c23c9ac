"""Schema-driven fuzzing (schemathesis, in-process over WSGI): no input makes the API answer 5xx.

Runs authenticated as a normal user and as staff, and anonymously, with a seeded platform so
that valid creates really go through the whole create transaction.
"""
from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from zlh.wsgi import application

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)

pytestmark = [pytest.mark.django_db, pytest.mark.fuzz]


@pytest.fixture
def fuzz_users(platform, alice, staff):
    # Calls go through the raw WSGI handler, which would close the test's open transaction at
    # the end of every request; Django's own test client disconnects this handler the same way.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield {"alice": alice, "staff": staff}
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_causes_a_server_error(case, fuzz_users):
    for who in ("alice", "staff", None):
        headers = fuzz_users[who].http_headers if who else {}
        response = case.call(headers=headers)
        case.validate_response(response, checks=[not_a_server_error], headers=headers)
