"""Flower sees what the worker does: task events name the tasks and carry no prompt text."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import scheduled_prompts as sp
from scheduled_prompts.celery_app import app
from support.cluster import Cluster

pytestmark = pytest.mark.timeout(240)


def test_worker_emits_task_events_by_name_without_prompt_text(cluster: Cluster) -> None:
    events: list[dict[str, Any]] = []
    receivers: list[Any] = []
    ready = threading.Event()

    def listen() -> None:
        with app.connection_for_read() as conn:
            recv = app.events.Receiver(conn, handlers={"*": events.append})
            receivers.append(recv)
            ready.set()
            recv.capture(limit=None, timeout=None, wakeup=False)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(30)
    cluster.worker()
    cluster.beat()
    secret = "the secret prompt text"
    p = sp.schedule_prompt(secret, user_id="u", platform="e2e", delay=1.5)
    key = f"{p.id}:"
    cluster.wait_until(
        lambda: any(
            e.get("type") == "task-succeeded" and e.get("uuid") in _deliver_ids(events)
            for e in events
        ),
        timeout=60,
        what="a task-succeeded event for deliver",
    )
    cluster.wait_until(
        lambda: "scheduled_prompts.tick" in {e.get("name") for e in events},
        timeout=120,
        what="a tick task event",
    )
    receivers[0].should_stop = True  # the next event (worker heartbeats: 2 s) ends capture
    listener.join(10)
    received = [e for e in events if e.get("type") == "task-received"]
    names = {e.get("name") for e in received}
    assert {"scheduled_prompts.deliver", "scheduled_prompts.tick"} <= names
    deliver = next(e for e in received if e.get("name") == "scheduled_prompts.deliver")
    assert p.id in deliver["args"] and key.rstrip(":") in deliver["args"]
    assert not any(secret in repr(e) for e in events)


def _deliver_ids(events: list[dict[str, Any]]) -> set[str]:
    return {
        e["uuid"]
        for e in events
        if e.get("type") == "task-received" and e.get("name") == "scheduled_prompts.deliver"
    }
