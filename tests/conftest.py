"""Shared fixtures: a clean test Redis, a seeded platform, API users, the devstack."""
from __future__ import annotations

pytest_plugins = ["tests.support.stack"]

import pytest
from rest_framework.test import APIClient

from tests.support import broker
from tests.support.devstack import Devstack
from tests.support.platform import make_user, seed_platform


def pytest_addoption(parser):
    parser.addoption(
        "--update-query-counts", action="store_true", default=False,
        help="tests/test_query_counts.py: rewrite the baselines in tests/query_counts/*.json "
             "with the query counts measured now instead of comparing against them",
    )


@pytest.fixture(autouse=True)
def clean_redis():
    """Every test starts with an empty broker/cache database (a Redis db of the tests' own)."""
    broker.flush()
    yield


@pytest.fixture
def platform(db):
    return seed_platform()


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def staff(db):
    return make_user("operator", staff=True)


@pytest.fixture(scope="session")
def devstack(tmp_path_factory):
    """The devstack as a real process (fakepve, agents, Cloudflare, Technitium, Velocity)."""
    ds = Devstack(tmp_path_factory.mktemp("devstack"))
    yield ds
    ds.stop()
