"""The public verbs as plans (see ``plans.py``): create, read, list, change, trigger.

Each takes the store scope, its arguments and ``now``, and is driven by ``api.py`` on a
``redis.Redis`` or by ``aio.py`` on a ``redis.asyncio.Redis``: the logic is written once.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import shards, store
from ._time import to_ms
from .errors import ConflictingPrompt, InvalidSchedule, PromptNotFound, QuotaExceeded
from .ids import new_prompt_ids
from .models import Kind, ScheduledPrompt, Status
from .occurrences import PUBLISH_LOT, Delivery, parse_promoted, promote_op, redrive_delay
from .plans import Enqueue, Plan
from .schedules import first_cron_run, parse_cron
from .store import CAS_ATTEMPTS, Put, Scope
from .validation import ScheduleRequest, apply_update, build_from_spec, same_request

log = logging.getLogger("scheduled_prompts.verbs")


@dataclass(frozen=True)
class PromptPage:
    """One page of :func:`list_prompts`: ``next_cursor`` is None on the last page."""

    items: list[ScheduledPrompt]
    next_cursor: str | None


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _create_ops(
    batches: Sequence[tuple[Scope, Sequence[ScheduledPrompt]]], quota: int | None
) -> Iterator[store.Eval]:
    """The CREATE call of each batch, built with the cyclic GC paused: serialising
    thousands of records allocates containers none of which can be garbage yet, and the
    collections they start walk every record built (a quarter of the call's time)."""
    for home, batch in batches:
        with _gc_paused():
            op = store.create_op(home.keys, batch, quota)
        yield op


def by_shard(
    ctx: Scope, records: Iterable[ScheduledPrompt]
) -> dict[int, tuple[Scope, list[ScheduledPrompt]]]:
    """``records`` grouped by the shard of their user, in the order given."""
    if ctx.shards == 1:
        listed = list(records)
        return {0: (ctx.shard(0), listed)} if listed else {}
    groups: dict[int, tuple[Scope, list[ScheduledPrompt]]] = {}
    for record in records:
        home = ctx.of_user(record.user_id)
        groups.setdefault(home.number, (home, []))[1].append(record)
    return groups


def promote_now(ctx: Scope, records: Sequence[ScheduledPrompt], now: datetime) -> Plan[int]:
    """Enqueue at once the written prompts due within the horizon (instead of at the next
    tick), so a prompt scheduled seconds ahead still fires on time."""
    horizon = now + timedelta(seconds=ctx.settings.horizon_seconds)
    due = [r for r in records if r.is_live and r.next_run_at and r.next_run_at <= horizon]
    published = 0
    for home, group in by_shard(ctx, due).values():
        ids = [r.id for r in group]
        for start in range(0, len(ids), PUBLISH_LOT):
            # Short PROMOTE calls in one round trip, what they took published together.
            lot = ids[start : start + PUBLISH_LOT]
            calls = [promote_op(home, now, lot[i : i + store.PROMOTE_LOT])
                     for i in range(0, len(lot), store.PROMOTE_LOT)]  # fmt: skip
            replies = yield from shards.each(calls)
            deliveries = [d for rows in replies for d in parse_promoted(rows, home.number)]
            if deliveries:
                published += yield Enqueue(deliveries)
    return published


def _existing_or_conflict(
    stored: ScheduledPrompt | None, new: ScheduledPrompt, req: ScheduleRequest
) -> ScheduledPrompt:
    if stored is None:
        raise ConflictingPrompt(f"prompt_id {new.id!r} is taken by an unreadable record")
    if not same_request(stored, new, req):
        raise ConflictingPrompt(
            f"prompt_id {new.id!r} already exists with a different prompt, owner, platform, "
            "channel or schedule; use another prompt_id, or update_prompt() to change it"
        )
    return stored


def create(
    ctx: Scope, spec: Mapping[str, Any], now: datetime, *, quota: int | None = None
) -> Plan[ScheduledPrompt]:
    """Create one prompt. ``quota`` tightens MAX_PROMPTS_PER_USER for this call (tools)."""
    record, req = build_from_spec(spec, now, ctx.settings)
    limits = [q for q in (quota, ctx.settings.max_prompts_per_user) if q is not None]
    limit = min(limits) if limits else None
    home = ctx.of_user(record.user_id)
    key = home.keys.prompt(record.id)
    if spec.get("prompt_id") is not None:  # an id given twice is the same prompt: any shard
        _, raw = yield from shards.find(ctx, record.id)
        if raw is not None:
            return _existing_or_conflict(store.parse_record(key, raw), record, req)
    result = yield ctx.durable(store.create_op(home.keys, [record], limit))
    outcome = _check_put(result, limit)
    if outcome == "exists":  # created concurrently under the same prompt_id
        return _existing_or_conflict(store.parse_record(key, result[2]), record, req)
    yield from promote_now(ctx, [record], now)
    return record


def _check_put(result: Sequence[Any], limit: int | None) -> str:
    outcome = str(result[0])
    if outcome == "quota":
        assert limit is not None
        raise QuotaExceeded(str(result[1]), limit)
    return outcome


def create_many(
    ctx: Scope, specs: Iterable[Mapping[str, Any]], now: datetime
) -> Plan[list[ScheduledPrompt]]:
    """``schedule_many``: validate every spec first (all or nothing), then write in
    pipelined batches."""
    built: list[tuple[ScheduledPrompt, ScheduleRequest, bool]] = []
    seen: set[str] = set()
    specs = list(specs)
    # Ids for the specs that give none, made in one go (cheaper than one by one).
    fresh = iter(
        new_prompt_ids(sum(1 for s in specs if isinstance(s, Mapping) and not s.get("prompt_id")))
    )
    # Thousands of new records at once would start the cyclic GC over and over while
    # none of them can be garbage yet: it is paused for this loop (which yields nothing).
    with _gc_paused():
        for index, spec in enumerate(specs):
            if not isinstance(spec, Mapping):
                raise InvalidSchedule(
                    f"specs[{index}] must be a dict of schedule_prompt arguments, "
                    f"got {type(spec).__name__}"
                )
            try:
                fresh_id = None if spec.get("prompt_id") else next(fresh)
                record, req = build_from_spec(spec, now, ctx.settings, fresh_id)
            except InvalidSchedule as exc:
                raise InvalidSchedule(f"specs[{index}]: {exc}") from None
            if record.id in seen:
                raise InvalidSchedule(f"specs[{index}]: prompt_id {record.id!r} appears twice")
            seen.add(record.id)
            built.append((record, req, spec.get("prompt_id") is not None))
    # Idempotent ids that already exist resolve to the stored record (or a conflict).
    explicit = [r.id for r, _, given in built if given]
    everywhere = [(i, shard) for i in explicit for shard in ctx.every_shard()]
    raws = yield from shards.read(everywhere)
    existing: dict[str, ScheduledPrompt] = {}
    for (pid, shard), raw in zip(everywhere, raws, strict=True):
        if raw is not None:
            existing[pid] = store.parse_record(shard.keys.prompt(pid), raw)  # type: ignore[assignment]
    out: list[ScheduledPrompt] = []
    to_write: list[ScheduledPrompt] = []
    for record, req, _ in built:
        if record.id in existing:
            out.append(_existing_or_conflict(existing[record.id], record, req))
        else:
            out.append(record)
            to_write.append(record)
    quota = ctx.settings.max_prompts_per_user
    groups = by_shard(ctx, to_write)
    if quota is not None:
        for home, group in groups.values():
            adds: dict[str, int] = {}
            for record in group:
                adds[record.user_id] = adds.get(record.user_id, 0) + 1
            users = list(adds)
            have = yield store.HashGet(home.keys.open_counts, users)
            for user, count in zip(users, have, strict=True):
                if int(count or 0) + adds[user] > quota:
                    raise QuotaExceeded(user, quota)
    if to_write:
        batches = [
            (home, group[i : i + store.WRITE_LOT])
            for home, group in groups.values()
            for i in range(0, len(group), store.WRITE_LOT)
        ]
        # Each batch is serialised while Redis writes the one before.
        results = yield ctx.durable(store.Stream(_create_ops(batches, quota)))
        failed = [(i, r) for i, r in enumerate(results) if str(r[0]) != "ok"]
        if failed:
            written = len(to_write) - sum(len(batches[i][1]) for i, _ in failed)
            index, result = failed[0]
            detail = (
                f"user {result[1]!r} reached the quota"
                if str(result[0]) == "quota"
                else f"a prompt_id was created concurrently ({result[0]})"
            )
            raise ConflictingPrompt(
                f"schedule_many raced another writer: {detail}; {written} of "
                f"{len(to_write)} prompts were written (batches of {store.WRITE_LOT})"
            )
        yield from promote_now(ctx, to_write, now)
    return out


def get(ctx: Scope, prompt_id: str, user_id: str | None = None) -> Plan[ScheduledPrompt | None]:
    """The stored prompt (None if there is none); with ``user_id``, read from that user's
    shard only (another user's prompt is then not found)."""
    if not isinstance(prompt_id, str):
        return None
    home, raw = yield from shards.find(ctx, prompt_id, user_id)
    return store.parse_record(home.keys.prompt(prompt_id), raw)


def _coerce_statuses(status: object) -> frozenset[Status] | None:
    if status is None:
        return None
    try:
        values = [status] if isinstance(status, str) else list(status)  # type: ignore[call-overload]
        return frozenset(Status(v) for v in values)
    except (ValueError, TypeError):
        raise InvalidSchedule(
            f"status must be one of {', '.join(s.value for s in Status)} "
            f"(or a list of them), got {status!r}"
        ) from None


def list_page(
    ctx: Scope,
    *,
    user_id: str | None,
    platform: str | None,
    status: object,
    limit: int,
    cursor: str | None,
    text: str | None = None,
    scan_limit: int | None = None,
) -> Plan[PromptPage]:
    """Up to ``limit`` prompts after ``cursor`` that match every filter given, oldest first.

    ``text`` keeps the prompts whose text contains it, ignoring case. ``scan_limit`` caps
    the records examined (read from the index, matching or not): when it runs out before
    the page is full, the page ends early and ``next_cursor`` is the last id examined, so
    a filter that matches little never reads the whole store in one call.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidSchedule(f"limit must be an integer from 1 to 1000, got {limit!r}")
    if cursor is not None and not isinstance(cursor, str):
        raise InvalidSchedule(f"cursor must be a next_cursor string or None, got {cursor!r}")
    for name, value in (("user_id", user_id), ("platform", platform), ("text", text)):
        if value is not None and not isinstance(value, str):
            raise InvalidSchedule(f"{name} must be a string or None, got {type(value).__name__}")
    if scan_limit is not None and (
        isinstance(scan_limit, bool) or not isinstance(scan_limit, int) or scan_limit < 1
    ):
        raise InvalidSchedule(f"scan_limit must be a positive integer or None, got {scan_limit!r}")
    statuses = _coerce_statuses(status)
    needle = None if text is None else text.casefold()
    home = None if user_id is None else ctx.of_user(user_id)
    items: list[ScheduledPrompt] = []
    after = cursor
    chunk = max(limit, 100)
    budget = scan_limit
    while True:
        asked = chunk if budget is None else min(chunk, budget)
        if home is not None and user_id is not None:  # the user's index, in their shard
            ids: list[str] = yield store.RangeByLex(home.keys.user(user_id), after, asked)
            rows = [(i, home) for i in ids]
        else:  # every shard's ids, merged in id order
            rows = yield from shards.ids_after(ctx, after, asked)
        if not rows:
            return PromptPage(items, None)
        raws = yield from shards.read(rows)
        for (pid, shard), raw in zip(rows, raws, strict=True):
            after = pid
            record = store.parse_record(shard.keys.prompt(pid), raw)
            if record is None:
                continue
            if (
                (user_id is not None and record.user_id != user_id)
                or (platform is not None and record.platform != platform)
                or (statuses is not None and record.status not in statuses)
                or (needle is not None and needle not in record.prompt.casefold())
            ):
                continue
            items.append(record)
            if len(items) == limit:
                return PromptPage(items, pid)
        if len(rows) < asked:
            return PromptPage(items, None)
        if budget is not None:
            budget -= len(rows)
            if budget == 0:
                return PromptPage(items, after)


def _mutate(
    ctx: Scope,
    prompt_id: str,
    user_id: str | None,
    change: Any,
) -> Plan[ScheduledPrompt]:
    """Read, ``change(record)``, compare-and-set; retried if the record moved meanwhile."""
    if not isinstance(prompt_id, str):
        raise PromptNotFound(repr(prompt_id))
    home, raw = yield from shards.find(ctx, prompt_id, user_id)
    key = home.keys.prompt(prompt_id)
    # A delivery in progress holds the prompt's lease; the change waits for it to commit
    # (or for its lease to expire), so no delivery of the old state follows the return.
    patience = time.monotonic() + ctx.settings.lease_seconds + 5
    pause = 0.01
    attempts = 0
    while attempts < CAS_ATTEMPTS:
        record = store.parse_record(key, raw)
        if record is None or (user_id is not None and record.user_id != user_id):
            raise PromptNotFound(prompt_id)
        new: ScheduledPrompt = change(record)
        if new is record:
            return record
        result = yield ctx.durable(store.put_op(home.keys, [Put(new, raw, record)], None))
        outcome = str(result[0])
        if outcome == "ok":
            yield from promote_now(ctx, [new], new.updated_at)
            return new
        if outcome == "leased":
            if time.monotonic() > patience:
                break
            yield store.Sleep(pause)
            pause = min(0.25, pause * 2)
        else:
            attempts += 1
        (raw,) = yield store.Read([key])
    raise ConflictingPrompt(
        f"prompt {prompt_id!r} is being delivered or changed right now; try again"
    )


def _refuse(record: ScheduledPrompt, action: str) -> ConflictingPrompt:
    return ConflictingPrompt(
        f"cannot {action} prompt {record.id!r}: it is {record.status.value}; only "
        "scheduled, active or paused prompts can be changed"
    )


def _stop(
    ctx: Scope,
    prompt_id: str,
    user_id: str | None,
    now: datetime,
    *,
    status: Status,
    action: str,
) -> Plan[ScheduledPrompt]:
    """Move a live or paused prompt to ``status`` (no next run); idempotent."""

    def change(record: ScheduledPrompt) -> ScheduledPrompt:
        if record.status is status:
            return record
        if record.status.is_terminal:
            raise _refuse(record, action)
        return record.replace(
            status=status, next_run_at=None, updated_at=now, version=record.version + 1
        )

    return (yield from _mutate(ctx, prompt_id, user_id, change))


def cancel(ctx: Scope, prompt_id: str, user_id: str | None, now: datetime) -> Plan[ScheduledPrompt]:
    return (
        yield from _stop(ctx, prompt_id, user_id, now, status=Status.CANCELLED, action="cancel")
    )


def pause(ctx: Scope, prompt_id: str, user_id: str | None, now: datetime) -> Plan[ScheduledPrompt]:
    return (yield from _stop(ctx, prompt_id, user_id, now, status=Status.PAUSED, action="pause"))


def resume(ctx: Scope, prompt_id: str, user_id: str | None, now: datetime) -> Plan[ScheduledPrompt]:
    def change(record: ScheduledPrompt) -> ScheduledPrompt:
        if record.status.is_live:
            return record
        if record.status.is_terminal:
            raise _refuse(record, "resume")
        bump = {"updated_at": now, "version": record.version + 1}
        if record.kind is Kind.ONCE:
            assert record.schedule_time is not None
            # A time that passed while paused fires now (the engine applies the grace).
            when = max(record.schedule_time + record.offset, now)
            return record.replace(status=Status.SCHEDULED, next_run_at=when, **bump)
        assert record.cron_expression is not None
        schedule = parse_cron(record.cron_expression, record.timezone)
        # Computed from now: occurrences missed while paused are skipped, not replayed.
        first = first_cron_run(
            schedule, now, start_at=record.start_at, end_at=record.end_at, offset=record.offset
        )
        if first is None:
            return record.replace(status=Status.EXECUTED, next_run_at=None, **bump)
        return record.replace(status=Status.ACTIVE, next_run_at=first, **bump)

    return (yield from _mutate(ctx, prompt_id, user_id, change))


def update(
    ctx: Scope,
    prompt_id: str,
    user_id: str | None,
    changes: Mapping[str, Any],
    now: datetime,
) -> Plan[ScheduledPrompt]:
    def change(record: ScheduledPrompt) -> ScheduledPrompt:
        if record.status.is_terminal:
            raise _refuse(record, "update")
        return apply_update(record, changes, now, ctx.settings)

    return (yield from _mutate(ctx, prompt_id, user_id, change))


def trigger(ctx: Scope, prompt_id: str, user_id: str | None, now: datetime) -> Plan[str]:
    """One extra delivery now; returns its idempotency key ``{id}:trigger:{epoch_ms}``."""
    if not isinstance(prompt_id, str):
        raise PromptNotFound(repr(prompt_id))
    home, raw = yield from shards.find(ctx, prompt_id, user_id)
    record = store.parse_record(home.keys.prompt(prompt_id), raw)
    if record is None or (user_id is not None and record.user_id != user_id):
        raise PromptNotFound(prompt_id)
    if record.status.is_terminal:
        raise _refuse(record, "trigger")
    # In flight first, then published: if the broker is down, tick re-drives it. Two
    # triggers in the same millisecond get consecutive keys, never one shared delivery.
    deadline = to_ms(now) + redrive_delay(ctx)
    for ms in range(to_ms(now), to_ms(now) + 1000):
        delivery = Delivery(prompt_id, ms, trigger=True, shard=home.number)
        keys = [home.keys.inflight, home.keys.done(delivery.key)]
        if (yield ctx.durable(store.Eval(store.TRACK, keys, [deadline, delivery.key]))):
            yield Enqueue([delivery])
            return delivery.key
    raise ConflictingPrompt(f"too many triggers of {prompt_id!r} at once; try again")
