"""The Celery adapter's tasks: unpack arguments, call the engine, map outcomes to retries.

With ``celery_app.py`` and ``worker.py``, the only modules that import Celery; the
library below them receives :func:`publish` as a parameter.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.synchronize
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Task
from celery.signals import worker_init, worker_ready, worker_shutting_down

from . import engine, hydration, retention
from ._time import utcnow
from .celery_app import app
from .connection import STORE_ERRORS, get_redis, scope
from .errors import RunnerNotConfigured, StoreUnavailable
from .occurrences import SPREAD_SHARE, Delivery, batches, hand_over
from .outcomes import Outcome, Result
from .plans import run
from .runners import get_runner

log = logging.getLogger("scheduled_prompts.tasks")

#: Set by the worker's main process when its shutdown begins. Made in ``worker_init``,
#: before the prefork pool forks, so the pool's processes share it: a batch stops
#: between runner calls instead of keeping the warm shutdown waiting for all of them.
_stopping: multiprocessing.synchronize.Event | None = None


def stopping() -> bool:
    """Whether this worker is shutting down (always False outside a worker)."""
    return _stopping is not None and _stopping.is_set()


@worker_init.connect
def _on_worker_init(**_: Any) -> None:
    global _stopping
    _stopping = multiprocessing.Event()


@worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    if _stopping is not None:
        _stopping.set()


#: A delivery task retries on these: the store stays as it was, the occurrence in flight.
REDIS_AWAY: tuple[type[Exception], ...] = (*STORE_ERRORS, StoreUnavailable)

DELIVER = "scheduled_prompts.deliver"
DELIVER_BATCH = "scheduled_prompts.deliver_batch"


def publish(deliveries: Sequence[Delivery]) -> None:
    """Send the occurrences over one producer, those due together as one batch task.

    A group of several goes as one ``deliver_batch`` task, a lone occurrence as one
    ``deliver`` task; either with an ETA when due in the future, a few milliseconds
    ahead (:data:`~scheduled_prompts.occurrences.SEND_AHEAD`: the task claims its
    occurrences meanwhile and calls each runner at its own time; see
    :func:`~scheduled_prompts.occurrences.batches`).
    """
    now = utcnow()
    settings = scope().settings
    groups = batches(deliveries, settings.deliver_batch_size, settings.deliver_batch_window_ms)
    with app.producer_or_acquire() as producer:
        for group in groups:
            first = group[0]  # the earliest: the worker holds the others until theirs
            eta = first.send_at if first.send_at > now else None
            if len(group) == 1:
                deliver.apply_async(
                    args=(first.prompt_id, first.occurrence_ms),
                    kwargs=first.task_kwargs,
                    eta=eta,
                    producer=producer,
                )
            else:
                items = [[d.prompt_id, d.occurrence_ms] for d in group]
                kwargs = {"shard": first.shard} if first.shard else {}
                deliver_batch.apply_async(args=(items,), kwargs=kwargs, eta=eta, producer=producer)


@app.task(name="scheduled_prompts.tick", ignore_result=True)
def tick() -> dict[str, int]:
    """Promote occurrences due within the horizon; re-drive overdue ones."""
    return engine.tick(get_redis(), scope(), publish)


@app.task(name=DELIVER, bind=True, max_retries=None, ignore_result=True)
def deliver(
    self: Task,
    prompt_id: str,
    occurrence_ms: int,
    *,
    trigger: bool = False,
    detached: bool = False,
    attempt: int = 1,
    coalesced_ms: int | None = None,
    slot_ms: int | None = None,
    limited_since_ms: int | None = None,
    shard: int = 0,
) -> str:
    """Deliver one occurrence (by id: the prompt text never travels in the message).

    A first attempt takes along the occurrences due at the same instant that wait for
    tasks of their own (see :func:`engine.siblings`): one batch instead of many tasks.
    Those keep their own tasks for anything but success (a failed or busy one is retried
    by its own task, which otherwise finds it done).
    """
    delivery = Delivery(
        prompt_id, int(occurrence_ms), trigger=trigger, detached=detached, shard=int(shard)
    )
    client, ctx = get_redis(), scope().shard(delivery.shard)
    try:
        others: list[Delivery] = []
        if (
            attempt == 1
            and delivery.scheduled
            and coalesced_ms is None
            and limited_since_ms is None
            and ctx.settings.deliver_batch_size > 1
        ):
            # As many as a task's share of a few hundred due at once (see ``batches``):
            # the tasks of the others take theirs side by side on the pool.
            share = min(ctx.settings.deliver_batch_size, SPREAD_SHARE)
            others = engine.siblings(client, ctx, delivery, share - 1)
        if others:
            result = engine.deliver_many(client, ctx, [delivery, *others], stopping=stopping)[0]
        else:
            result = engine.deliver(
                client,
                ctx,
                delivery,
                attempt=attempt,
                coalesced_ms=coalesced_ms,
                slot_ms=slot_ms,
                limited_since_ms=limited_since_ms,
            )
    except REDIS_AWAY as exc:
        # The occurrence stays in flight in Redis; tick re-drives it if this retry is lost.
        log.warning("Redis unavailable delivering %s: %s", delivery.key, exc)
        raise self.retry(countdown=5, exc=exc) from exc
    if result.outcome is Outcome.RETRY:
        again = result.delivery or delivery
        kwargs = {**again.task_kwargs, "attempt": attempt + 1, "coalesced_ms": result.occurrence_ms}
        args = (again.prompt_id, again.occurrence_ms)
        raise self.retry(args=args, countdown=result.retry_in, kwargs=kwargs)
    if result.outcome is Outcome.LIMITED:
        kwargs = {**delivery.task_kwargs, "attempt": attempt, "coalesced_ms": coalesced_ms}
        raise self.retry(countdown=result.retry_in, kwargs=kwargs | _limited(result))
    if result.outcome in (Outcome.BUSY, Outcome.DEFERRED):
        raise self.retry(countdown=result.retry_in)
    return result.outcome.value


def _limited(result: Result) -> dict[str, Any]:
    """What a LIMITED occurrence's next attempt carries."""
    return {"slot_ms": result.slot_ms, "limited_since_ms": result.limited_since_ms}


@app.task(name=DELIVER_BATCH, bind=True, max_retries=None, ignore_result=True)
def deliver_batch(self: Task, items: list[list[Any]], shard: int = 0) -> dict[str, int]:
    """Deliver occurrences due together: ``items`` is ``[[prompt_id, occurrence_ms], ...]``,
    all in store shard ``shard``.

    One claim and one commit round trip for the lot; an occurrence whose runner failed,
    or whose prompt was busy, continues as its own ``deliver`` task.
    """
    ctx = scope().shard(int(shard))
    deliveries = [Delivery(str(pid), int(ms), shard=ctx.number) for pid, ms in items]
    try:
        results = engine.deliver_many(get_redis(), ctx, deliveries, stopping=stopping)
    except REDIS_AWAY as exc:
        # Every occurrence stays in flight in Redis; what was committed is skipped again.
        log.warning("Redis unavailable delivering a batch of %d: %s", len(deliveries), exc)
        raise self.retry(countdown=5, exc=exc) from exc
    counts: dict[str, int] = {}
    for d, result in zip(deliveries, results, strict=True):
        counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
        if result.outcome is Outcome.RETRY:
            kwargs = {"attempt": 2, "coalesced_ms": result.occurrence_ms}
            _follow_up(result.delivery or d, result.retry_in, kwargs)
        elif result.outcome is Outcome.LIMITED:
            _follow_up(d, result.retry_in, _limited(result))
        elif result.outcome in (Outcome.BUSY, Outcome.DEFERRED):
            _follow_up(d, result.retry_in, {})
    return counts


def _follow_up(d: Delivery, countdown: float, kwargs: dict[str, Any]) -> None:
    def send(_: Sequence[Delivery]) -> None:
        deliver.apply_async(
            args=(d.prompt_id, d.occurrence_ms),
            kwargs={**d.task_kwargs, **kwargs},
            countdown=countdown,
        )

    hand_over(send, [d])  # if the broker refuses it, it is still in flight: tick re-drives it


@app.task(name="scheduled_prompts.cleanup", ignore_result=True)
def cleanup(days_to_keep: float | None = None) -> str:
    """Delete terminal prompts older than ``days_to_keep`` (default CLEANUP_DAYS)."""
    ctx = scope()
    days = ctx.settings.cleanup_days if days_to_keep is None else days_to_keep
    try:
        return run(retention.report(ctx, days, utcnow()), get_redis(), publish)
    except StoreUnavailable as exc:  # the next hourly run does the work
        log.warning("cleanup skipped: %s", exc)
        return json.dumps({"error": str(exc)})


@app.task(name="scheduled_prompts.hydrate", ignore_result=True)
def hydrate(active_platforms: Iterable[str] | None = None, limit: int | None = None) -> int:
    """Hand surviving occurrences to Celery again (see :func:`hydration.hydrate`)."""
    plan = hydration.hydrate(scope(), utcnow(), active_platforms=active_platforms, limit=limit)
    return run(plan, get_redis(), publish)


@worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    settings = scope().settings
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
