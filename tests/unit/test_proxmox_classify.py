"""lifecycle.clients.proxmox: PVE's error messages and status codes turned into (kind,
retryable), and PVE's tag strings parsed."""
from __future__ import annotations

import pytest

from lifecycle.clients import proxmox
from lifecycle.clients.proxmox import classify_message, parse_tags

# Messages as PVE writes them, one per row of the classification table.
REAL_MESSAGES = [
    ("Configuration file 'nodes/pve1/lxc/5000.conf' does not exist", "not_found", False),
    ("CT 5000 already exists on node 'pve1'", "already_exists", False),
    ("can't lock file '/run/lock/lxc/pve-config-5000.lock' - got timeout", "lock_timeout", True),
    ("CT is locked (create)", "locked", True),
    ("CT 5000 already running", "already_running", False),
    ("CT 5000 not running", "not_running", False),
    ("cluster not ready - no quorum?", "unavailable", True),
    ("command 'lxc-stop' failed: container did not stop", "shutdown_timeout", True),
]


def test_the_table_has_the_rows_these_tests_know():
    """A new row needs a test here (and a decision on retryable)."""
    assert [(kind, retryable) for _, kind, retryable in proxmox._CLASSIFY] == [
        (kind, retryable) for _, kind, retryable in REAL_MESSAGES]


@pytest.mark.parametrize("message,kind,retryable", REAL_MESSAGES)
def test_real_messages(message, kind, retryable):
    assert classify_message(message) == (kind, retryable)
    # The message decides, whatever the status code PVE sent with it.
    assert classify_message(message, 500) == (kind, retryable)
    assert classify_message(message, 400) == (kind, retryable)


@pytest.mark.parametrize("needle,kind,retryable", proxmox._CLASSIFY)
def test_each_row_matches_its_needle_case_insensitively(needle, kind, retryable):
    assert classify_message(f"500 Internal Error: {needle.upper()}!", 500) == (kind, retryable)


def test_first_match_wins():
    # Both "got timeout" and "is locked": the lock timeout row comes first.
    assert classify_message("CT is locked (backup) - got timeout") == ("lock_timeout", True)
    # "does not exist" outranks everything after it.
    assert classify_message("CT 5000 does not exist, not running") == ("not_found", False)


@pytest.mark.parametrize("status,expected", [
    (401, ("auth", False)),
    (403, ("forbidden", False)),
    (400, ("bad_request", False)),
    (500, ("unavailable", True)),
    (502, ("unavailable", True)),
    (503, ("unavailable", True)),
    (595, ("unavailable", True)),
    (404, ("error", False)),
    (409, ("error", False)),
    (None, ("error", False)),
])
def test_status_code_fallbacks(status, expected):
    assert classify_message("something PVE did not explain", status) == expected


def test_an_empty_message_falls_back_to_the_status():
    assert classify_message("", 503) == ("unavailable", True)
    assert classify_message("") == ("error", False)


@pytest.mark.parametrize("tags,expected", [
    (None, set()),
    ("", set()),
    (";;", set()),
    ("zlh", {"zlh"}),
    ("zlh;zlh-abc", {"zlh", "zlh-abc"}),
    ("ZLH;Zlh-ABC", {"zlh", "zlh-abc"}),
    ("zlh,zlh-abc", {"zlh", "zlh-abc"}),
    ("zlh zlh-abc", {"zlh", "zlh-abc"}),
    (" zlh ; web,prod  db ", {"zlh", "web", "prod", "db"}),
    ("zlh;zlh;ZLH", {"zlh"}),
])
def test_parse_tags(tags, expected):
    assert parse_tags(tags) == expected
