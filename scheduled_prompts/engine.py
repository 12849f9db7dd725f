"""The firing engine as plain functions: promote, tick, claim, deliver, commit.

The life of one occurrence (see docs/design.md):

1. A live prompt sits in the due index, scored by its next occurrence.
2. Within ``horizon`` of it, :func:`promote` (called by ``tick``, and right after a
   write) moves it atomically to the in-flight set and a ``deliver`` ETA task is
   published. The in-flight entry carries a re-drive deadline.
3. ``deliver`` claims the occurrence (lease) only while the record still schedules it,
   calls the runner, then commits atomically: the record moves on and the claim ends.
   Occurrences due together travel in one ``deliver_batch`` task: one claim and one
   commit round trip for the lot (``claims.py``).
4. If the task is lost or its worker dies, the deadline passes and ``tick`` re-drives it.

Time is a parameter everywhere (``now=``); Celery lives in ``tasks.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis

from . import metrics, shards, store
from ._time import from_ms, to_iso, to_ms, utcnow
from .claims import DONE_TTL, Change, Claimed, Claims
from .errors import DeliveryError, PermanentDeliveryError, RunnerNotConfigured
from .metrics import Batch, Observation, tick_increments
from .models import Kind, Overlap, ScheduledPrompt, Status
from .occurrences import (
    PUBLISH_LOT,
    SEND_AHEAD,
    Delivery,
    Publish,
    parse_promoted,
    promote_op,
    redrive_delay,
)
from .outcomes import Outcome, Result
from .plans import Enqueue, Plan, run
from .runners import call_runner, get_runner
from .schedules import NO_OFFSET, fires_after, first_cron_run, parse_cron
from .store import Scope

__all__ = [
    "DONE_TTL",
    "Outcome",
    "Result",
    "backoff",
    "deliver",
    "deliver_many",
    "siblings",
    "tick",
    "tick_plan",
]

log = logging.getLogger("scheduled_prompts.engine")


def tick(
    client: redis.Redis, ctx: Scope, publish: Publish, now: datetime | None = None
) -> dict[str, int]:
    """Run :func:`tick_plan` on ``client`` (what beat's ``scheduled_prompts.tick`` does)."""
    return run(tick_plan(ctx, now or utcnow()), client, publish)


def tick_plan(ctx: Scope, now: datetime) -> Plan[dict[str, int]]:
    """Promote what is due within the horizon and re-drive what overran its deadline, in
    every shard.

    Costs O(shards + due + overdue): both are range reads on sorted sets, every shard's
    in one round trip (per node). A broker that refuses the occurrences never fails a
    tick: they stay in flight and the next ticks re-drive them.
    """
    started = time.perf_counter()
    every = ctx.every_shard()
    promoted = redriven = 0
    pending, lot = every, store.PROMOTE_LOT
    gathered: list[Delivery] = []
    while pending:  # a shard with a whole lot taken may have more within the horizon
        replies = yield from shards.each([promote_op(s, now, limit=lot) for s in pending])
        batch = [d for s, rows in zip(pending, replies, strict=True)
                 for d in parse_promoted(rows, s.number)]  # fmt: skip
        gathered += batch
        promoted += len(batch)
        taken = [int(rows[0]) for rows in replies]
        pending = [s for s, n in zip(pending, taken, strict=True) if n >= lot]
        if gathered and (len(gathered) >= PUBLISH_LOT or not pending):
            yield Enqueue(gathered)
            gathered = []
    deadline = to_ms(now) + redrive_delay(ctx)
    pending = every
    while pending:
        redrive = [store.Eval(store.REDRIVE, [s.keys.inflight], [to_ms(now), 1000, deadline])
                   for s in pending]  # fmt: skip
        replies = yield from shards.each(redrive)
        batch = [Delivery.from_key(store.as_text(k), s.number)
                 for s, keys in zip(pending, replies, strict=True) for k in keys]  # fmt: skip
        if batch:
            log.warning("re-driving %d occurrence(s) past their deadline", len(batch))
            yield Enqueue(batch)
        redriven += len(batch)
        pending = [s for s, keys in zip(pending, replies, strict=True) if len(keys) >= 1000]
    counts = Batch()
    took = counts.add(tick_increments(time.perf_counter() - started))
    # The tick is recorded in shard 0; every other shard says whether its counts are whole.
    first, *others = every
    keys = [first.keys.beat, first.keys.metrics, first.keys.counts]
    whole = [(yield store.Eval(store.TICKED, keys, [to_ms(now), took, counts.fields()]))]
    if others:
        whole += yield store.Commands([("HEXISTS", s.keys.counts, "counted") for s in others])
    for shard, counted in zip(every, whole, strict=True):
        if not int(counted):
            # Data from before the status counts (or a recount asked for): a few pages a tick.
            yield from metrics.recount(shard, now, pages=metrics.RECOUNT_PAGES_PER_TICK)
    return {"promoted": promoted, "redriven": redriven}


def backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based): 2, 4, 8, … capped at 5 min."""
    return float(min(300, 2**attempt))


def deliver(
    client: redis.Redis,
    ctx: Scope,
    delivery: Delivery,
    *,
    attempt: int = 1,
    coalesced_ms: int | None = None,
    now: datetime | None = None,
    slot_ms: int | None = None,
    limited_since_ms: int | None = None,
) -> Result:
    """Deliver one occurrence: claim, re-check, call the runner, commit.

    ``coalesced_ms`` is the occurrence a first attempt chose when coalescing; a retry
    passes it so its payload (and idempotency key) stays that of the first attempt. An
    attempt after a LIMITED one passes the rate slot it holds (``slot_ms``) and when it
    was first held back (``limited_since_ms``: the misfire grace is judged then).
    """
    waiting = Waiting(slot_ms, limited_since_ms)
    (result,) = _deliver(
        client, ctx, [delivery], attempt, coalesced_ms, fixed_now=now, waiting=waiting
    )
    return result


@dataclass(frozen=True)
class Waiting:
    """What an occurrence held back by a platform limit carries to its next attempt."""

    slot_ms: int | None = None
    since_ms: int | None = None


def deliver_many(
    client: redis.Redis,
    ctx: Scope,
    deliveries: Sequence[Delivery],
    *,
    now: datetime | None = None,
    stopping: Callable[[], bool] | None = None,
) -> list[Result]:
    """Deliver first attempts of several occurrences: one claim and one commit round trip.

    Each occurrence gets exactly what :func:`deliver` would give it; the results are in
    the order of ``deliveries``. Runners are called one after the other; finished outcomes
    are committed together at the end, or before a runner call that would make them
    wait longer than :data:`COMMIT_EVERY` (judged by the previous call's duration), so
    slow runners commit one by one and fast ones in one round trip.

    Once ``stopping()`` is true (the worker is shutting down), no further runner call
    starts: what is finished is committed, the rest is released and returned as
    ``DEFERRED`` for the caller to send again. A warm shutdown then waits for one runner
    call, not for a whole batch. The same happens after a runner call that took
    :data:`SPLIT_AFTER` or more: slow runners (agent runs) then go on as tasks of their
    own, in parallel on the pool, instead of one after the other in this batch.
    """
    return _deliver(client, ctx, deliveries, 1, None, fixed_now=now, stopping=stopping)


def siblings(client: redis.Redis, ctx: Scope, delivery: Delivery, limit: int) -> list[Delivery]:
    """Up to ``limit`` other occurrences due at the same instant, waiting in flight for
    tasks of their own (published one by one, as writes do for what is due soon); one
    more when ``delivery`` itself was taken by another task already (its batch has room).

    They share the in-flight deadline PROMOTE gave ``delivery`` (its occurrence plus the
    re-drive delay); one claimed meanwhile has a later deadline and is not returned. Those
    returned get the deadline a claim gives, in the same step, so tasks looking at once
    (one per pool process) take different ones. A ``deliver`` task takes them along in
    one batch; their own tasks then find them done.
    """
    deadline = delivery.occurrence_ms + redrive_delay(ctx)
    # The deadline a claim gives, and never the shared one (a lookup at the very
    # millisecond of the occurrence would leave what it took findable).
    claimed = max(to_ms(utcnow()) + redrive_delay(ctx), deadline + 1)
    keys = store.Eval(
        store.SIBLINGS,
        [ctx.keys.inflight],
        [deadline, limit, delivery.occurrence_ms, delivery.key, claimed],
    ).run(client)
    return [Delivery.from_key(store.as_text(k), ctx.number) for k in keys]


#: Longest a finished outcome waits for the rest of its batch before it is committed.
#: It bounds what a crash between runner return and commit can repeat in a batch.
COMMIT_EVERY = 0.05
#: A runner call at least this long (seconds) hands the rest of its batch back, each
#: occurrence to be sent as a task of its own (``DEFERRED``): slow runners run in
#: parallel on the pool rather than waiting for each other.
SPLIT_AFTER = 1.0


def _deliver(
    client: redis.Redis,
    ctx: Scope,
    deliveries: Sequence[Delivery],
    attempt: int,
    coalesced_ms: int | None,
    *,
    fixed_now: datetime | None,
    stopping: Callable[[], bool] | None = None,
    waiting: Waiting | None = None,
) -> list[Result]:
    claims = Claims(client, ctx)
    waiting = waiting or Waiting()
    claimed_at = fixed_now or utcnow()
    slots = [waiting.slot_ms] * len(deliveries)
    taken = claims.claim(deliveries, claimed_at, slots)
    since = waiting.since_ms if waiting.since_ms is not None else to_ms(claimed_at)
    results: list[Result | None] = [
        (dataclasses.replace(r, limited_since_ms=since) if r.outcome is Outcome.LIMITED else r)
        if isinstance(r, Result)
        else None
        for r in taken
    ]
    held = [(i, c) for i, c in enumerate(taken) if isinstance(c, Claimed)]
    with claims.kept():
        _run_held(
            claims,
            held,
            results,
            attempt=attempt,
            coalesced_ms=coalesced_ms,
            fixed_now=fixed_now,
            stopping=stopping,
            waiting=waiting,
        )
    return [r if r is not None else Result(Outcome.SKIPPED) for r in results]


def _run_held(
    claims: Claims,
    held: list[tuple[int, Claimed]],
    results: list[Result | None],
    *,
    attempt: int,
    coalesced_ms: int | None,
    fixed_now: datetime | None,
    stopping: Callable[[], bool] | None,
    waiting: Waiting,
) -> None:
    """Run the claimed occurrences one after the other, committing as they finish."""
    pending: list[tuple[int, Claimed, Change, Result, Observation]] = []
    oldest = last_call = 0.0
    for n, (i, claimed) in enumerate(held):
        if (stopping is not None and stopping()) or last_call >= SPLIT_AFTER:
            for j, rest in held[n:]:
                claims.release(rest.delivery, None)
                results[j] = Result(Outcome.DEFERRED)
            break
        # Commit what is finished before a call that may take long (going by the last).
        if pending and time.monotonic() - oldest + last_call >= COMMIT_EVERY:
            _commit(claims, pending, results)
            pending = []
        # Runners may take long: keep the leases of what is still to run or to commit;
        # one that ran out (another deliverer may hold it now) is not delivered here.
        if claims.renewal_due:
            claims.renew()
        if claimed.delivery.key in claims.lost:
            log.warning("lease of %s ran out before its delivery", claimed.delivery.key)
            results[i] = Result(Outcome.SKIPPED, error="lease ran out before the delivery")
            continue
        now = fixed_now or _when_due(claimed.delivery, claims.ctx)
        started = time.monotonic()
        step = _run_one(
            claims,
            claimed,
            attempt,
            coalesced_ms,
            now,
            limited_since_ms=waiting.since_ms,
            fixed_now=fixed_now is not None,
        )
        last_call = time.monotonic() - started
        if isinstance(step, Result):
            results[i] = step
            continue
        if not pending:
            oldest = time.monotonic()
        pending.append((i, *step))
    _commit(claims, pending, results)


#: The longest a task is sent ahead of its first occurrence, in seconds.
SEND_AHEAD_S = SEND_AHEAD.total_seconds()


def _when_due(delivery: Delivery, ctx: Scope) -> datetime:
    """Now, once ``delivery`` is due: a task is sent a little ahead of its earliest
    occurrence (``SEND_AHEAD``), and the others of a batch are due within the batch
    window after it, so each is held until its own time: none is called early and none
    waits for the latest of its batch. Never holds longer than the window and the lead
    (an occurrence sent early by more is a clock apart: called at once)."""
    now = utcnow()
    early = (delivery.occurrence_ms - to_ms(now)) / 1000
    if 0 < early <= ctx.settings.deliver_batch_window_ms / 1000 + SEND_AHEAD_S:
        time.sleep(early)
        now = utcnow()
    return now


def _commit(
    claims: Claims,
    pending: list[tuple[int, Claimed, Change, Result, Observation]],
    results: list[Result | None],
) -> None:
    if not pending:
        return
    records = claims.commit(
        [(claimed, change) for _, claimed, change, _, _ in pending],
        [observation for *_, observation in pending],
    )
    for (i, _, _, result, _), record in zip(pending, records, strict=True):
        results[i] = result.with_record(record)


def _run_one(
    claims: Claims,
    claimed: Claimed,
    attempt: int,
    coalesced_ms: int | None,
    now: datetime,
    *,
    limited_since_ms: int | None = None,
    fixed_now: bool = False,
) -> Result | tuple[Claimed, Change, Result, Observation]:
    """Decide and run one claimed occurrence: a final Result (nothing to commit), or the
    claim to commit (the detached run's, for ``overlap="allow"``) with its change, the
    Result it stands for and what it adds to the metrics.
    Held back by a platform limit since ``limited_since_ms``: the misfire grace is judged
    at that time (waiting for a limit does not make an occurrence missed)."""
    record, delivery = claimed.record, claimed.delivery
    kind = "trigger" if delivery.trigger else record.kind.value
    offset = NO_OFFSET if delivery.trigger else record.offset
    occurrence = _nominal(record, delivery, coalesced_ms, now, offset)
    fire = occurrence + offset
    # Where the schedule goes is decided when the runner call ends (scheduled cron).
    moves_on = delivery.scheduled and record.kind is Kind.CRON
    error = None
    if record.misfire_grace_seconds is not None:
        error = _misfire(
            record, delivery, occurrence, now, attempt=attempt, since_ms=limited_since_ms
        )
    if error is not None:
        log.warning("prompt %s %s", record.id, error)
        after = _after(record, occurrence, now) if moves_on else None
        missed = Observation(
            "skipped", record.platform, kind, error=error, **_about(record, delivery, occurrence)
        )
        return (
            claimed,
            _finisher(delivery, now, occurrence, False, error, after=after),
            Result(Outcome.MISSED, error=error),
            missed,
        )
    try:
        runner = get_runner(record.platform)
    except (RunnerNotConfigured, ValueError) as exc:
        log.error("cannot deliver %s: %s", delivery.key, exc)
        claims.release(delivery, None)
        return Result(Outcome.NO_RUNNER, error=str(exc))
    key = delivery.key if delivery.trigger else f"{record.id}:{to_ms(occurrence)}"
    payload = build_payload(record, key, occurrence, now, attempt, fire_at=fire)
    if delivery.detached:
        payload["run_number"] = record.run_count  # counted when it started
    elif moves_on and record.overlap is Overlap.ALLOW:
        run = _detach(claims, claimed, occurrence, now)
        if run is None:  # the record changed since the claim: claim it again shortly
            return Result(Outcome.BUSY, retry_in=0.2)
        claimed, delivery, moves_on = run, run.delivery, False
    started_at = time.monotonic()

    def observed(
        outcome: str, late: bool, error: str | None = None, skipped: int = 0
    ) -> Observation:
        return Observation(
            outcome,
            record.platform,
            kind,
            lateness=(now - fire).total_seconds() if late else None,
            runner_seconds=time.monotonic() - started_at,
            error=error,
            skipped=skipped,
            **_about(record, delivery, occurrence),
        )

    try:
        call_runner(runner, payload)
    except Exception as exc:
        error = _without_prompt(f"{type(exc).__name__}: {exc}", record)[:500]
        permanent = isinstance(exc, PermanentDeliveryError)
        if not permanent and attempt <= claims.ctx.settings.max_retries:
            retry_in = backoff(attempt)
            log.warning(
                "runner failed for %s (attempt %d), retry in %.0fs: %s",
                key,
                attempt,
                retry_in,
                error,
            )
            retried = observed("retried", late=False, error=error)
            claims.release(delivery, now + timedelta(seconds=retry_in), counted=retried)
            return Result(
                Outcome.RETRY,
                retry_in=retry_in,
                error=error,
                occurrence_ms=to_ms(occurrence),
                delivery=delivery if delivery.detached else None,
            )
        if not isinstance(exc, DeliveryError | PermanentDeliveryError):
            log.exception("runner raised for %s", key)
        log.error("giving up on %s after %d attempt(s): %s", key, attempt, error)
        after = _after_run(record, occurrence, now, started_at, fixed_now) if moves_on else None
        return (
            claimed,
            _finisher(delivery, now, occurrence, False, error, after=after),
            Result(Outcome.FAILED, error=error),
            observed("failed", late=True, error=error, skipped=_skips(record, after, False)),
        )
    if moves_on:
        after = _after_run(record, occurrence, now, started_at, fixed_now)
        delivered = observed("delivered", late=True, skipped=_skips(record, after, True))
    else:
        after, delivered = None, observed("delivered", late=True)
    return (
        claimed,
        _finisher(delivery, now, occurrence, True, None, after=after),
        Result(Outcome.DELIVERED),
        delivered,
    )


def _after_run(
    record: ScheduledPrompt, occurrence: datetime, now: datetime, started: float, fixed: bool
) -> After:
    """:func:`_after` once the runner call that started at ``started`` (monotonic) ended;
    with a ``fixed`` ``now`` (tests, benchmarks), the call's length is added to it."""
    took = timedelta(seconds=time.monotonic() - started)
    return _after(record, occurrence, now + took if fixed else max(now, utcnow()))


def _nominal(
    record: ScheduledPrompt,
    delivery: Delivery,
    coalesced_ms: int | None,
    now: datetime,
    offset: timedelta,
) -> datetime:
    """The occurrence's nominal time (the key's and the payload's "occurrence"). With
    jitter it fires ``record.offset`` later: the due index holds that instant. A cron
    prompt's scheduled occurrence is coalesced with any later one already due; a retry
    keeps the one its first attempt chose (``coalesced_ms``)."""
    if coalesced_ms is not None:
        return from_ms(coalesced_ms)
    occurrence = from_ms(delivery.occurrence_ms)
    if not delivery.scheduled:
        return occurrence  # a trigger's request time, a detached run's nominal time
    occurrence -= offset
    if record.kind is Kind.CRON:
        occurrence = _latest_missed(record, occurrence, now - offset)
    return occurrence


def _misfire(
    record: ScheduledPrompt,
    delivery: Delivery,
    occurrence: datetime,
    now: datetime,
    *,
    attempt: int,
    since_ms: int | None,
) -> str | None:
    """Why the occurrence is missed (later than ``misfire_grace_seconds``), or None.

    Only a first attempt can be a misfire: a retry is late because the runner failed,
    and a detached run started in time.
    """
    grace = record.misfire_grace_seconds
    if attempt != 1 or not delivery.scheduled or grace is None:
        return None
    # A one-time prompt's lateness counts from its own time, even when resumed late.
    reference = occurrence + record.offset
    if record.kind is Kind.ONCE and record.schedule_time is not None:
        reference = record.schedule_time + record.offset
    # Held back by a platform limit since ``since_ms``: judged then.
    seen = now if since_ms is None else min(now, from_ms(since_ms))
    late = (seen - reference).total_seconds()
    if late <= grace:
        return None
    return (
        f"missed the occurrence at {to_iso(occurrence)}: {late:.1f}s late, "
        f"more than misfire_grace_seconds={grace:g}"
    )


def _detach(
    claims: Claims, claimed: Claimed, occurrence: datetime, now: datetime
) -> Claimed | None:
    """Start an ``overlap="allow"`` occurrence as a run of its own: the record moves on
    (and counts the run) now, so the next occurrence comes due on time while it runs."""
    record = claimed.record
    after = _after(record, occurrence, now)
    moved = _finish(
        record, claimed.delivery, now, occurrence, delivered=True, error=None, after=after
    )
    return claims.detach(claimed, moved, to_ms(occurrence), now)


def _about(record: ScheduledPrompt, delivery: Delivery, occurrence: datetime) -> dict[str, Any]:
    """The prompt and occurrence fields of a step's :class:`Observation`."""
    return {
        "prompt_id": record.id,
        "user_id": record.user_id,
        "occurrence_ms": to_ms(occurrence),
        "trigger": delivery.trigger,
    }


def _finisher(
    delivery: Delivery,
    now: datetime,
    occurrence: datetime,
    delivered: bool,
    error: str | None,
    *,
    after: After | None,
) -> Change:
    return lambda record: _finish(
        record, delivery, now, occurrence, delivered=delivered, error=error, after=after
    )


def build_payload(
    record: ScheduledPrompt,
    key: str,
    occurrence: datetime,
    now: datetime,
    attempt: int,
    *,
    fire_at: datetime | None = None,
) -> dict[str, Any]:
    """The runner payload (JSON-safe): what a runner receives for one occurrence.
    ``occurrence`` is its nominal time, ``fire_at`` when it was to fire (later by the
    prompt's jitter; the same without), which lateness counts from."""
    fire_at = occurrence if fire_at is None else fire_at
    nominal = to_iso(occurrence)
    return {
        "type": "scheduled_prompt",
        "prompt_id": record.id,
        "idempotency_key": key,
        "occurrence": nominal,
        "fire_at": nominal if fire_at == occurrence else to_iso(fire_at),
        "fired_at": to_iso(now),
        "lateness_seconds": round((now - fire_at).total_seconds(), 3),
        "attempt": attempt,
        "run_number": record.run_count + 1,
        "kind": record.kind.value,
        "prompt": record.prompt,
        "user_id": record.user_id,
        "platform": record.platform,
        "channel_id": record.channel_id,
        "metadata": record.metadata,
        # A runner hands this to the tools as ToolContext(in_scheduled_run=True), so a
        # scheduled run cannot schedule more prompts.
        "in_scheduled_run": True,
    }


def _without_prompt(text: str, record: ScheduledPrompt) -> str:
    """An error text safe to log and store: a runner's message may quote the prompt."""
    if len(record.prompt) >= 8 and record.prompt in text:
        text = text.replace(record.prompt, "<prompt text>")
    return text


def _latest_missed(record: ScheduledPrompt, occurrence: datetime, now: datetime) -> datetime:
    """Coalescing: the latest occurrence at or before ``now``, starting from ``occurrence``."""
    assert record.cron_expression is not None
    schedule = parse_cron(record.cron_expression, record.timezone)
    latest = occurrence
    # Start near now when far behind, so a long outage costs a bounded walk.
    cursor = max(occurrence, now - timedelta(hours=25))
    for following in itertools.islice(fires_after(schedule, cursor, end_at=record.end_at), 2000):
        if following > now:
            break
        latest = following
    return latest


#: Occurrences counted one by one when a run outlasts its schedule's interval; beyond
#: (a run longer than about 69 days of an every-minute schedule) the count stops there.
MAX_OVERLAP_WALK = 100_000


@dataclass(frozen=True)
class After:
    """Where a cron prompt's schedule goes once an occurrence's runner call ended."""

    #: The next occurrence's fire instant (None: the schedule has no more).
    fire: datetime | None
    #: Occurrences that came due while it ran and are not delivered (``overlap``).
    skipped: int = 0


def _after(record: ScheduledPrompt, occurrence: datetime, ended: datetime) -> After:
    """The next occurrence after ``occurrence`` (its runner call over at ``ended``)
    under the prompt's overlap policy.

    Occurrences that came due before its first attempt was claimed were coalesced into
    this one (``_latest_missed``), so every later one came due while it ran (its
    retries included): those are skipped (``skip``), or the latest of them is delivered
    now (``buffer_one``: its instant is in the past, so it is due at once). ``allow``
    prompts detach their runs as they start (``ended`` is ``now``), so none came due.
    """
    assert record.cron_expression is not None
    schedule = parse_cron(record.cron_expression, record.timezone)
    offset, end_at = record.offset, record.end_at
    # Asked from the occurrence: the same question for every prompt of this schedule
    # firing now, so it is remembered (``next_cron_run``'s cache).
    later = fires_after(schedule, occurrence, end_at=end_at, offset=offset)
    fire = next(later, None)
    if fire is None or fire > ended:
        return After(fire)  # the usual case: nothing came due while it ran
    came, latest = 0, fire
    while fire is not None and fire <= ended and came < MAX_OVERLAP_WALK:
        came, latest = came + 1, fire
        fire = next(later, None)
    if fire is not None and fire <= ended:
        fire = first_cron_run(schedule, ended, end_at=end_at, offset=offset)
    if record.overlap is Overlap.BUFFER_ONE:
        return After(latest, came - 1)
    return After(fire, came)


def _skips(record: ScheduledPrompt, after: After | None, delivered: bool) -> int:
    """The occurrences ``after`` skips, if the schedule goes on after this run."""
    if after is None or not after.skipped:
        return 0
    runs = record.scheduled_runs + (1 if delivered else 0)
    return 0 if record.max_runs is not None and runs >= record.max_runs else after.skipped


def _finish(
    record: ScheduledPrompt,
    delivery: Delivery,
    now: datetime,
    occurrence: datetime,
    *,
    delivered: bool,
    error: str | None,
    after: After | None,
) -> ScheduledPrompt:
    """The record after an occurrence was delivered, missed, or failed for good (or,
    for ``overlap="allow"``, as its detached run starts: counted as a run then)."""
    changes: dict[str, Any] = {"updated_at": now, "version": record.version + 1}
    if error is not None:
        changes["last_error"] = error
        changes["failure_count"] = record.failure_count + 1
    if delivery.detached:
        return record.replace(**changes)  # counted, and the schedule moved, at its start
    if delivered:
        changes["run_count"] = record.run_count + 1
        changes["last_execution"] = now
    if delivery.trigger:
        if delivered:
            changes["trigger_count"] = record.trigger_count + 1
        return record.replace(**changes)
    holds = record.is_live and record.next_run_at == from_ms(delivery.occurrence_ms)
    if not holds:
        # Cancelled, paused or rescheduled while the runner ran: keep the new schedule.
        return record.replace(**changes)
    if record.kind is Kind.ONCE:
        changes["status"] = Status.EXECUTED if delivered else Status.FAILED
        changes["next_run_at"] = None
        return record.replace(**changes)
    assert after is not None
    runs = record.scheduled_runs + (1 if delivered else 0)
    fire = None
    if record.max_runs is None or runs < record.max_runs:
        fire = after.fire
        if after.skipped:
            changes["skipped_runs"] = record.skipped_runs + after.skipped
    if fire is None:
        changes["status"] = Status.EXECUTED
    changes["next_run_at"] = fire
    return record.replace(**changes)
