"""Thin Celery tasks: unpack arguments, call the engine, map outcomes to retries."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Task
from celery.signals import worker_ready
from redis.exceptions import RedisError

from . import engine, maintenance
from ._time import utcnow
from .celery_app import app
from .connection import context, get_redis
from .engine import Outcome
from .errors import RunnerNotConfigured, StoreUnavailable
from .occurrences import Delivery
from .runners import get_runner

log = logging.getLogger("scheduled_prompts.tasks")

DELIVER = "scheduled_prompts.deliver"


def publish(deliveries: Sequence[Delivery]) -> None:
    """Send one ``deliver`` task per occurrence over one producer (ETA when in future)."""
    now = utcnow()
    with app.producer_or_acquire() as producer:
        for d in deliveries:
            deliver.apply_async(
                args=(d.prompt_id, d.occurrence_ms),
                kwargs={"trigger": True} if d.trigger else {},
                eta=d.eta if d.eta > now else None,
                producer=producer,
            )


@app.task(name="scheduled_prompts.tick", ignore_result=True)
def tick() -> dict[str, int]:
    """Promote occurrences due within the horizon; re-drive overdue ones."""
    return engine.tick(get_redis(), context(), publish)


@app.task(name=DELIVER, bind=True, max_retries=None, ignore_result=True)
def deliver(
    self: Task,
    prompt_id: str,
    occurrence_ms: int,
    *,
    trigger: bool = False,
    attempt: int = 1,
    coalesced_ms: int | None = None,
) -> str:
    """Deliver one occurrence (by id: the prompt text never travels in the message)."""
    delivery = Delivery(prompt_id, int(occurrence_ms), trigger=trigger)
    try:
        result = engine.deliver(
            get_redis(), context(), delivery, attempt=attempt, coalesced_ms=coalesced_ms
        )
    except (RedisError, StoreUnavailable) as exc:
        # The occurrence stays in flight in Redis; tick re-drives it if this retry is lost.
        log.warning("Redis unavailable delivering %s: %s", delivery.key, exc)
        raise self.retry(countdown=5, exc=exc) from exc
    if result.outcome is Outcome.RETRY:
        kwargs = {
            "trigger": trigger,
            "attempt": attempt + 1,
            "coalesced_ms": result.occurrence_ms,
        }
        raise self.retry(countdown=result.retry_in, kwargs=kwargs)
    if result.outcome is Outcome.BUSY:
        raise self.retry(countdown=result.retry_in)
    return result.outcome.value


@app.task(name="scheduled_prompts.cleanup", ignore_result=True)
def cleanup(days_to_keep: float | None = None) -> str:
    """Delete terminal prompts older than ``days_to_keep`` (default CLEANUP_DAYS)."""
    from .api import cleanup_expired_prompts  # noqa: PLC0415 - api imports tasks lazily too

    days = context().settings.cleanup_days if days_to_keep is None else days_to_keep
    return cleanup_expired_prompts(days_to_keep=days)


@app.task(name="scheduled_prompts.hydrate", ignore_result=True)
def hydrate(active_platforms: Iterable[str] | None = None, limit: int | None = None) -> int:
    """Hand surviving occurrences to Celery again (see :func:`maintenance.hydrate`)."""
    return maintenance.hydrate(
        get_redis(), context(), publish, active_platforms=active_platforms, limit=limit
    )


@worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    settings = context().settings
    try:
        get_runner("*")
    except RunnerNotConfigured:
        if not settings.runner:
            log.warning(
                "no runner configured: deliveries stay pending until SCHEDULED_PROMPTS_RUNNER "
                "is set (or set_bot_runner() is called in the worker)"
            )
    except ValueError as exc:
        log.error("%s", exc)
    try:
        count = hydrate()
        log.info("hydrated %d occurrence(s) on start", count)
    except Exception:
        log.exception("hydration on worker start failed; tick will re-drive what is due")
