"""celery-redbeat as the benchmarks' peer: its app, and the writes of its ``save()``
queued on a pipeline, so many entries are stored exactly as redbeat stores one.
Method and figures: docs/performance.md, "Methods"."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import redis
from celery import Celery
from redbeat.decoder import RedBeatJSONEncoder
from redbeat.schedulers import ensure_conf


def redbeat_app(url: str, name: str = "bench-redbeat") -> Celery:
    """A Celery app (not made current) whose redbeat store is ``url``."""
    app = Celery(name, set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        redbeat_redis_url=url,
        redbeat_key_prefix="redbeat:",
        redbeat_lock_key=None,
        result_expires=None,  # no celery.backend_cleanup entry in the schedule
        timezone="UTC",
        enable_utc=True,
        beat_schedule={},
    )
    ensure_conf(app)  # sets app.redbeat_conf, as the scheduler and entries do
    return app


def definition(
    name: str,
    task: str,
    kwargs: dict[str, Any],
    schedule: Any,
    *,
    args: list[Any] | None,
    options: dict[str, Any] | None,
    enabled: bool = True,
) -> str:
    """The JSON ``save()`` stores in an entry's ``definition`` field (``args`` and
    ``options`` as the entry holds them: ``None`` stays ``null``)."""
    return json.dumps(
        {"name": name, "task": task, "args": args, "kwargs": kwargs,
         "options": options, "schedule": schedule, "enabled": enabled},
        cls=RedBeatJSONEncoder,
    )  # fmt: skip


def meta(last_run_at: datetime | None) -> str:
    """The JSON ``save()`` stores in an entry's ``meta`` field."""
    return json.dumps({"last_run_at": last_run_at}, cls=RedBeatJSONEncoder)


def queue_save(
    pipe: redis.client.Pipeline,
    schedule_key: str,
    key: str,
    *,
    definition: str,
    meta: str,
    score: float,
) -> None:
    """Queue on ``pipe`` the three writes ``RedBeatSchedulerEntry.save()`` sends for one
    entry (``definition`` and ``meta`` as JSON): HSET of the definition, HSETNX of the
    meta, ZADD of ``key`` to the schedule with ``score``, its due time."""
    pipe.hset(key, "definition", definition)
    pipe.hsetnx(key, "meta", meta)
    pipe.zadd(schedule_key, {key: score})
