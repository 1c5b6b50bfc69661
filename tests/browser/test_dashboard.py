"""The dashboard in a real browser, on a real daemon and Redis."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import SCREENSHOTS, TOKEN, Dashboard, make_driver, page_text_when
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]

#: Seconds to wait for what a daemon and a browser do, on a loaded machine.
WAIT = 30.0


HOSTILE = [
    "<script>document.title='owned'</script>",
    '"><img src=x onerror="document.title=\'owned\'">',
    "javascript:document.title='owned'",
    "bidi\u202eflip\u0007bell\u200bzero",
]


def click(driver: WebDriver, xpath: str, within: str = "//main") -> None:
    """
    Click a button, found again if the page's refresh replaced it between
    finding and clicking (as a person would click again).
    """

    def clicked() -> bool:
        try:
            driver.find_element(By.XPATH, within + xpath).click()
        except WebDriverException:  # a refresh replaced it
            return False
        return True

    wait_for(clicked, WAIT, 0.1, message=f"a click on {xpath}")


def log_in(driver: WebDriver, dashboard: Dashboard, token: str = TOKEN) -> None:
    driver.get(dashboard.url + "login")
    driver.find_element(By.NAME, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.login-form button").click()
    page_text_when(driver, lambda text: "Log out" in text or "Wrong token." in text)


def row(driver: WebDriver, task_type: str) -> list[str]:
    """The figures of a type's row on the overview (read again if a refresh replaced it)."""

    def read() -> list[str] | None:
        try:
            link = driver.find_element(By.LINK_TEXT, task_type)
            cells = link.find_element(By.XPATH, "./ancestor::tr").find_elements(By.TAG_NAME, "td")
            return [cell.text for cell in cells]
        except WebDriverException:  # a refresh replaced it
            return None

    figures: list[str] = wait_for(read, WAIT, 0.1, message=f"the row of {task_type}")
    return figures


def screenshot(driver: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # The whole page, not only the window.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, max(600, int(height) + 160))
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def nothing_ran(driver: WebDriver) -> None:
    """No hostile script ran: no alert, the title untouched, no image made."""
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        alert = None
    assert alert is None
    assert "owned" not in driver.title
    assert driver.find_elements(By.CSS_SELECTOR, "main img") == []


def test_the_overview_counts_what_was_pushed(browser: WebDriver, dashboard: Dashboard) -> None:
    g = dashboard.goophry
    for n in range(3):
        g.push_args("slow", str(n))
    g.push_args("flaky", "a")
    g.wait_failed("flaky", 1, timeout=WAIT)
    wait_for(lambda: g.llen(g.queue("slow")) == 2, WAIT, message="one slow task taken")
    browser.get(dashboard.url)
    # Queued, Running, In flight, Failed.
    assert row(browser, "slow")[:4] == ["2", "1", "1", "0"]
    assert row(browser, "flaky")[:4] == ["0", "0", "0", "1"]
    assert row(browser, "quick")[:4] == ["0", "0", "0", "0"]
    # The page refreshes itself: more pushed shows without a reload.
    for n in range(3, 7):
        g.push_args("slow", str(n))
    wait_for(lambda: row(browser, "slow")[0] == "6", WAIT, 0.2, message="the overview refreshed")
    (g.tmp_path / "release").touch()


def test_a_failed_entry_retried_with_its_button_runs_again(
    browser: WebDriver, dashboard: Dashboard
) -> None:
    g = dashboard.goophry
    g.push_args("flaky", "first")
    g.push_args("flaky", "second")
    g.wait_failed("flaky", 2, timeout=WAIT)
    log_in(browser, dashboard)
    browser.get(dashboard.url + "type/flaky")
    page_text_when(browser, lambda text: "Failed: 2" in text)
    (g.tmp_path / "pass").touch()
    click(browser, "//tr[td[contains(., 'first')]]//button[text()='Retry']")
    page_text_when(browser, lambda text: "Retried 1." in text)
    ran = g.tmp_path / "flaky.log"
    wait_for(lambda: ran.read_text().split() == ["first", "second", "first"], WAIT, message="ran")
    assert [e["Args"] for e in g.failed("flaky")] == [["second"]]


def test_pause_and_resume_from_the_page(browser: WebDriver, dashboard: Dashboard) -> None:
    g = dashboard.goophry
    paused = f"{g.key}:paused"
    log_in(browser, dashboard)
    browser.get(dashboard.url + "type/quick")
    click(browser, "//button[text()='Pause']")
    text = page_text_when(browser, lambda text: "Paused." in text)
    assert "PAUSED" in text.upper()
    assert g.redis.cli("SMEMBERS", paused) == [b"quick"]
    browser.get(dashboard.url)
    assert browser.find_elements(By.CSS_SELECTOR, "tr.paused .badge.paused")
    browser.get(dashboard.url + "type/quick")
    click(browser, "//button[text()='Resume']")
    page_text_when(browser, lambda text: "Resumed." in text)
    assert g.redis.cli("SMEMBERS", paused) == []
    browser.find_element(By.XPATH, "//button[text()='Pause']")


def test_producer_data_is_shown_as_text_and_nothing_runs(
    browser: WebDriver, dashboard: Dashboard
) -> None:
    g = dashboard.goophry
    g.push("flaky", json.dumps({"Args": HOSTILE}))
    g.push("flaky", HOSTILE[0].encode())
    g.wait_failed("flaky", 2, timeout=WAIT)
    g.redis.cli("SADD", f"{g.key}:paused", "slow")
    (g.tmp_path / "release").touch()
    g.push("slow", json.dumps({"Args": ["hold"]}))
    wait_for(lambda: g.llen(g.queue("slow")) == 0, WAIT)
    # The daemon does not pause on this branch's own: keep an entry queued by hand.
    g.redis.cli("LPUSH", g.queue("slow"), json.dumps({"Args": HOSTILE}))
    for page in ("type/flaky", "type/slow", ""):
        browser.get(dashboard.url + page)
        nothing_ran(browser)
    browser.get(dashboard.url + "type/flaky")
    text = browser.find_element(By.TAG_NAME, "main").text
    for shown in HOSTILE[:3]:
        assert json.dumps(shown)[1:-1] in text
    assert "\\u202e" in text and "\u202e" not in text
    marks = browser.find_elements(By.CSS_SELECTOR, ".ctl")
    assert {m.text for m in marks} >= {"\\u202e", "\\u200b"}
    log_in(browser, dashboard)
    browser.get(dashboard.url + "type/flaky")
    nothing_ran(browser)
    assert not any("Content Security Policy" in e["message"] for e in browser.get_log("browser"))


def test_writes_without_login_token_or_csrf_are_refused(
    browser: WebDriver, dashboard: Dashboard
) -> None:
    g = dashboard.goophry
    paused = f"{g.key}:paused"
    # Without login: no button, and a forged POST is refused.
    browser.get(dashboard.url + "type/quick")
    assert browser.find_elements(By.XPATH, "//button[text()='Pause']") == []
    assert dashboard.post("type/quick/pause")[0] == 403
    # A wrong token, at the form or as a bearer: refused after a delay.
    log_in(browser, dashboard, "not-the-token")
    assert "Wrong token." in browser.find_element(By.TAG_NAME, "main").text
    assert browser.get_cookie("goophry_session") is None
    status, took = dashboard.post("type/quick/pause", headers={"Authorization": "Bearer nope"})
    assert status == 401 and took >= 0.9
    # Logged in, but without the form's CSRF token.
    log_in(browser, dashboard)
    session = browser.get_cookie("goophry_session")
    assert session is not None and session["httpOnly"] and session["sameSite"] == "Strict"
    cookie = {"Cookie": f"goophry_session={session['value']}"}
    assert dashboard.post("type/quick/pause", headers=cookie)[0] == 403
    assert dashboard.post("type/quick/pause", "csrf=forged", headers=cookie)[0] == 403
    # A write by GET.
    browser.get(dashboard.url + "type/quick/pause")
    assert "Not allowed" in browser.title
    assert g.redis.cli("SMEMBERS", paused) == []
    # The right bearer token is enough for a script.
    status, _ = dashboard.post("type/quick/pause", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert g.redis.cli("SMEMBERS", paused) == [b"quick"]
    assert TOKEN not in dashboard.daemon.log_text()
    assert "not-the-token" not in dashboard.daemon.log_text()


def test_the_dashboard_works_with_javascript_off(
    browser_without_js: WebDriver, dashboard: Dashboard
) -> None:
    browser = browser_without_js
    g = dashboard.goophry
    g.push_args("flaky", "nojs")
    g.wait_failed("flaky", 1, timeout=WAIT)
    (g.tmp_path / "pass").touch()
    log_in(browser, dashboard)
    browser.get(dashboard.url)
    assert row(browser, "flaky")[3] == "1"
    browser.find_element(By.LINK_TEXT, "flaky").click()
    click(browser, "//button[starts-with(text(), 'Retry all')]")
    page_text_when(browser, lambda text: "Retried 1." in text)
    wait_for(lambda: (g.tmp_path / "flaky.log").read_text().split() == ["nojs", "nojs"], WAIT)
    # Purging needs its box ticked; without script the browser checks that itself.
    # Failing again before the entry is pushed: it may run at once.
    (g.tmp_path / "pass").unlink()
    g.push_args("flaky", "x")
    g.wait_failed("flaky", 1, timeout=WAIT)
    browser.get(dashboard.url + "type/flaky")
    browser.find_element(By.NAME, "confirm").click()
    click(browser, "//button[starts-with(text(), 'Purge all')]")
    page_text_when(browser, lambda text: "Purged 1." in text)
    assert g.llen(g.failed_key("flaky")) == 0


def _seed_history(dashboard: Dashboard) -> None:
    """
    An hour of per-minute counts, as daemons write them, so that the
    screenshots show what a busy hour looks like.
    """
    g = dashboard.goophry
    now = int(time.time() // 60)
    commands = []
    for ago in range(60):
        minute = now - ago
        wave = 1 + math.sin(ago / 6) + 0.3 * math.sin(ago * 1.7)
        for task_type, base in (("quick", 30), ("flaky", 8), ("slow", 2)):
            started = round(base * wave)
            failed = round(started * 0.15) if task_type == "flaky" else int(ago in (17, 18))
            key = f"{g.key}:history:{minute}"
            commands += [
                ("HINCRBY", key, f"started:{task_type}", started),
                ("HINCRBY", key, f"succeeded:{task_type}", started - failed),
                ("HINCRBY", key, f"failed:{task_type}", failed),
                ("EXPIRE", key, 3600),
            ]
    g.redis.pipeline(*commands)


def test_screenshots_of_every_page(browser: WebDriver, dashboard: Dashboard) -> None:
    g = dashboard.goophry
    _seed_history(dashboard)
    for n in range(3):
        g.push_args("slow", f"report-{n}.pdf", "--pages", str(10 * (n + 1)))
    for n in range(4):
        g.push_args("flaky", f"https://example.com/hook/{n}", "--retries=3")
    g.push("flaky", b"not json at all")
    g.wait_failed("flaky", 5, timeout=WAIT)
    wait_for(lambda: g.llen(g.queue("slow")) == 2, WAIT)
    g.redis.cli("SADD", f"{g.key}:paused", "slow")
    # What a daemon killed with SIGKILL leaves: its record, no heartbeat.
    record = {"host": "worker-2", "pid": 4242, "started": time.time() - 7200, "types": ["quick"]}
    g.redis.cli("HSET", f"{g.key}:instances", "worker-2:4242:5ca1ab1e", json.dumps(record))
    log_in(browser, dashboard)
    browser.get(dashboard.url)
    screenshot(browser, "overview")
    browser.get(dashboard.url + "type/flaky")
    screenshot(browser, "type")
    browser.get(dashboard.url + "instances")
    screenshot(browser, "instances")
    phone = make_driver(width=390, height=844)
    try:
        phone.get(dashboard.url)
        screenshot(phone, "phone")
        phone.get(dashboard.url + "login")
        screenshot(phone, "login")
    finally:
        phone.quit()
    (g.tmp_path / "release").touch()
    for name in ("overview", "type", "instances", "phone", "login"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


def test_screenshots_are_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.rst").read_text()
    for name in ("overview", "type", "instances", "phone"):
        assert f"docs/screenshots/{name}.png" in readme
