"""Plans: how the library talks to Redis and to Celery, and the two drivers that run them.

A plan is a generator. It yields a step — a :class:`~scheduled_prompts.store.Op` (one
round trip to Redis) or an :class:`Enqueue` (occurrences for the ``deliver`` tasks) —
receives the step's result, and finally returns its value. :func:`run` drives a plan on
a ``redis.Redis``, :func:`arun` on a ``redis.asyncio.Redis``, so every verb, the tick,
hydration, cleanup and the operator operations are written once for both.

The driver is given ``publish`` (the Celery adapter's ``tasks.publish`` in the front
ends): nothing below the front ends imports Celery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .connection import STORE_ERRORS, unavailable
from .occurrences import Delivery, Publish, hand_over
from .store import Op

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

T = TypeVar("T")


@dataclass(frozen=True)
class Enqueue:
    """Hand occurrences (already in flight in Redis) to ``publish``; the result is how
    many it took — 0 when the broker refused them, which tick then re-drives."""

    deliveries: Sequence[Delivery]


Step = Op | Enqueue
Plan = Generator[Step, Any, T]


def run(plan: Plan[T], client: Redis, publish: Publish) -> T:
    """Drive ``plan`` to completion on a synchronous client.

    A Redis error ends the plan as :class:`~scheduled_prompts.errors.StoreUnavailable`.
    """
    try:
        step = next(plan)
        while True:
            if isinstance(step, Enqueue):
                result: Any = hand_over(publish, step.deliveries)
            else:
                try:
                    result = step.run(client)
                except STORE_ERRORS as exc:
                    raise unavailable(exc) from exc
            step = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def arun(plan: Plan[T], client: AsyncRedis, publish: Publish) -> T:
    """Drive ``plan`` to completion on an asyncio client; ``publish`` runs in a thread,
    so a slow broker never blocks the loop."""
    try:
        step = next(plan)
        while True:
            if isinstance(step, Enqueue):
                result: Any = await asyncio.to_thread(hand_over, publish, step.deliveries)
            else:
                try:
                    result = await step.arun(client)
                except STORE_ERRORS as exc:
                    raise unavailable(exc) from exc
            step = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
