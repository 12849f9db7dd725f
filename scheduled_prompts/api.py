"""The synchronous public API. ``scheduled_prompts.aio`` offers the same as coroutines.

Each verb validates its input completely before writing; a rejected call writes nothing.
Mutating verbs take ``user_id=`` to enforce ownership: another user's prompt is reported
as not found.

Every function here builds a plan (``verbs.py``, ``hydration.py``, ``retention.py``,
``engine.py``) and drives it on the shared ``redis.Redis``; the verbs keep their plan
factory as ``.plan``, which ``aio.py`` drives on ``redis.asyncio`` instead.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from redis import Redis

from . import engine, hydration, operations, plans, retention, verbs
from ._time import utcnow
from .connection import get_redis, scope
from .errors import PromptError
from .models import ScheduledPrompt, Status
from .occurrences import Delivery
from .operations import ExportPage, ImportResult
from .plans import Plan
from .verbs import PromptPage

P = ParamSpec("P")
T = TypeVar("T")


def publish(deliveries: Sequence[Delivery]) -> None:
    """Send occurrences to the ``deliver`` tasks through the Celery adapter (imported on
    first use, so that importing the API does not load Celery)."""
    from .tasks import publish as send  # noqa: PLC0415

    send(deliveries)


def run(plan: Plan[T], redis: Redis | None = None) -> T:
    """Drive ``plan`` on ``redis`` (default: the shared client for the configured URL)."""
    return plans.run(plan, redis or get_redis(), publish)


class Verb(Protocol[P, T]):
    """A public verb: calling it runs its plan; ``.plan`` only builds the plan."""

    plan: Callable[P, Plan[T]]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T: ...


def verb(plan: Callable[P, Plan[T]]) -> Verb[P, T]:
    """The public function that runs ``plan``'s plans, shown with its parameters and
    docs (not its ``Plan`` return type)."""

    @functools.wraps(plan)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return run(plan(*args, **kwargs))

    present(call, plan)
    call.plan = plan  # type: ignore[attr-defined]
    return cast(Verb[P, T], call)


def present(call: Callable[..., object], plan: Callable[..., object]) -> None:
    """Give ``call`` the signature of ``plan`` without its ``Plan`` return type."""
    call.__signature__ = inspect.signature(plan).replace(  # type: ignore[attr-defined]
        return_annotation=inspect.Signature.empty
    )


@verb
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
    jitter_seconds: float | None = None,
    overlap: str | None = None,
) -> Plan[ScheduledPrompt]:
    """Store a prompt to fire once (``at=`` or ``delay=``) or on a ``cron=`` schedule.

    ``prompt_id`` makes the call idempotent: repeating it with the same arguments returns
    the stored prompt unchanged; different arguments raise ``ConflictingPrompt``.
    ``jitter_seconds=J`` makes every occurrence fire a fixed offset in [0, J) after its
    time, derived from the prompt's id (spreads a herd; ``next_run_at`` shows it).
    ``overlap`` (cron prompts) decides what an occurrence does when it comes due while
    the runner call of an earlier one is still going on: ``"skip"`` (the default: not
    delivered, counted in ``skipped_runs``), ``"buffer_one"`` (the latest of them is
    delivered once the run ends) or ``"allow"`` (delivered on time, alongside it).
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
        "jitter_seconds": jitter_seconds,
        "overlap": overlap,
    }
    return verbs.create(scope(), spec, utcnow())


@verb
def schedule_many(specs: Iterable[Mapping[str, Any]]) -> Plan[list[ScheduledPrompt]]:
    """Store many prompts: each spec holds ``schedule_prompt``'s arguments as a dict.

    Every spec is validated before anything is written (one bad spec rejects the call,
    naming its index); the writes are pipelined in batches.
    """
    return verbs.create_many(scope(), list(specs), utcnow())


@verb
def get_prompt(prompt_id: str) -> Plan[ScheduledPrompt | None]:
    """The prompt with this id, or None."""
    return verbs.get(scope(), prompt_id)


@verb
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
    return verbs.list_page(
        scope(), user_id=user_id, platform=platform, status=status, limit=limit, cursor=cursor
    )


@verb
def cancel_prompt(prompt_id: str, *, user_id: str | None = None) -> Plan[ScheduledPrompt]:
    """Cancel a live or paused prompt; a pending delivery will not happen."""
    return verbs.cancel(scope(), prompt_id, user_id, utcnow())


@verb
def pause_prompt(prompt_id: str, *, user_id: str | None = None) -> Plan[ScheduledPrompt]:
    """Stop a prompt from firing until :func:`resume_prompt`."""
    return verbs.pause(scope(), prompt_id, user_id, utcnow())


@verb
def resume_prompt(prompt_id: str, *, user_id: str | None = None) -> Plan[ScheduledPrompt]:
    """Resume a paused prompt; its next run is computed from now (no burst of misses)."""
    return verbs.resume(scope(), prompt_id, user_id, utcnow())


@verb
def update_prompt(
    prompt_id: str, *, user_id: str | None = None, **changes: Any
) -> Plan[ScheduledPrompt]:
    """Change a live or paused prompt in place (text, schedule, bounds, metadata…).

    A rescheduled prompt's old occurrence never fires.
    """
    return verbs.update(scope(), prompt_id, user_id, changes, utcnow())


@verb
def trigger_prompt(prompt_id: str, *, user_id: str | None = None) -> Plan[str]:
    """Deliver a live or paused prompt once more, now; its schedule does not change.

    Counted in ``run_count`` but not against ``max_runs``. Returns the delivery's
    idempotency key, ``"{id}:trigger:{epoch_ms}"``.
    """
    return verbs.trigger(scope(), prompt_id, user_id, utcnow())


def cleanup_expired_prompts(redis: Redis | None = None, *, days_to_keep: float = 30) -> str:
    """Delete executed, cancelled and failed prompts older than ``days_to_keep`` days.

    Returns JSON: ``{"success": true, "message", "days_kept", "deleted"}`` or
    ``{"error": …}``. Live prompts and unreadable records are left alone.
    """
    try:
        return run(retention.report(scope(), days_to_keep, utcnow()), redis)
    except PromptError as exc:  # the store is unreachable
        return json.dumps({"error": str(exc)})


def tick_scheduled_prompts(
    redis: Redis | None = None, *, now: datetime | None = None
) -> dict[str, int]:
    """Run one tick in this process (what beat's ``scheduled_prompts.tick`` does).

    Returns ``{"promoted": n, "redriven": m}``.
    """
    return run(engine.tick_plan(scope(), now or utcnow()), redis)


def hydrate_scheduled_prompts(
    redis: Redis | None = None,
    active_platforms: Iterable[str] | None = None,
    limit: int = 500,
) -> int:
    """Hand surviving occurrences to Celery again; returns how many were published."""
    plan = hydration.hydrate(scope(), utcnow(), active_platforms=active_platforms, limit=limit)
    return run(plan, redis)


def get_stats(
    redis: Redis | None = None, *, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Counts by status, the due backlog, in-flight occurrences, the oldest lateness and
    the last tick (``scheduled-prompts stats``). Reads every record once, a page at a
    time; ``progress(n)`` is called after each page of ``n``."""
    return run(operations.stats(scope(), utcnow(), progress), redis)


def export_prompts(
    redis: Redis | None = None, *, on_page: Callable[[ExportPage], None] | None = None
) -> Iterator[ScheduledPrompt]:
    """Every stored prompt in id order, read a page at a time (``scheduled-prompts
    export``). Unreadable records are skipped: ``on_page`` sees each page, with what it
    skipped and why, before its records are yielded."""
    after: str | None = None
    while True:
        page = run(operations.export_page(scope(), after), redis)
        if on_page is not None:
            on_page(page)
        yield from page.records
        if page.after is None:
            return
        after = page.after


def import_prompts(records: Iterable[ScheduledPrompt], redis: Redis | None = None) -> ImportResult:
    """Store records from :func:`export_prompts` (``scheduled-prompts import``): each
    checked as :func:`schedule_prompt` checks its input and held to the per-user quota;
    an id that exists is kept as it is (counted in ``skipped``)."""
    result = ImportResult()
    for chunk in operations.chunked(records):
        result.merge(run(operations.import_records(scope(), chunk, utcnow()), redis))
    return result
