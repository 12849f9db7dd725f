"""celery-redbeat as the benchmarks' peer: an app on the bench server, and its stored
form (definition and meta JSON, as ``RedBeatSchedulerEntry.save()`` writes them), so
entries can be written in bulk exactly as redbeat's own API would write them one by one."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

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
