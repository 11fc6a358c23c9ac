"""The operator panel in a real browser: Debian's headless Chromium through chromium-driver
(Selenium), against a live server, real workers and the devstack. Screenshots go to
artifacts/screenshots/."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from reconciler.models import Breaker
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromium-driver are required: run deploy/test-deps.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(driver, name):
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def badge_of(driver, slug):
    from selenium.webdriver.common.by import By

    row = driver.find_element(By.XPATH, f"//tr[.//a[text()='{slug}']]")
    return row.find_element(By.CSS_SELECTOR, "td.field-status_badge .zlh-badge").text


def run_action(driver, base, slug, action):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(f"{base}/admin/lifecycle/containerinstance/?q={slug}")
    row = driver.find_element(By.XPATH, f"//tr[.//a[text()='{slug}']]")
    row.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(driver.find_element(By.NAME, "action")).select_by_value(action)
    driver.find_element(By.NAME, "index").click()
    # The click returns before the next page has loaded on a busy machine: wait (bounded).
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    messages = WebDriverWait(driver, 20).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    assert "Requested:" in messages.text


def wait_badge(driver, base, slug, state, name):
    def check():
        driver.get(f"{base}/admin/lifecycle/containerinstance/?q={slug}")
        return badge_of(driver, slug) == state

    wait_until(check, timeout=60, interval=0.5, what=f"{slug} to show {state}")
    shot(driver, name)


def test_operator_steers_a_server_and_resets_a_breaker(live_server, browser, stack, worker,
                                                        owner):
    from selenium.webdriver.common.by import By

    from tests.reconciler.helpers import running

    inst = running(owner, "browsed")
    running(owner, "bystander")
    get_user_model().objects.create_user("operator", password="op-pass-7531", is_staff=True,
                                         is_superuser=True)
    Breaker.objects.create(action="velocity_register", state="open", consecutive_failures=3,
                           last_failure="HTTP 500 from the bridge")
    base = live_server.url
    d = browser

    d.get(f"{base}/admin/login/?next=/admin/")
    d.find_element(By.NAME, "username").send_keys("operator")
    d.find_element(By.NAME, "password").send_keys("op-pass-7531")
    d.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    assert "ZeroLagHub operator panel" in d.page_source
    shot(d, "01-index")

    d.get(f"{base}/admin/lifecycle/containerinstance/")
    d.find_element(By.XPATH, "//details[@data-filter-title='status']//a[text()='Running']").click()
    assert "status__exact=running" in d.current_url
    search = d.find_element(By.ID, "searchbar")
    search.send_keys("browsed")
    search.submit()
    rows = d.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 1 and "browsed" in rows[0].text and "bystander" not in d.page_source
    shot(d, "02-filtered-list")

    d.find_element(By.LINK_TEXT, "browsed").click()
    page = d.page_source
    assert str(inst.vmid) in page and "provision" in page and "server:create" in page
    shot(d, "03-server-detail")

    run_action(d, base, "browsed", "stop")
    wait_badge(d, base, "browsed", "stopped", "04-stopped")
    run_action(d, base, "browsed", "start")
    wait_badge(d, base, "browsed", "running", "05-running-again")

    d.get(f"{base}/admin/")
    d.find_element(By.ID, "dashboard-link").click()
    assert "Reconciler dashboard" in d.title or "Reconciler" in d.page_source
    state = d.find_element(By.CSS_SELECTOR, "tr[data-action=velocity_register] .breaker-state")
    assert state.text == "open"
    shot(d, "06-dashboard-breaker-open")
    d.find_element(By.ID, "reset-velocity_register").click()
    time.sleep(0.2)
    assert "Breaker for velocity_register reset" in d.page_source
    state = d.find_element(By.CSS_SELECTOR, "tr[data-action=velocity_register] .breaker-state")
    assert state.text == "closed"
    shot(d, "07-dashboard-breaker-reset")
    assert Breaker.objects.get().state == "closed"
    for name in ("01-index", "04-stopped", "07-dashboard-breaker-reset"):
        assert (SHOTS / f"{name}.png").stat().st_size > 5000
