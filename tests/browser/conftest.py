"""Fixtures for the browser tests: headless Chromium driven by selenium.

A real daemon serves the dashboard from a real Redis; the browser is
Debian's ``chromium`` with ``chromium-driver`` (``.ci/run`` installs them).
The tests are marked ``browser`` so they run alone with ``-m browser``.
"""

from __future__ import annotations

import http.client
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.helpers import REPO_ROOT, DaemonProcess, RedisServer, free_port, wait_for
from tests.integration.conftest import Goophry

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

#: The token the dashboards of these tests are started with.
TOKEN = "browser-test-token"

#: Where each page's screenshot goes: build/screenshots/ to look at after a
#: run; `make screenshots` writes them to docs/screenshots/, which the README shows.
SCREENSHOTS = Path(os.environ.get("GOOPHRY_SCREENSHOTS", REPO_ROOT / "build" / "screenshots"))


def make_driver(javascript: bool = True, width: int = 1280, height: int = 900) -> WebDriver:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = make_driver()
    yield driver
    driver.quit()


@pytest.fixture
def browser_without_js() -> Iterator[WebDriver]:
    driver = make_driver(javascript=False)
    yield driver
    driver.quit()


@pytest.fixture
def goophry(redis: RedisServer, queue_key: str, tmp_path: Path) -> Goophry:
    return Goophry(redis, queue_key, tmp_path)


class Dashboard(NamedTuple):
    """A daemon serving the dashboard, and how to reach it."""

    daemon: DaemonProcess
    address: str
    url: str
    goophry: Goophry

    def post(
        self, path: str, body: str = "", headers: dict[str, str] | None = None
    ) -> tuple[int, float]:
        """A POST from outside the browser: its status, and the seconds it took."""
        host, _, port = self.address.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        started = time.monotonic()
        try:
            conn.request(
                "POST",
                "/ui/" + path,
                body=body,
                headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
            )
            reply = conn.getresponse()
            reply.read()
            return reply.status, time.monotonic() - started
        finally:
            conn.close()


@pytest.fixture
def dashboard(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
) -> Dashboard:
    """
    A daemon with three types: ``quick`` succeeds, ``flaky`` fails until the
    file ``pass`` exists in the test's folder, ``slow`` runs until ``release`` does.
    """
    folder = goophry.tmp_path
    quick = goophry.script("quick.sh", "true")
    flaky = goophry.script(
        "flaky.sh",
        f'echo "$1" >> {folder}/flaky.log\n'
        f'[ -e {folder}/pass ] || {{ echo "no pass file for $1" >&2; exit 1; }}',
    )
    slow = goophry.script(
        "slow.sh",
        f"for i in $(seq 600); do [ -e {folder}/release ] && exit 0; sleep 0.05; done; exit 1",
    )
    address = f"127.0.0.1:{free_port()}"
    config = write_config(
        Tasks=[
            {"Type": "quick", "Script": str(quick), "Workers": 2},
            {"Type": "flaky", "Script": str(flaky)},
            {"Type": "slow", "Script": str(slow)},
        ],
        FailedTasksTTL=3600,
        StatsInterface=address,
        DashboardPattern="/ui/",
        DashboardToken=TOKEN,
    )
    daemon = Goophry.started(run_daemon(config))
    daemon.wait_for_log("dashboard at ")
    return Dashboard(daemon, address, f"http://{address}/ui/", goophry)


def page_text_when(
    driver: WebDriver, predicate: Callable[[str], object], timeout: float = 30.0
) -> str:
    """Wait until the text of the page in the browser satisfies C{predicate}; that text."""
    seen = [""]

    def check() -> str | None:
        try:
            seen[0] = driver.find_element("tag name", "body").text
        except WebDriverException:  # a refresh replaced it
            return None
        return seen[0] if predicate(seen[0]) else None

    text: str = wait_for(check, timeout, 0.1, message=lambda: f"page text; last: {seen[0]!r}")
    return text
