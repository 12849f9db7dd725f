"""The public API as coroutines, for bots that live in an event loop.

Same functions, same semantics, same errors as :mod:`scheduled_prompts.api` — the very
same plans, driven by ``redis.asyncio``. Occurrences due soon are handed to Celery in a
thread, so publishing never blocks the loop. Code written against the seed module
switches by changing one import: ``tick_scheduled_prompts(redis)``,
``hydrate_scheduled_prompts(redis, active_platforms, limit=500)`` and
``cleanup_expired_prompts(redis, *, days_to_keep=30)`` take an asyncio client first.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from redis.asyncio import Redis as AsyncRedis

from . import api, connection, engine, hydration, operations, plans, retention
from ._time import utcnow
from .api import Verb, present, publish
from .connection import scope
from .errors import PromptError
from .models import ScheduledPrompt
from .operations import ExportPage, ImportResult
from .plans import Plan
from .settings import get_settings

P = ParamSpec("P")
T = TypeVar("T")


def new_async_redis() -> AsyncRedis:
    """A ``redis.asyncio`` client for the configured Redis URL (close it when done)."""
    return connection.new_async_redis(get_settings())


async def arun(plan: Plan[T], client: AsyncRedis | None = None) -> T:
    """Drive a plan to completion on an asyncio client.

    Without ``client``, one is opened for the call and closed after it: asyncio clients
    belong to the loop that opened them, and a cached one would outlive ``asyncio.run``.
    """
    if client is not None:
        return await plans.arun(plan, client, publish)
    own = new_async_redis()
    try:
        return await plans.arun(plan, own, publish)
    finally:
        await own.aclose()


def _async(verb: Verb[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(verb.plan)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return await arun(verb.plan(*args, **kwargs))

    present(call, verb.plan)
    return call


schedule_prompt = _async(api.schedule_prompt)
schedule_many = _async(api.schedule_many)
get_prompt = _async(api.get_prompt)
list_prompts = _async(api.list_prompts)
cancel_prompt = _async(api.cancel_prompt)
pause_prompt = _async(api.pause_prompt)
resume_prompt = _async(api.resume_prompt)
update_prompt = _async(api.update_prompt)
trigger_prompt = _async(api.trigger_prompt)


async def cleanup_expired_prompts(
    redis: AsyncRedis | None = None, *, days_to_keep: float = 30
) -> str:
    """Delete executed, cancelled and failed prompts older than ``days_to_keep`` days.

    Returns JSON: ``{"success": true, "message", "days_kept", "deleted"}`` or
    ``{"error": …}``. Live prompts and unreadable records are left alone.
    """
    try:
        return await arun(retention.report(scope(), days_to_keep, utcnow()), redis)
    except PromptError as exc:  # the store is unreachable
        return json.dumps({"error": str(exc)})


async def tick_scheduled_prompts(
    redis: AsyncRedis | None = None, *, now: datetime | None = None
) -> dict[str, int]:
    """Run one tick (what beat's ``scheduled_prompts.tick`` does).

    Returns ``{"promoted": n, "redriven": m}``.
    """
    return await arun(engine.tick_plan(scope(), now or utcnow()), redis)


async def hydrate_scheduled_prompts(
    redis: AsyncRedis | None = None,
    active_platforms: Iterable[str] | None = None,
    limit: int = 500,
) -> int:
    """Hand surviving occurrences to Celery again; returns how many were published."""
    plan = hydration.hydrate(scope(), utcnow(), active_platforms=active_platforms, limit=limit)
    return await arun(plan, redis)


async def get_stats(
    redis: AsyncRedis | None = None, *, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Counts by status, the due backlog, in-flight occurrences, the oldest lateness and
    the last tick; ``progress(n)`` is called after each page of ``n`` records read."""
    return await arun(operations.stats(scope(), utcnow(), progress), redis)


async def export_prompts(
    redis: AsyncRedis | None = None, *, on_page: Callable[[ExportPage], None] | None = None
) -> AsyncIterator[ScheduledPrompt]:
    """Every stored prompt in id order, read a page at a time (unreadable ones skipped:
    ``on_page`` sees each page, with what it skipped and why, before its records)."""
    own = new_async_redis() if redis is None else None
    client = redis or own
    assert client is not None
    try:
        after: str | None = None
        while True:
            page = await arun(operations.export_page(scope(), after), client)
            if on_page is not None:
                on_page(page)
            for record in page.records:
                yield record
            if page.after is None:
                return
            after = page.after
    finally:
        if own is not None:
            await own.aclose()


async def import_prompts(
    records: Iterable[ScheduledPrompt], redis: AsyncRedis | None = None
) -> ImportResult:
    """Store exported records, each checked as ``schedule_prompt`` checks its input and
    held to the per-user quota; an id that exists is kept as it is."""
    result = ImportResult()
    for chunk in operations.chunked(records):
        result.merge(await arun(operations.import_records(scope(), chunk, utcnow()), redis))
    return result


__all__ = [
    "arun",
    "cancel_prompt",
    "cleanup_expired_prompts",
    "export_prompts",
    "get_prompt",
    "get_stats",
    "hydrate_scheduled_prompts",
    "import_prompts",
    "list_prompts",
    "new_async_redis",
    "pause_prompt",
    "resume_prompt",
    "schedule_many",
    "schedule_prompt",
    "tick_scheduled_prompts",
    "trigger_prompt",
    "update_prompt",
]
