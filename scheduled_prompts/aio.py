"""The public API as coroutines, for bots that live in an event loop.

Same verbs, same semantics, same errors as :mod:`scheduled_prompts.api` — the very same
plans (``verbs.py``), driven by ``redis.asyncio``. Publishing Celery messages for
prompts due soon happens in a thread, so it never blocks the loop.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from . import core, verbs
from ._time import utcnow
from .connection import client_kwargs, context, unavailable
from .core import Plan
from .errors import PromptError, StoreUnavailable
from .settings import get_settings, mask_url

P = ParamSpec("P")
T = TypeVar("T")


def new_async_redis() -> AsyncRedis:
    """A ``redis.asyncio`` client for the configured Redis URL (close it when done)."""
    settings = get_settings()
    try:
        return AsyncRedis.from_url(settings.redis_url, **client_kwargs(settings))
    except ValueError as exc:
        raise StoreUnavailable(mask_url(settings.redis_url), str(exc)) from None


async def arun(plan: Plan[T], client: AsyncRedis | None = None) -> T:
    """Drive a plan to completion on an asyncio client.

    Without ``client``, one is opened for the call and closed after it: asyncio clients
    belong to the loop that opened them, and a cached one would outlive ``asyncio.run``.
    """
    if client is None:
        own = new_async_redis()
        try:
            return await _drive(plan, own)
        finally:
            await own.aclose()
    return await _drive(plan, client)


async def _drive(plan: Plan[T], client: AsyncRedis) -> T:
    try:
        op = next(plan)
        while True:
            try:
                result = await op.arun(client)
            except RedisError as exc:
                raise unavailable(exc) from exc
            op = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _async(factory: Callable[P, Plan[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(factory)
    async def verb(*args: P.args, **kwargs: P.kwargs) -> T:
        return await arun(factory(*args, **kwargs))

    verbs.present(verb, factory)
    return verb


schedule_prompt = _async(verbs.schedule_prompt)
schedule_many = _async(verbs.schedule_many)
get_prompt = _async(verbs.get_prompt)
list_prompts = _async(verbs.list_prompts)
cancel_prompt = _async(verbs.cancel_prompt)
pause_prompt = _async(verbs.pause_prompt)
resume_prompt = _async(verbs.resume_prompt)
update_prompt = _async(verbs.update_prompt)
trigger_prompt = _async(verbs.trigger_prompt)


async def cleanup_expired_prompts(
    redis: AsyncRedis | None = None, *, days_to_keep: float = 30
) -> str:
    """Coroutine form of :func:`scheduled_prompts.cleanup_expired_prompts` (JSON result)."""
    try:
        result = await arun(core.cleanup(context(), days_to_keep, utcnow()), redis)
    except PromptError as exc:
        result = {"error": str(exc)}
    return json.dumps(result)


__all__ = [
    "arun",
    "cancel_prompt",
    "cleanup_expired_prompts",
    "get_prompt",
    "list_prompts",
    "new_async_redis",
    "pause_prompt",
    "resume_prompt",
    "schedule_many",
    "schedule_prompt",
    "trigger_prompt",
    "update_prompt",
]
