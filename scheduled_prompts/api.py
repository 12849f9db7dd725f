"""The synchronous public API. ``scheduled_prompts.aio`` mirrors it for asyncio.

Each verb validates its input completely before writing; a rejected call writes nothing.
Mutating verbs take ``user_id=`` to enforce ownership: another user's prompt is reported
as not found.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import ParamSpec, TypeVar

from redis import Redis
from redis.exceptions import RedisError

from . import core, engine, maintenance, verbs
from ._time import utcnow
from .connection import context, get_redis, run, unavailable
from .core import Plan
from .errors import PromptError

P = ParamSpec("P")
T = TypeVar("T")


def _sync(factory: Callable[P, Plan[T]]) -> Callable[P, T]:
    @functools.wraps(factory)
    def verb(*args: P.args, **kwargs: P.kwargs) -> T:
        return run(factory(*args, **kwargs))

    verbs.present(verb, factory)
    return verb


schedule_prompt = _sync(verbs.schedule_prompt)
schedule_many = _sync(verbs.schedule_many)
get_prompt = _sync(verbs.get_prompt)
list_prompts = _sync(verbs.list_prompts)
cancel_prompt = _sync(verbs.cancel_prompt)
pause_prompt = _sync(verbs.pause_prompt)
resume_prompt = _sync(verbs.resume_prompt)
update_prompt = _sync(verbs.update_prompt)
trigger_prompt = _sync(verbs.trigger_prompt)


def cleanup_expired_prompts(redis: Redis | None = None, *, days_to_keep: float = 30) -> str:
    """Delete executed, cancelled and failed prompts older than ``days_to_keep`` days.

    Returns JSON: ``{"success": true, "message", "days_kept", "deleted"}`` or
    ``{"error": …}``. Live prompts and unreadable records are left alone.
    """
    try:
        result = run(core.cleanup(context(), days_to_keep, utcnow()), redis)
    except PromptError as exc:
        result = {"error": str(exc)}
    return json.dumps(result)


def tick_scheduled_prompts(
    redis: Redis | None = None, *, now: datetime | None = None
) -> dict[str, int]:
    """Run one tick in this process (what beat's ``scheduled_prompts.tick`` does).

    Returns ``{"promoted": n, "redriven": m}``.
    """
    from .tasks import publish  # noqa: PLC0415 - keeps Celery out of plain imports

    try:
        return engine.tick(redis or get_redis(), context(), publish, now=now)
    except RedisError as exc:
        raise unavailable(exc) from exc


def hydrate_scheduled_prompts(
    redis: Redis | None = None,
    active_platforms: Iterable[str] | None = None,
    limit: int = 500,
) -> int:
    """Hand surviving occurrences to Celery again; returns how many were published."""
    from .tasks import publish  # noqa: PLC0415

    try:
        return maintenance.hydrate(
            redis or get_redis(), context(), publish, active_platforms=active_platforms, limit=limit
        )
    except RedisError as exc:
        raise unavailable(exc) from exc
