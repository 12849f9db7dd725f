"""The peers' Celery app (``celery -A bench.peers worker|beat``): our Celery settings,
its own queue, one no-op task that records when it ran, and redbeat's settings.
Method and figures: docs/performance.md, "Methods"."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from celery import Celery

from scheduled_prompts.celery_app import celery_config
from scheduled_prompts.settings import get_settings
from support.recording_runner import append_line

NOOP = "bench.peers.noop"

app = Celery("bench.peers")


def configure_peers(
    broker_url: str | None = None,
    queue: str | None = None,
    max_interval: float | None = None,
    record_file: str | None = None,
) -> None:
    """(Re)configure the app: ours' Celery settings, the peer queue and redbeat's.

    Arguments left out come from the environment. Cached broker and redbeat connections
    are dropped, so a benchmark can point the app at a new redis-server between runs.
    """
    settings = get_settings()
    config = {k: v for k, v in celery_config(settings).items() if k != "beat_schedule"}
    url = broker_url or config["broker_url"]
    if max_interval is None:
        max_interval = float(os.environ.get("BENCH_REDBEAT_MAX_INTERVAL", "5"))
    if record_file is not None:
        os.environ["BENCH_PEER_RECORD_FILE"] = record_file
    config.update(
        broker_url=url,
        task_default_queue=queue or os.environ.get("BENCH_PEER_QUEUE", "bench-peers"),
        beat_schedule={},
        beat_max_loop_interval=max_interval,  # celery 5.7's name for beat's max interval
        redbeat_redis_url=url,
        redbeat_redis_options={},
        redbeat_key_prefix="bench-redbeat:",
    )
    app.conf.update(config)
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    for attr in ("redbeat_redis", "redbeat_conf"):
        if hasattr(app, attr):
            delattr(app, attr)


@app.task(name=NOOP, ignore_result=True)  # type: ignore[untyped-decorator]
def noop(key: str, due: float) -> None:
    """Record that the task ran: one JSON line with the time it was due and ``at``."""
    append_record({"key": key, "due": due, "at": time.time(), "pid": os.getpid()})


def append_record(record: dict[str, Any]) -> None:
    """One line, written as the recording runner writes ours."""
    append_line(os.environ["BENCH_PEER_RECORD_FILE"], orjson.dumps(record))


configure_peers()
