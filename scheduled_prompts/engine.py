"""The firing engine as plain functions: promote, tick, claim, deliver, commit.

The life of one occurrence (see docs/design.md):

1. A live prompt sits in the due index, scored by its next occurrence.
2. Within ``horizon`` of it, :func:`promote` (called by ``tick``, and right after a
   write) moves it atomically to the in-flight set and a ``deliver`` ETA task is
   published. The in-flight entry carries a re-drive deadline.
3. ``deliver`` claims the occurrence (lease) only while the record still schedules it,
   calls the runner, then commits atomically: the record moves on and the claim ends.
4. If the task is lost or its worker dies, the deadline passes and ``tick`` re-drives it.

Time is a parameter everywhere (``now=``); Celery lives in ``tasks.py``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import redis

from . import store
from ._time import from_ms, to_iso, to_ms, utcnow
from .errors import DeliveryError, PermanentDeliveryError, RunnerNotConfigured
from .models import SCHEMA_VERSION, Kind, RecordError, ScheduledPrompt, Status
from .occurrences import Delivery, Publish, parse_promoted, promote_op, redrive_delay
from .runners import call_runner, get_runner
from .schedules import next_cron_run, parse_cron
from .store import Context

log = logging.getLogger("scheduled_prompts.engine")

#: How long a delivered trigger's marker is kept (duplicate messages arrive within it).
DONE_TTL = timedelta(days=7)
_CAS_ATTEMPTS = 50


def tick(
    client: redis.Redis, ctx: Context, publish: Publish, now: datetime | None = None
) -> dict[str, int]:
    """Promote what is due within the horizon and re-drive what overran its deadline.

    Costs O(due + overdue): both are range reads on sorted sets.
    """
    now = now or utcnow()
    promoted = 0
    while True:
        rows = promote_op(ctx, now, limit=1000).run(client)
        batch = parse_promoted(rows)
        if batch:
            _publish(publish, batch)
        promoted += len(batch)
        if int(rows[0]) < 1000:  # the due index has nothing more within the horizon
            break
    redriven = 0
    deadline = to_ms(now) + redrive_delay(ctx)
    while True:
        keys = store.Eval(store.REDRIVE, [ctx.keys.inflight], [to_ms(now), 1000, deadline]).run(
            client
        )
        batch = [Delivery.from_key(str(k)) for k in keys]
        if batch:
            log.warning("re-driving %d occurrence(s) past their deadline", len(batch))
            _publish(publish, batch)
        redriven += len(batch)
        if len(batch) < 1000:
            break
    client.set(ctx.keys.beat, to_ms(now))
    return {"promoted": promoted, "redriven": redriven}


def _publish(publish: Publish, batch: Sequence[Delivery]) -> None:
    # The occurrences are already in flight in Redis: if the broker refuses them now, the
    # next ticks re-drive them past their deadline. A tick never fails for a broker error.
    try:
        publish(batch)
    except Exception as exc:  # kombu raises many kinds of connection errors
        log.warning("could not publish %d delivery task(s): %s", len(batch), exc)


class Outcome(StrEnum):
    DELIVERED = "delivered"
    SKIPPED = "skipped"  # stale, gone, already done: nothing to do
    BUSY = "busy"  # another deliverer holds the lease
    RETRY = "retry"  # runner failed, retry later
    FAILED = "failed"  # runner failed for good: recorded
    MISSED = "missed"  # later than misfire_grace_seconds: recorded, not delivered
    NO_RUNNER = "no_runner"  # left pending


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    retry_in: float = 0.0
    error: str | None = None
    record: ScheduledPrompt | None = None
    #: The occurrence delivered (after coalescing); retries pass it back unchanged.
    occurrence_ms: int | None = None


def backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based): 2, 4, 8, … capped at 5 min."""
    return float(min(300, 2**attempt))


def deliver(
    client: redis.Redis,
    ctx: Context,
    delivery: Delivery,
    *,
    attempt: int = 1,
    coalesced_ms: int | None = None,
    now: datetime | None = None,
) -> Result:
    """Deliver one occurrence: claim, re-check, call the runner, commit.

    ``coalesced_ms`` is the occurrence a first attempt chose when coalescing; a retry
    passes it so its payload (and idempotency key) stays that of the first attempt.
    """
    now = now or utcnow()
    claimed = _claim(client, ctx, delivery, now)
    if isinstance(claimed, Result):
        return claimed
    record, claim_ctx = claimed
    token = claim_ctx.token
    occurrence = from_ms(delivery.occurrence_ms)
    if coalesced_ms is not None:
        occurrence = from_ms(coalesced_ms)
    elif not delivery.trigger and record.kind is Kind.CRON:
        occurrence = _latest_missed(record, occurrence, now)
    # A one-time prompt's lateness counts from its own time, even when resumed late.
    reference = record.schedule_time if record.kind is Kind.ONCE and not delivery.trigger else None
    late = now - (reference or occurrence)
    grace = record.misfire_grace_seconds
    # Only a first attempt can be a misfire: a retry is late because the runner failed.
    if attempt == 1 and not delivery.trigger and grace is not None and late.total_seconds() > grace:
        error = (
            f"missed the occurrence at {to_iso(occurrence)}: {late.total_seconds():.1f}s late, "
            f"more than misfire_grace_seconds={grace:g}"
        )
        log.warning("prompt %s %s", record.id, error)
        new = claim_ctx.commit(
            lambda r: _finish(r, claim_ctx, occurrence, delivered=False, error=error)
        )
        return Result(Outcome.MISSED, error=error, record=new)
    try:
        runner = get_runner(record.platform)
    except (RunnerNotConfigured, ValueError) as exc:
        log.error("cannot deliver %s: %s", delivery.key, exc)
        _release(client, ctx, delivery, token, None)
        return Result(Outcome.NO_RUNNER, error=str(exc))
    key = delivery.key if delivery.trigger else f"{record.id}:{to_ms(occurrence)}"
    payload = build_payload(record, key, occurrence, now, attempt)
    try:
        call_runner(runner, payload)
    except Exception as exc:
        error = _without_prompt(f"{type(exc).__name__}: {exc}", record)[:500]
        permanent = isinstance(exc, PermanentDeliveryError)
        if not permanent and attempt <= ctx.settings.max_retries:
            retry_in = backoff(attempt)
            log.warning(
                "runner failed for %s (attempt %d), retry in %.0fs: %s",
                key,
                attempt,
                retry_in,
                error,
            )
            _release(client, ctx, delivery, token, now + timedelta(seconds=retry_in))
            return Result(
                Outcome.RETRY, retry_in=retry_in, error=error, occurrence_ms=to_ms(occurrence)
            )
        if not isinstance(exc, DeliveryError | PermanentDeliveryError):
            log.exception("runner raised for %s", key)
        log.error("giving up on %s after %d attempt(s): %s", key, attempt, error)
        new = claim_ctx.commit(
            lambda r: _finish(r, claim_ctx, occurrence, delivered=False, error=error)
        )
        return Result(Outcome.FAILED, error=error, record=new)
    new = claim_ctx.commit(lambda r: _finish(r, claim_ctx, occurrence, delivered=True, error=None))
    return Result(Outcome.DELIVERED, record=new)


def _claim(
    client: redis.Redis, ctx: Context, delivery: Delivery, now: datetime
) -> Result | tuple[ScheduledPrompt, _Claim]:
    """Run CLAIM: the record and the claim, or the Result that ends this delivery."""
    token = secrets.token_hex(8)
    lease_ms = int(ctx.settings.lease_seconds * 1000)
    expected = "" if delivery.trigger else str(delivery.occurrence_ms)
    keys = [
        ctx.keys.prompt(delivery.prompt_id),
        ctx.keys.lease(delivery.prompt_id),
        ctx.keys.done(delivery.key),
        ctx.keys.inflight,
    ]
    deadline = to_ms(now) + redrive_delay(ctx)
    claim = store.Eval(
        store.CLAIM, keys, [expected, token, lease_ms, delivery.key, deadline, SCHEMA_VERSION]
    ).run(client)
    state = str(claim[0])
    if state == "busy":
        # Another delivery of this prompt is in progress: look again soon (a live holder
        # finishes in moments; a dead one's lease expires).
        return Result(Outcome.BUSY, retry_in=min(2.0, max(0.2, int(claim[1]) / 1000 + 0.1)))
    if state == "unreadable":
        log.warning("skipping %s: unreadable record %s (left as it is)", delivery.key, keys[0])
        return Result(Outcome.SKIPPED, error=f"unreadable record {keys[0]}")
    if state != "ok":
        log.debug("skipping %s: %s", delivery.key, state)
        return Result(Outcome.SKIPPED)
    try:
        record = ScheduledPrompt.from_json(claim[1])
    except RecordError as exc:
        # Broken fields: leave the record as it is and stop re-driving this occurrence.
        log.warning("skipping %s: unreadable record %s: %s", delivery.key, keys[0], exc)
        _release(client, ctx, delivery, token, None, drop=True)
        return Result(Outcome.SKIPPED, error=str(exc))
    return record, _Claim(client, ctx, delivery, token, now, str(claim[1]))


def build_payload(
    record: ScheduledPrompt, key: str, occurrence: datetime, now: datetime, attempt: int
) -> dict[str, Any]:
    """The runner payload (JSON-safe): what a runner receives for one occurrence."""
    return {
        "type": "scheduled_prompt",
        "prompt_id": record.id,
        "idempotency_key": key,
        "occurrence": to_iso(occurrence),
        "fired_at": to_iso(now),
        "lateness_seconds": round((now - occurrence).total_seconds(), 3),
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
    for _ in range(2000):
        following = next_cron_run(schedule, cursor, end_at=record.end_at)
        if following is None or following > now:
            break
        latest = cursor = following
    return latest


@dataclass(frozen=True)
class _Claim:
    client: redis.Redis
    ctx: Context
    delivery: Delivery
    token: str
    now: datetime
    #: The stored JSON the claim read; the first commit attempt compares against it.
    claimed: str | None = None

    def commit(
        self, change: Callable[[ScheduledPrompt], ScheduledPrompt]
    ) -> ScheduledPrompt | None:
        """Record the outcome; if Redis is unreachable, keep trying while the lease lasts.

        After the runner returned, giving up would leave the occurrence to be re-driven —
        a second runner call. Retrying here, as long as our lease keeps others away, turns
        a Redis outage shorter than the lease into a late commit instead of a repeat.
        """
        # At least two socket timeouts, so a Redis that hangs (rather than refuses) gets
        # a second try even when the lease is short.
        settings = self.ctx.settings
        budget = max(1.0, settings.lease_seconds - 1, 2 * settings.redis_timeout_seconds + 1)
        deadline = time.monotonic() + budget
        pause = 0.2
        while True:
            try:
                return self._commit_once(change)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("commit of %s waits for Redis: %s", self.delivery.key, exc)
                time.sleep(pause)
                pause = min(2.0, pause * 2)

    def _commit_once(
        self, change: Callable[[ScheduledPrompt], ScheduledPrompt]
    ) -> ScheduledPrompt | None:
        """Compare-and-set ``change(record)`` with the end of the claim, retried on races."""
        keys = self.ctx.keys
        rkey = keys.prompt(self.delivery.prompt_id)
        done_ttl = str(int(DONE_TTL.total_seconds() * 1000)) if self.delivery.trigger else ""
        # The record as CLAIM read it is usually still current: try it before reading again.
        raw: str | bytes | None = self.claimed
        for _ in range(_CAS_ATTEMPTS):
            if raw is None:
                raw = self.client.get(rkey)
            record = store.parse_record(rkey, raw)
            if record is None or raw is None:
                _release(self.client, self.ctx, self.delivery, self.token, None, drop=True)
                return None
            new = change(record)
            due, finished = store.index_entries(new)
            delta = int(new.status.is_open) - int(record.status.is_open)
            result = store.Eval(
                store.COMMIT,
                [keys.ids, keys.due, keys.finished, keys.open_counts, rkey, keys.user(new.user_id),
                 keys.lease(self.delivery.prompt_id), keys.done(self.delivery.key), keys.inflight],
                [str(raw), new.id, new.user_id, new.to_json(), due, finished, delta, self.token,
                 self.delivery.key, done_ttl],
            ).run(self.client)  # fmt: skip
            if str(result) == "ok":
                return new
            raw = None  # changed meanwhile: read it again
        raise RuntimeError(f"could not commit {self.delivery.key}: the record kept changing")


def _finish(
    record: ScheduledPrompt,
    claim: _Claim,
    occurrence: datetime,
    *,
    delivered: bool,
    error: str | None,
) -> ScheduledPrompt:
    """The record after an occurrence was delivered, missed, or failed for good."""
    now = claim.now
    changes: dict[str, Any] = {"updated_at": now, "version": record.version + 1}
    if delivered:
        changes["run_count"] = record.run_count + 1
        changes["last_execution"] = now
    if error is not None:
        changes["last_error"] = error
        changes["failure_count"] = record.failure_count + 1
    if claim.delivery.trigger:
        if delivered:
            changes["trigger_count"] = record.trigger_count + 1
        return record.replace(**changes)
    holds = record.is_live and record.next_run_at == from_ms(claim.delivery.occurrence_ms)
    if not holds:
        # Cancelled, paused or rescheduled while the runner ran: keep the new schedule.
        return record.replace(**changes)
    if record.kind is Kind.ONCE:
        changes["status"] = Status.EXECUTED if delivered else Status.FAILED
        changes["next_run_at"] = None
        return record.replace(**changes)
    assert record.cron_expression is not None
    runs = record.scheduled_runs + (1 if delivered else 0)
    following = None
    if record.max_runs is None or runs < record.max_runs:
        schedule = parse_cron(record.cron_expression, record.timezone)
        # Continue from now: missed occurrences were coalesced into this one.
        following = next_cron_run(schedule, max(now, occurrence), end_at=record.end_at)
    if following is None:
        changes["status"] = Status.EXECUTED
    changes["next_run_at"] = following
    return record.replace(**changes)


def _release(
    client: redis.Redis,
    ctx: Context,
    delivery: Delivery,
    token: str,
    retry_at: datetime | None,
    *,
    drop: bool = False,
) -> None:
    """End a claim without committing: retry later (``retry_at``) or leave it to re-drive."""
    deadline = "" if retry_at is None else to_ms(retry_at) + redrive_delay(ctx)
    store.Eval(
        store.RELEASE,
        [ctx.keys.lease(delivery.prompt_id), ctx.keys.inflight],
        [token, delivery.key, deadline],
    ).run(client)
    if drop:
        client.zrem(ctx.keys.inflight, delivery.key)
