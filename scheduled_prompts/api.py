"""The synchronous public API (SPEC §4). ``scheduled_prompts.aio`` mirrors it for asyncio.

Each verb validates its input completely before writing; a rejected call writes nothing.
Mutating verbs take ``user_id=`` to enforce ownership: another user's prompt is reported
as not found.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from . import core, engine, maintenance
from ._time import utcnow
from .connection import context, get_redis, run, unavailable
from .core import PromptPage
from .errors import PromptError
from .models import ScheduledPrompt, Status


def schedule_prompt(
    prompt: str,
    *,
    user_id: str,
    platform: str,
    channel_id: str | None = None,
    at: datetime | str | None = None,
    delay: float | timedelta | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    start_at: datetime | str | None = None,
    end_at: datetime | str | None = None,
    max_runs: int | None = None,
    misfire_grace_seconds: float | None = None,
    metadata: Mapping[str, Any] | None = None,
    prompt_id: str | None = None,
) -> ScheduledPrompt:
    """Store a prompt to fire once (``at=`` or ``delay=``) or on a ``cron=`` schedule.

    ``prompt_id`` makes the call idempotent: repeating it with the same arguments returns
    the stored prompt unchanged; different arguments raise ``ConflictingPrompt``.
    """
    spec = {
        "prompt": prompt,
        "user_id": user_id,
        "platform": platform,
        "channel_id": channel_id,
        "at": at,
        "delay": delay,
        "cron": cron,
        "timezone": timezone,
        "start_at": start_at,
        "end_at": end_at,
        "max_runs": max_runs,
        "misfire_grace_seconds": misfire_grace_seconds,
        "metadata": metadata,
        "prompt_id": prompt_id,
    }
    return run(core.schedule(context(), spec, utcnow()))


def schedule_many(specs: Iterable[Mapping[str, Any]]) -> list[ScheduledPrompt]:
    """Store many prompts: each spec holds ``schedule_prompt``'s arguments as a dict.

    Every spec is validated before anything is written (one bad spec rejects the call,
    naming its index); the writes are pipelined in batches.
    """
    return run(core.schedule_many(context(), list(specs), utcnow()))


def get_prompt(prompt_id: str) -> ScheduledPrompt | None:
    """The prompt with this id, or None."""
    return run(core.get(context(), prompt_id))


def list_prompts(
    *,
    user_id: str | None = None,
    platform: str | None = None,
    status: Status | str | Iterable[Status | str] | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> PromptPage:
    """A page of prompts, oldest first; pass ``next_cursor`` back for the next page.

    With ``user_id`` the cost is proportional to that user's prompts only.
    """
    return run(
        core.list_page(
            context(),
            user_id=user_id,
            platform=platform,
            status=status,
            limit=limit,
            cursor=cursor,
        )
    )


def cancel_prompt(prompt_id: str, *, user_id: str | None = None) -> ScheduledPrompt:
    """Cancel a live or paused prompt; a pending delivery will not happen."""
    return run(core.cancel(context(), prompt_id, user_id, utcnow()))


def pause_prompt(prompt_id: str, *, user_id: str | None = None) -> ScheduledPrompt:
    """Stop a prompt from firing until :func:`resume_prompt`."""
    return run(core.pause(context(), prompt_id, user_id, utcnow()))


def resume_prompt(prompt_id: str, *, user_id: str | None = None) -> ScheduledPrompt:
    """Resume a paused prompt; its next run is computed from now (no burst of misses)."""
    return run(core.resume(context(), prompt_id, user_id, utcnow()))


def update_prompt(prompt_id: str, *, user_id: str | None = None, **changes: Any) -> ScheduledPrompt:
    """Change a live or paused prompt in place (text, schedule, bounds, metadata…).

    A rescheduled prompt's old occurrence never fires.
    """
    return run(core.update(context(), prompt_id, user_id, changes, utcnow()))


def cleanup_expired_prompts(redis: Any = None, *, days_to_keep: float = 30) -> str:
    """Delete executed, cancelled and failed prompts older than ``days_to_keep`` days.

    Returns JSON: ``{"success": true, "message", "days_kept", "deleted"}`` or
    ``{"error": …}``. Live prompts and unreadable records are left alone.
    """
    try:
        result = run(core.cleanup(context(), days_to_keep, utcnow()), redis)
    except PromptError as exc:
        result = {"error": str(exc)}
    return json.dumps(result)


def trigger_prompt(prompt_id: str, *, user_id: str | None = None) -> str:
    """Deliver a live or paused prompt once more, now; its schedule does not change.

    Counted in ``run_count`` but not against ``max_runs``. Returns the delivery's
    idempotency key, ``"{id}:trigger:{epoch_ms}"``.
    """
    return run(core.trigger(context(), prompt_id, user_id, utcnow()))


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
