"""Occurrences as the engine hands them around: keys, promotion, re-drive deadlines."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from . import store
from ._time import from_ms, to_ms
from .store import Scope

log = logging.getLogger("scheduled_prompts.occurrences")

#: Extra time past the lease before an unfinished occurrence is re-driven.
REDRIVE_SLACK = timedelta(seconds=30)
#: How long before its earliest occurrence a task is sent to the worker: it claims its
#: occurrences and reads their records meanwhile, then holds each until its own time
#: (``engine._when_due``), so what Celery's timer and the claim take is not lateness.
SEND_AHEAD = timedelta(milliseconds=10)


@dataclass(frozen=True)
class Delivery:
    """One occurrence to hand to a ``deliver`` task.

    A scheduled occurrence is named by its due instant. A ``trigger`` is an extra
    delivery asked for at that instant. A ``detached`` one is a run of a cron prompt
    with ``overlap="allow"``: started at its nominal time (``occurrence_ms``) while the
    schedule moved on, it is delivered under a lease of its own. ``shard`` is the store
    shard holding the prompt (0 with one).
    """

    prompt_id: str
    occurrence_ms: int
    trigger: bool = False
    detached: bool = False
    shard: int = 0

    @cached_property
    def key(self) -> str:
        """The in-flight key: ``{id}:{ms}``, ``{id}:trigger:{ms}`` or ``{id}:{ms}:run``
        (the trigger's is its idempotency key too). Worked out once: a delivery names
        its key at every step."""
        if self.detached:
            return f"{self.prompt_id}:{self.occurrence_ms}:run"
        middle = ":trigger" if self.trigger else ""
        return f"{self.prompt_id}{middle}:{self.occurrence_ms}"

    @classmethod
    def from_key(cls, key: str, shard: int = 0) -> Delivery:
        if key.endswith(":run"):  # no other key ends in letters: they end in the ms
            head, _, ms = key[: -len(":run")].rpartition(":")
            return cls(head, int(ms), detached=True, shard=shard)
        head, _, ms = key.rpartition(":")
        if head.endswith(":trigger"):
            return cls(head[: -len(":trigger")], int(ms), trigger=True, shard=shard)
        return cls(head, int(ms), shard=shard)

    @property
    def scheduled(self) -> bool:
        """Whether this is the occurrence the record's ``next_run_at`` names (claimed
        only while it does), not a trigger or a detached run."""
        return not (self.trigger or self.detached)

    @property
    def lease_name(self) -> str:
        """Whose lease a claim takes: the prompt's, or a detached run's own."""
        return self.key if self.detached else self.prompt_id

    @property
    def task_kwargs(self) -> dict[str, bool | int]:
        """What a ``deliver`` task gets besides the id and ms (nothing for a scheduled
        occurrence in shard 0: the message a single Redis has always sent)."""
        kwargs: dict[str, bool | int] = {"shard": self.shard} if self.shard else {}
        if self.trigger:
            kwargs["trigger"] = True
        elif self.detached:
            kwargs["detached"] = True
        return kwargs

    @property
    def eta(self) -> datetime:
        """When the occurrence is due (its runner is called then, not before)."""
        return from_ms(self.occurrence_ms)

    @property
    def send_at(self) -> datetime:
        """When its task goes to the worker: :data:`SEND_AHEAD` before it is due."""
        return self.eta - SEND_AHEAD


#: Sends occurrences to the ``deliver`` tasks (``tasks.publish``, the Celery adapter's).
Publish = Callable[[Sequence[Delivery]], None]


def hand_over(publish: Publish, deliveries: Sequence[Delivery]) -> int:
    """``publish(deliveries)``; returns how many went (0 when the broker refused them).

    The occurrences are already in flight in Redis: a broker that is down is logged, not
    raised, and tick re-drives them once their deadline passes.
    """
    if not deliveries:
        return 0
    try:
        publish(deliveries)
    except Exception as exc:  # kombu raises many kinds of connection errors
        log.warning(
            "could not publish %d delivery task(s) (%s); tick will re-drive them",
            len(deliveries),
            exc,
        )
        return 0
    return len(deliveries)


def horizon_ms(ctx: Scope, now: datetime) -> int:
    """The end of the promotion horizon, in epoch milliseconds."""
    return to_ms(now) + int(ctx.settings.horizon_seconds * 1000)


def redrive_delay(ctx: Scope) -> int:
    """Milliseconds after an occurrence (or a claim) before it may be re-driven."""
    return int((ctx.settings.lease_seconds + REDRIVE_SLACK.total_seconds()) * 1000)


def promote_op(ctx: Scope, now: datetime, ids: Sequence[str] = (), limit: int = 1000) -> store.Eval:
    """The PROMOTE call for occurrences due within the horizon (only ``ids`` if given)."""
    return store.Eval(
        store.PROMOTE,
        [ctx.keys.due, ctx.keys.inflight],
        [horizon_ms(ctx, now), limit, redrive_delay(ctx), to_ms(now), *ids],
    )


def parse_promoted(rows: Sequence[Any], shard: int = 0) -> list[Delivery]:
    """The deliveries of a PROMOTE result (its first element is the count it took) in
    ``shard``."""
    return [Delivery(str(rows[i]), int(rows[i + 1]), shard=shard) for i in range(1, len(rows), 2)]


#: Promoted occurrences (PROMOTE takes :data:`~scheduled_prompts.store.PROMOTE_LOT` a
#: call, to keep each call short) are published in groups of up to this many, so those
#: due together still go in tasks of ``DELIVER_BATCH_SIZE``: fewer tasks for the worker
#: to receive, run and report (docs/decisions.md, "Publishing promoted occurrences").
PUBLISH_LOT = 1_000


#: Occurrences due together are spread over at least this many tasks (pool processes run
#: them side by side) ...
SPREAD_TASKS = 4
#: ... as long as each task gets this many: fewer are not worth a task of their own.
SPREAD_SHARE = 50


def batches(deliveries: Sequence[Delivery], size: int, window_ms: int) -> list[list[Delivery]]:
    """Group occurrences due close together, for one ``deliver_batch`` task each.

    Sorted by due time, a window takes occurrences while they are due within
    ``window_ms`` of its first. A window is sent as :func:`split_count` tasks of at most
    ``size``, of equal shares in due order: a few hundred due at once go to
    :data:`SPREAD_TASKS` tasks that pool processes run side by side, thousands go in
    batches of ``size`` (fewer tasks to publish and to run). A group is sent for its
    earliest occurrence, and the worker holds each of the others until its own time
    (``engine._when_due``): none fires early, none waits for the latest. Triggers (one
    extra delivery, sent as it is asked for), detached runs and ``size`` 1 give one group
    each; a group holds one shard's occurrences.
    """
    groups: list[list[Delivery]] = []
    windows: list[list[Delivery]] = []
    current: dict[int, list[Delivery]] = {}  # by shard
    for d in sorted(deliveries, key=lambda d: d.occurrence_ms):
        if not d.scheduled or size <= 1:
            groups.append([d])
            continue
        window = current.get(d.shard)
        if window and d.occurrence_ms - window[0].occurrence_ms > window_ms:
            windows.append(window)
            window = None
        if not window:
            window = current[d.shard] = []
        window.append(d)
    windows += [window for window in current.values() if window]
    for window in windows:
        tasks = split_count(len(window), size)
        share, extra = divmod(len(window), tasks)
        at = 0
        for i in range(tasks):
            end = at + share + (1 if i < extra else 0)
            groups.append(window[at:end])
            at = end
    return groups


def split_count(n: int, size: int) -> int:
    """How many tasks ``n`` occurrences due together go in: enough for at most ``size``
    each, and up to :data:`SPREAD_TASKS` while each keeps :data:`SPREAD_SHARE`."""
    return max(-(-n // size), min(SPREAD_TASKS, -(-n // SPREAD_SHARE)))
