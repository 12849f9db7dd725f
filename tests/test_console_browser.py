"""The console in a real headless Chromium (selenium, Debian's chromedriver), against a
real ``scheduled-prompts console`` process and the suite's Redis: log in through the
form, filter, search, open a prompt, pause it, see a failure and the load chart.

Every wait is on an event the page shows (WebDriverWait), never a sleep.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from scheduled_prompts.connection import scope
from scheduled_prompts.errors import PermanentDeliveryError
from tests.test_console import TOKEN, ConsoleProcess, deliver, schedule

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.timeout(240)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Generous: the suite must pass with both cores busy.
PATIENCE = 60


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists() and shutil.which(path.name) is None:
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,800",
    ):
        options.add_argument(flag)
    driver_path = CHROMEDRIVER if CHROMEDRIVER.exists() else shutil.which("chromedriver")
    service = webdriver.ChromeService(executable_path=str(driver_path))
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as exc:
        pytest.skip(f"Chromium did not start: {exc.msg}")
    driver.set_page_load_timeout(PATIENCE)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console(tmp_path: Path, redis_url: str) -> Iterator[ConsoleProcess]:
    server = ConsoleProcess(tmp_path, redis_url, SCHEDULED_PROMPTS_CONSOLE_TOKEN=TOKEN)
    yield server
    server.stop()


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, PATIENCE)


def submit(driver: WebDriver, button: WebElement) -> None:
    """Click a form's button and wait for the next page to replace this one."""
    old = driver.find_element(By.TAG_NAME, "html")
    button.click()
    wait(driver).until(lambda _: gone(old))


def gone(element: WebElement) -> bool:
    """Whether ``element`` left the page: stale, as ``ec.staleness_of`` sees it, or the
    error Chrome gives instead while the next page replaces the document."""
    try:
        return bool(ec.staleness_of(element)(None))
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise


def listed_ids(driver: WebDriver) -> list[str]:
    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "td.id a")]


def test_an_operator_logs_in_filters_searches_pauses_and_reads_failures_and_load(
    browser: WebDriver, console: ConsoleProcess, r: redis.Redis
) -> None:
    inbox = schedule("Summarise my inbox", user_id="ana", cron="0 9 * * 1-5")
    plants = schedule("Water the plants", user_id="ana", delay=timedelta(hours=3, minutes=30))
    schedule("Call the bank", user_id="bob", delay=7200)
    broken = schedule("Post the report", user_id="cal", delay=60)
    deliver(broken, PermanentDeliveryError("HTTP 410 from the bot"))

    # Log in through the form.
    browser.get(console.url + "/")
    wait(browser).until(ec.presence_of_element_located((By.ID, "token")))
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    submit(browser, browser.find_element(By.CSS_SELECTOR, "section.login button"))
    wait(browser).until(ec.title_contains("Prompts"))
    assert len(listed_ids(browser)) == 4

    # Filter by user and status.
    browser.find_element(By.NAME, "user").send_keys("ana")
    Select(browser.find_element(By.NAME, "status")).select_by_value("active")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button"))
    assert listed_ids(browser) == [inbox.id]

    # Search text (case-insensitive), with the user filter still in place.
    Select(browser.find_element(By.NAME, "status")).select_by_value("")
    browser.find_element(By.NAME, "q").send_keys("WATER")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button"))
    assert listed_ids(browser) == [plants.id]

    # Open the prompt and pause it.
    submit(browser, browser.find_element(By.LINK_TEXT, plants.id))
    assert browser.find_element(By.ID, "status").text == "scheduled"
    submit(browser, browser.find_element(By.ID, "action-pause"))
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "status"), "paused"))
    assert "Prompt paused." in browser.find_element(By.CSS_SELECTOR, ".flash").text
    raw = r.get(scope().keys.prompt(plants.id))
    assert raw is not None and json.loads(raw)["status"] == "paused"

    # The failures page lists the failed delivery, linking to its prompt.
    submit(browser, browser.find_element(By.LINK_TEXT, "Failures"))
    row = browser.find_element(By.CSS_SELECTOR, "table.failures tbody tr")
    assert broken.id in row.text and "HTTP 410 from the bot" in row.text
    link = row.find_element(By.CSS_SELECTOR, "td.id a").get_attribute("href")
    assert link == f"{console.url}/prompts/{broken.id}"

    # The chart: one bar per hour, drawn (non-zero height) exactly for the hours with
    # occurrences; the bank call due in 2 h is in the second hour (the paused prompt is
    # out of the due index).
    submit(browser, browser.find_element(By.LINK_TEXT, "Upcoming load"))
    chart = wait(browser).until(ec.visibility_of_element_located((By.ID, "load-chart")))
    bars = chart.find_elements(By.CSS_SELECTOR, "rect.bar")
    assert len(bars) == 24
    counts = {int(b.get_attribute("data-hour") or -1): b for b in bars}
    tall = {h for h, b in counts.items() if b.size["height"] > 0}
    busy = {h for h, b in counts.items() if int(b.get_attribute("data-count") or 0) > 0}
    assert tall == busy and 1 in busy  # the bank call, due in 2 h
    assert all(b.size["height"] == 0 for h, b in counts.items() if h not in busy)
