"""Take the screenshots in docs/console/ of the console's main pages.

    .venv/bin/python docs/console/screenshots.py

Starts its own redis-server on a free port and a ``scheduled-prompts console`` process,
fills the store with sample prompts and deliveries, and saves list.png, detail.png,
failures.png and load.png (1200x800) with headless Chromium (Debian's chromium and
chromium-driver). Touches no other Redis.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import scheduled_prompts as sp  # noqa: E402
from scheduled_prompts import engine  # noqa: E402
from scheduled_prompts._time import to_ms  # noqa: E402
from scheduled_prompts.connection import get_redis, scope  # noqa: E402
from scheduled_prompts.errors import DeliveryError, PermanentDeliveryError  # noqa: E402
from scheduled_prompts.occurrences import Delivery  # noqa: E402
from support.recording_runner import MemoryRunner  # noqa: E402
from support.redis_server import RedisServer, free_port, stop_process, wait_listening  # noqa: E402

OUT = Path(__file__).resolve().parent
SIZE = (1200, 800)


def seed() -> str:
    """Sample prompts and deliveries; returns the id of the prompt to show in detail."""
    users = [("ana", "telegram", "Europe/Berlin"), ("bob", "slack", "America/New_York"),
             ("chen", "discord", "Asia/Shanghai"), ("dana", "web", "UTC")]  # fmt: skip
    texts = ["Summarise my inbox", "Stand-up notes for the team", "Remind me to stretch",
             "Weekly report draft", "Check the deploy dashboard", "Water the plants"]  # fmt: skip
    specs = []
    for n in range(48):
        user, platform, zone = users[n % len(users)]
        spec = {"prompt": f"{texts[n % len(texts)]} (#{n})", "user_id": user,
                "platform": platform, "timezone": zone}  # fmt: skip
        if n % 3 == 0:
            spec["cron"] = ["0 9 * * 1-5", "*/30 * * * *", "0 */4 * * *", "15 18 * * *"][n % 4]
        else:
            spec["delay"] = timedelta(minutes=20 + 37 * n)
        specs.append(spec)
    made = sp.schedule_many(specs)
    sp.pause_prompt(made[4].id)
    sp.cancel_prompt(made[7].id)
    detail = sp.schedule_prompt(
        "Summarise my inbox and list anything that needs an answer today",
        user_id="ana",
        platform="telegram",
        channel_id="chat-9",
        cron="0 9 * * 1-5",
        timezone="Europe/Berlin",
        metadata={"source": "agent", "thread": "t-42"},
    )
    for record, error in [
        (made[1], None),
        (made[2], PermanentDeliveryError("HTTP 410 from the bot: chat not found")),
        (made[5], DeliveryError("HTTP 503 from the gateway")),
        (made[8], None),
        (made[10], PermanentDeliveryError("HTTP 403 from the bot: blocked by the user")),
    ]:
        deliver(record, error)
    for _ in range(3):
        deliver(sp.get_prompt(detail.id) or detail, None)
    return detail.id


def deliver(record: sp.ScheduledPrompt, error: Exception | None) -> None:
    assert record.next_run_at is not None
    sp.set_bot_runner(MemoryRunner(error))
    try:
        delivery = Delivery(record.id, to_ms(record.next_run_at))
        engine.deliver(get_redis(), scope(), delivery, now=record.next_run_at)
    finally:
        sp.set_bot_runner(None)


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--hide-scrollbars", f"--window-size={SIZE[0]},{SIZE[1]}"):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    # The page itself is SIZE, whatever room the headless window keeps for itself.
    metrics = {"width": SIZE[0], "height": SIZE[1], "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return driver


def shoot(driver: webdriver.Chrome, url: str, name: str, ready: tuple[str, str]) -> None:
    driver.get(url)
    WebDriverWait(driver, 30).until(ec.presence_of_element_located(ready))
    driver.save_screenshot(str(OUT / name))
    print(f"wrote {OUT / name}")


def main() -> None:
    token = secrets.token_urlsafe(24)
    with RedisServer() as server:
        sp.configure(redis_url=server.url)
        detail_id = seed()
        port = free_port()
        log = OUT / ".console.log"
        env = os.environ | {
            "SCHEDULED_PROMPTS_REDIS_URL": server.url,
            "SCHEDULED_PROMPTS_CONSOLE_TOKEN": token,
        }
        script = Path(sys.executable).parent / "scheduled-prompts"
        with log.open("wb") as out:
            console = subprocess.Popen(
                [str(script), "console", "--port", str(port)], env=env, stdout=out, stderr=out
            )
        try:
            wait_listening(port, console, log)
            base = f"http://127.0.0.1:{port}"
            driver = browser()
            try:
                driver.get(base + "/login")
                driver.find_element(By.ID, "token").send_keys(token)
                driver.find_element(By.CSS_SELECTOR, "section.login button").click()
                WebDriverWait(driver, 30).until(ec.title_contains("Prompts"))
                shoot(driver, base + "/", "list.png", (By.CSS_SELECTOR, "table.prompts"))
                shoot(driver, f"{base}/prompts/{detail_id}", "detail.png", (By.ID, "status"))
                shoot(driver, base + "/failures", "failures.png", (By.CSS_SELECTOR, "table"))
                shoot(driver, base + "/load", "load.png", (By.ID, "load-chart"))
            finally:
                driver.quit()
        finally:
            stop_process(console)
            log.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
