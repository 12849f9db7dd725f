"""A real worker and beat with password-protected Redis (store: an ACL user; broker:
requirepass): their whole log output, through deliveries and both Redis servers going
away and coming back, never shows a password or the prompt text."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

import scheduled_prompts as sp
from support.cluster import REPO, Process
from tests.test_security import ACL_PASSWORD, PASSWORD, SECRET_PROMPT, acl_server, password_server

pytestmark = pytest.mark.timeout(180)


def wait_for_text(proc: Process, needle: str, timeout: float, count: int = 1) -> bool:
    """Whether ``needle`` shows up ``count`` times in the log (False if the child exits)."""
    deadline = time.monotonic() + timeout
    while proc.text().count(needle) < count:
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_worker_and_beat_logs_never_show_a_password_or_the_prompt(tmp_path: Path) -> None:
    store = acl_server().start()
    broker = password_server().start()
    settings = {
        "redis_url": store.url,
        "broker_url": broker.url,
        "queue": f"e2e-sec-{uuid.uuid4().hex[:8]}",
        "tick_seconds": 1,
        "lease_seconds": 5,
        "redis_timeout_seconds": 1,
        "runner": "scheduled_prompts.runners:LogRunner",
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCHEDULED_PROMPTS_")},
        **{f"SCHEDULED_PROMPTS_{k.upper()}": str(v) for k, v in settings.items()},
        "PYTHONPATH": str(REPO),
    }
    celery = [sys.executable, "-m", "celery", "-A", "scheduled_prompts"]
    processes: list[Process] = []
    try:
        sp.configure(**settings)

        def start_worker(name: str, wait: bool = True) -> Process:
            proc = Process(
                name,
                [*celery, "worker", "--loglevel=INFO", "--concurrency=1", "-n", f"{name}@%h",
                 "--without-mingle", "--without-gossip"],
                env,
                tmp_path / f"{name}.log",
            )  # fmt: skip
            processes.append(proc)
            if wait:
                proc.wait_for(" ready.")
            return proc

        worker = start_worker("worker")
        beat = Process(
            "beat",
            [*celery, "beat", "--loglevel=INFO", "-s", str(tmp_path / "beat-schedule")],
            env,
            tmp_path / "beat.log",
        )
        processes.append(beat)
        beat.wait_for("beat: Starting")

        first = sp.schedule_prompt(SECRET_PROMPT, user_id="ana", platform="tg", delay=1)
        worker.wait_for(f"delivered {first.id}:", timeout=60)

        # The store goes away: ticks fail and a due delivery cannot claim its occurrence.
        sp.schedule_prompt(SECRET_PROMPT, user_id="ana", platform="tg", delay=1.5)
        store.stop()
        worker.wait_for("Redis unavailable delivering", timeout=60)

        # Then the broker too. The worker logs that it cannot connect, or exits (the
        # known kombu hazard, docs/operations.md): a worker started now, with the broker
        # still down, logs Celery's connection errors, which name the broker URL.
        broker.stop()
        live = worker
        if not wait_for_text(worker, "Cannot connect to", timeout=30):
            assert worker.popen.poll() is not None, worker.text()[-3000:]
            live = start_worker("worker2", wait=False)
            live.wait_for("Cannot connect to", timeout=60)
        store.start()
        broker.start()
        # Back again (best effort: the hazard may strike on reconnection too).
        connected = f"Connected to redis://:**@127.0.0.1:{broker.port}/0"
        wait_for_text(live, connected, timeout=15, count=2 if live is worker else 1)
    finally:
        for proc in reversed(processes):
            proc.stop()
        sp.configure()
        store.cleanup()
        broker.cleanup()

    logs = {proc.name: proc.text() for proc in processes}
    for name, text in logs.items():
        assert PASSWORD not in text, f"{name} logged the broker password"
        assert ACL_PASSWORD not in text, f"{name} logged the store password"
        assert "SECRET-PROMPT" not in text, f"{name} logged the prompt text at INFO"
    # The URLs were logged, masked: Celery's banner and connection errors show the broker;
    # our own line for the store being down was provoked.
    everything = "\n".join(logs.values())
    assert f"transport:   redis://:**@127.0.0.1:{broker.port}/0" in logs["worker"]
    assert f"Cannot connect to redis://:**@127.0.0.1:{broker.port}/0" in everything
    assert "Redis unavailable delivering" in logs["worker"]
