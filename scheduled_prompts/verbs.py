"""The public verbs as plan factories: each returns the plan that does the work.

``api.py`` runs them on a ``redis.Redis`` and ``aio.py`` on a ``redis.asyncio.Redis``;
the signatures and docstrings below are what both APIs show.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from . import core
from ._time import utcnow
from .connection import context
from .core import Plan, PromptPage
from .models import ScheduledPrompt, Status


def present(verb: Callable[..., object], factory: Callable[..., object]) -> None:
    """Show ``verb`` (a sync or async wrapper) with the factory's parameters and docs,
    not its ``Plan`` return type."""
    verb.__signature__ = inspect.signature(factory).replace(  # type: ignore[attr-defined]
        return_annotation=inspect.Signature.empty
    )


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
) -> Plan[ScheduledPrompt]:
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
    return core.schedule(context(), spec, utcnow())


def schedule_many(specs: Iterable[Mapping[str, Any]]) -> Plan[list[ScheduledPrompt]]:
    """Store many prompts: each spec holds ``schedule_prompt``'s arguments as a dict.

    Every spec is validated before anything is written (one bad spec rejects the call,
    naming its index); the writes are pipelined in batches.
    """
    return core.schedule_many(context(), list(specs), utcnow())


def get_prompt(prompt_id: str) -> Plan[ScheduledPrompt | None]:
    """The prompt with this id, or None."""
    return core.get(context(), prompt_id)


def list_prompts(
    *,
    user_id: str | None = None,
    platform: str | None = None,
    status: Status | str | Iterable[Status | str] | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Plan[PromptPage]:
    """A page of prompts, oldest first; pass ``next_cursor`` back for the next page.

    With ``user_id`` the cost is proportional to that user's prompts only.
    """
    return core.list_page(
        context(),
        user_id=user_id,
        platform=platform,
        status=status,
        limit=limit,
        cursor=cursor,
    )


def cancel_prompt(prompt_id: str, *, user_id: str | None = None) -> Plan[ScheduledPrompt]:
    """Cancel a live or paused prompt; a pending delivery will not happen."""
    return core.cancel(context(), prompt_id, user_id, utcnow())


def pause_prompt(prompt_id: str, *, user_id: str | None = None) -> Plan[ScheduledPrompt]:
    """Stop a prompt from firing until :func:`resume_prompt`."""
    return core.pause(context(), prompt_id, user_id, utcnow())


def resume_prompt(prompt_id: str, *, user_id: str | None = None) -> Plan[ScheduledPrompt]:
    """Resume a paused prompt; its next run is computed from now (no burst of misses)."""
    return core.resume(context(), prompt_id, user_id, utcnow())


def update_prompt(
    prompt_id: str, *, user_id: str | None = None, **changes: Any
) -> Plan[ScheduledPrompt]:
    """Change a live or paused prompt in place (text, schedule, bounds, metadata…).

    A rescheduled prompt's old occurrence never fires.
    """
    return core.update(context(), prompt_id, user_id, changes, utcnow())


def trigger_prompt(prompt_id: str, *, user_id: str | None = None) -> Plan[str]:
    """Deliver a live or paused prompt once more, now; its schedule does not change.

    Counted in ``run_count`` but not against ``max_runs``. Returns the delivery's
    idempotency key, ``"{id}:trigger:{epoch_ms}"``.
    """
    return core.trigger(context(), prompt_id, user_id, utcnow())
