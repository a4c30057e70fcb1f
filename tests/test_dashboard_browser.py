"""The dashboard in a real browser: Debian's headless Chromium driven through Selenium with the
system chromedriver (nothing downloaded), against the database the sandbox demo filled, the
dashboard on 127.0.0.1. The browser's proxy is a closed loopback port, so a page that tried to
load anything from elsewhere would fail, and its console error would fail the test.

Set SQLBRIDGE_DASHBOARD_SCREENSHOTS=DIR to also write the screenshots in docs/dashboard/."""

# ruff: noqa: F811 - the fixtures board, demo_db and filled come from test_dashboard.py
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from sqlbridge.dashboard.server import Dashboard
from sqlbridge.db import make_engine
from sqlbridge.schema import operator_action
from tests.test_dashboard import (  # noqa: F401 - fixtures used by name
    PAGED,
    PAGES,
    SECRETS,
    Filled,
    board,
    demo_db,
    filled,
    status_of,
)

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ZONE = "America/Sao_Paulo"  # the browser's zone: UTC-3, so converted times differ from UTC
WAIT = 30


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: apt-get install {pkg} (scripts/test does when root)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", "--lang=en-US",
                # Everything not on loopback goes to a closed port: no request leaves.
                "--proxy-server=http://127.0.0.1:9"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, env={**os.environ, "TZ": ZONE})
    try:
        driver = webdriver.Chrome(service=service, options=opts)
    except Exception as exc:  # a browser that cannot start here is an environment problem
        pytest.skip(f"headless chromium did not start: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: Any, board: Dashboard) -> Iterator[Any]:
    """The browser with a fresh session on this test's dashboard."""
    browser.get(board.url + "actions")
    browser.delete_all_cookies()
    browser.get_log("browser")  # drop what earlier tests left
    yield browser


def errors(browser: Any) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def by_css(browser: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, css)


def row_ids(browser: Any) -> list[int]:
    return [int(r.get_attribute("data-id")) for r in by_css(browser, "tr[data-id]")]


def follow(browser: Any, element: Any) -> None:
    """Click a link or submit button and wait until the next page has loaded: click() returns
    before the navigation it starts has finished."""
    browser.execute_script("window.__before = true;")
    element.click()
    wait_for_new_page(browser)


def wait_for_new_page(browser: Any) -> None:
    """Until the page marked with ``window.__before`` is gone and its successor loaded (a new
    page has a new window object). Questions asked mid-navigation may fail: ask again."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(d: Any) -> bool:
        try:
            return bool(d.execute_script(
                "return window.__before === undefined && document.readyState === 'complete'"))
        except WebDriverException:
            return False

    WebDriverWait(browser, WAIT).until(loaded)


def flash(browser: Any) -> str:
    return " ".join(e.text for e in by_css(browser, ".flash"))


def test_every_page_renders_without_console_errors_with_times_in_the_browser_zone(
        page: Any, board: Dashboard, filled: Filled) -> None:
    paths = PAGES + [f"requests/{i}" for i in (filled.uncertain_id, filled.failed_id,
                                               filled.leaked_id, filled.sync_root_id, 1)]
    for path in paths:
        page.get(board.url + path)
        assert by_css(page, "main h1"), path
        assert errors(page) == [], path
        source = page.page_source
        for secret in SECRETS:
            assert secret not in source, (path, secret)
    assert page.execute_script(
        "return Intl.DateTimeFormat().resolvedOptions().timeZone") == ZONE
    page.get(board.url + f"requests/{filled.failed_id}")
    times = by_css(page, "time[datetime]")
    assert times
    for t in times:
        utc_text = t.get_attribute("title")
        assert utc_text.endswith(" UTC") and t.text != utc_text  # converted in the browser
        expected = page.execute_script(
            "return new Date(arguments[0]).toLocaleString()", t.get_attribute("datetime"))
        assert t.text == expected


def test_filters_and_paging_work_and_live_in_the_url(page: Any, board: Dashboard) -> None:
    from selenium.webdriver.support.ui import Select

    page.get(board.url + "requests")
    page.find_element("id", "f-correlation").send_keys("dash-page")
    Select(page.find_element("name", "per")).select_by_visible_text("20")
    follow(page, page.find_element("id", "apply-filters"))
    assert "correlation=dash-page" in page.current_url and "per=20" in page.current_url
    seen = row_ids(page)
    assert len(seen) == 20
    for expected in (20, PAGED - 40):
        follow(page, page.find_element("id", "next"))
        assert f"page={len(seen) // 20 + 1}" in page.current_url
        ids = row_ids(page)
        assert len(ids) == expected and not set(ids) & set(seen)
        seen += ids
    assert not by_css(page, "#next") and page.find_element("id", "total").text.startswith(
        f"{PAGED} matching")
    # the shared URL shows the same page to someone else
    page.delete_all_cookies()
    page.get(page.current_url)
    assert row_ids(page) == seen[40:]
    page.get(board.url + "failures")
    Select(page.find_element("id", "f-status")).select_by_visible_text("uncertain")
    follow(page, page.find_element("id", "apply-filters"))
    assert "status=uncertain" in page.current_url and len(row_ids(page)) == 1
    assert errors(page) == []


def test_retry_and_cancel_buttons_change_the_row(page: Any, board: Dashboard,
                                                filled: Filled) -> None:
    page.get(board.url + "failures?status=uncertain")
    follow(page, page.find_element("css selector",
                                   f'tr[data-id="{filled.uncertain_id}"] button.retry'))
    assert "retry done" in flash(page)
    assert page.find_element("id", "status").text == "queued"
    assert status_of(filled, filled.uncertain_id) == "queued"
    follow(page, page.find_element("id", "cancel"))
    assert "cancel done" in flash(page)
    assert status_of(filled, filled.uncertain_id) == "cancelled"
    assert page.find_element("id", "status").text == "cancelled"
    assert errors(page) == []


def test_bulk_cancel_from_the_filtered_list(page: Any, board: Dashboard, filled: Filled) -> None:
    page.get(board.url + "requests?correlation=dash-page")
    follow(page, page.find_element("id", "bulk-cancel"))
    assert f"{PAGED} requests can be cancelled" in page.find_element("id", "bulk-count").text
    follow(page, page.find_element("id", "bulk-confirm"))
    assert f"cancel: {PAGED} requests changed" in flash(page)
    assert "correlation=dash-page" in page.current_url
    assert {e.text for e in by_css(page, "td.status")} == {"cancelled"}
    engine = make_engine(filled.url)
    with engine.connect() as conn:
        row = conn.execute(select(operator_action).order_by(operator_action.c.id.desc())).first()
    engine.dispose()
    assert row is not None and (row.action, row.via, row.matched) == ("cancel", "dashboard",
                                                                      PAGED)
    assert errors(page) == []


def test_a_form_without_its_csrf_token_is_refused(page: Any, board: Dashboard,
                                                  filled: Filled) -> None:
    page.get(board.url + f"requests/{filled.uncertain_id}")
    page.execute_script("document.querySelectorAll('input[name=csrf]')"
                        ".forEach(function (e) { e.remove(); });")
    follow(page, page.find_element("id", "retry"))
    assert page.find_element("css selector", "main h1").text == "403"
    assert "CSRF" in page.find_element("id", "error").text
    assert status_of(filled, filled.uncertain_id) == "uncertain"


@pytest.mark.parametrize("board", [{"read_only": True}], indirect=True)
def test_read_only_hides_and_refuses_actions(page: Any, board: Dashboard,
                                             filled: Filled) -> None:
    for path in ("requests", "failures", f"requests/{filled.uncertain_id}", "schedules"):
        page.get(board.url + path)
        assert by_css(page, "form[method=post]") == [] and by_css(page, "#read-only"), path
        assert not by_css(page, "#bulk-retry, #bulk-cancel, button:not(#apply-filters)")
    # a hand-made form with the session's own token is still refused
    page.execute_script("window.__before = true;")
    page.execute_script("""
        var f = document.createElement('form'); f.method = 'post';
        f.action = '/requests/' + arguments[0] + '/retry';
        var i = document.createElement('input'); i.name = 'csrf';
        i.value = document.querySelector('meta[name=csrf-token]').content;
        f.appendChild(i); document.body.appendChild(f); f.submit();""", filled.uncertain_id)
    wait_for_new_page(page)
    assert page.find_element("css selector", "main h1").text == "403"
    assert "read-only" in page.find_element("id", "error").text
    assert status_of(filled, filled.uncertain_id) == "uncertain"


@pytest.mark.parametrize("board", [{"password": "s3cret-dashboard"}], indirect=True)
def test_login_page_and_an_httponly_samesite_strict_session_cookie(page: Any,
                                                                   board: Dashboard) -> None:
    page.get(board.url + "failures")
    assert "/login" in page.current_url
    page.find_element("name", "password").send_keys("s3cret-dashboard")
    follow(page, page.find_element("id", "login"))
    assert page.current_url.endswith("/failures")
    cookie = next(c for c in page.get_cookies() if c["name"] == "sqlbridge_dashboard")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.execute_script("return document.cookie") == ""  # script cannot read it
    assert "s3cret-dashboard" not in page.page_source
    assert errors(page) == []


def test_screenshots_for_the_docs(page: Any, board: Dashboard, filled: Filled) -> None:
    out = os.environ.get("SQLBRIDGE_DASHBOARD_SCREENSHOTS")
    if not out:
        pytest.skip("SQLBRIDGE_DASHBOARD_SCREENSHOTS not set (it writes docs/dashboard/*.png)")
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    shots = {"overview": "", "requests": "requests?per=20", "failures": "failures",
             "request": f"requests/{filled.sync_root_id}", "schedules": "schedules",
             "conversations": "conversations/chat/1", "anna": "anna"}
    page.set_window_size(1200, 900)
    for name, path in shots.items():
        page.get(board.url + path)
        tmp = target / f"{name}.tmp.png"
        page.save_screenshot(str(tmp))
        shutil.move(tmp, target / f"{name}.png")
    page.set_window_size(1280, 900)
    assert all((target / f"{n}.png").stat().st_size > 1000 for n in shots)
