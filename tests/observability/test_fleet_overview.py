"""The panel's Fleet overview: servers by status, node capacity, operations in flight and
failed, reconciler cycles and findings over the last day, as server-rendered SVG whose every bar
links to the filtered list behind it; a fixed number of queries at any fleet size (pinned at
5,000 servers), staff with the view permission only; and in headless Chromium (screenshot in
artifacts/screenshots/fleet-overview.png)."""
from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from lifecycle.choices import OperationKind, OperationState
from lifecycle.models import ContainerInstance
from reconciler.models import ControllerRun
from tests.admin.test_admin_permissions import _staff
from tests.admin.test_browser import browser, shot
from tests.factories import ControllerRunFactory, FindingFactory, OperationFactory
from tests.support.platform import bulk_servers

__all__ = ("browser",)  # the headless-Chromium fixture, used here too
URL = "/admin/fleet/"
#: The page's queries (session and user included), whatever the fleet's size.
QUERIES = 14


STATUSES = ["running"] * 7 + ["stopped", "failed", "provisioning"]


def seed_fleet(n: int, owner, *, start: int = 0) -> list[ContainerInstance]:
    return bulk_servers(owner, n, start=start, prefix="f", vmid_base=200000, port_base=40000,
                        status=lambda i: STATUSES[i % len(STATUSES)])


def seed_history(servers) -> None:
    now = timezone.now()
    for server in servers[:3]:
        OperationFactory(instance=server, kind=OperationKind.RESTART,
                         state=OperationState.RUNNING)
    for server in servers[3:5]:
        OperationFactory(instance=server, kind=OperationKind.PROVISION,
                         state=OperationState.FAILED, finished_at=now)
    for minutes, seconds in ((600, 2.5), (300, 75.0), (5, 4.0)):
        run = ControllerRunFactory()
        started = now - timedelta(minutes=minutes)
        ControllerRun.objects.filter(pk=run.pk).update(
            started_at=started, finished_at=started + timedelta(seconds=seconds))
    FindingFactory.create_batch(2, instance=servers[5])


@pytest.fixture
def operator(db):
    return _staff("watcher", "view_")


@pytest.mark.django_db
def test_the_overview_shows_the_fleet_and_links_each_figure(operator, platform, alice):
    servers = seed_fleet(50, alice.user)
    seed_history(servers)
    resp = operator.get(URL)
    assert resp.status_code == 200
    html = resp.content.decode()
    assert html.count("<svg") >= 7
    # Servers by status: 50 in all, 35 running, each bar linking to its filtered list.
    assert re.search(r'Servers by status <span class="zlh-big">50</span>', html)
    assert '/admin/lifecycle/containerinstance/?status__exact=running' in html
    assert re.search(r">Running</text>.*?>35</text>", html, re.S)
    # Node capacity: memory, IPs and ports of both nodes.
    for node in ("pve1", "pve2"):
        assert f'data-node="{node}"' in html
    assert "of 4,000,000 MB" in html
    # Operations: 3 restarts running, 2 provisions failed today.
    assert "kind__exact=restart&amp;state__exact=running" in html
    assert re.search(r'Failed in the last 24 h <span class="zlh-big">2</span>', html)
    # Cycles: a 75 s one is red (longer than the interval); findings first seen.
    assert "<title>" in html and "75.0 s" in html and "#c62828" in html
    assert "/admin/reconciler/finding/?open__exact=1&amp;finding_type__exact=status_drift" in html
    # Every link on the charts opens a list.
    links = set(re.findall(r'<a href="(/admin/[^"]+)">', html))
    assert len(links) >= 8
    for link in links:
        assert operator.get(unescape(link)).status_code == 200, link
    # The panel's index leads here.
    assert 'id="fleet-link"' in operator.get("/admin/").content.decode()


@pytest.mark.django_db
def test_only_staff_with_the_view_permission_see_it(alice):
    bare = get_user_model().objects.create_user("bare", password="pw-123456789", is_staff=True)
    client = Client()
    client.force_login(bare)
    assert client.get(URL).status_code == 403
    client.force_login(alice.user)
    resp = client.get(URL)
    assert resp.status_code == 302 and "/admin/login/" in resp["Location"]
    assert Client().get(URL).status_code == 302


@pytest.mark.django_db
def test_the_overview_costs_the_same_queries_at_5000_servers(operator, platform, alice):
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert operator.get(URL).status_code == 200
        return len(ctx.captured_queries)

    seed_history(seed_fleet(20, alice.user))
    small = queries()
    seed_fleet(4980, alice.user, start=20)
    assert ContainerInstance.objects.count() == 5000
    assert queries() == small == QUERIES


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_overview_in_a_real_browser(live_server, platform, alice, browser):
    from selenium.webdriver.common.by import By

    seed_history(seed_fleet(5000, alice.user))
    get_user_model().objects.create_superuser("chief", password="chief-pass-123")
    browser.get(f"{live_server.url}/admin/login/?next={URL}")
    browser.find_element(By.NAME, "username").send_keys("chief")
    browser.find_element(By.NAME, "password").send_keys("chief-pass-123")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    assert browser.find_element(By.ID, "fleet-servers").is_displayed()
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.zlh-chart")
    assert len(charts) >= 7 and all(c.size["width"] > 100 for c in charts)
    assert "5000" in browser.find_element(By.ID, "fleet-servers").text
    shot(browser, "fleet-overview")
    # Clicking the running bar opens the servers that are running.
    browser.find_element(By.CSS_SELECTOR,
                         '#fleet-servers a[href*="status__exact=running"]').click()
    assert "status__exact=running" in browser.current_url
    assert "Select container instance" in browser.page_source or \
        "containerinstance" in browser.current_url
