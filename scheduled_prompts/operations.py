"""Operator operations as plans: stats, export pages, import, and the store's health.

Written once here; the CLI only parses and formats them, and ``api``/``aio`` offer them
as ``get_stats``, ``export_prompts``, ``import_prompts`` (sync and coroutines).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import shards, store
from ._time import from_ms, to_ms
from .errors import InvalidSchedule
from .models import RecordError, ScheduledPrompt, Status
from .occurrences import Delivery, horizon_ms
from .plans import Plan
from .store import Put, Scope
from .validation import check_record
from .verbs import promote_now

#: Records read or written per round trip.
PAGE = 1000


def count(ctx: Scope) -> Plan[int]:
    """How many prompts are stored (in every shard)."""
    per_shard, _ = yield from shards.each_read(ctx, lambda keys: [("ZCARD", keys.ids)])
    return sum(int(size) for (size,) in per_shard)


def stats(
    ctx: Scope, now: datetime, progress: Callable[[int], None] | None = None
) -> Plan[dict[str, Any]]:
    """Counts by status, the due backlog, in-flight occurrences, the oldest lateness and
    the last tick. Reads every record once, a page at a time (``progress(n)`` after each
    page of ``n``)."""
    total = yield from count(ctx)
    counts: Counter[str] = Counter()
    after: str | None = None
    while True:
        page = yield from _raw_page(ctx, after)
        if not page:
            break
        for _, _, raw in page:
            try:
                counts[json.loads(raw or "")["status"]] += 1
            except (ValueError, KeyError, TypeError):
                counts["unreadable"] += 1
        after = page[-1][0]
        if progress is not None:
            progress(len(page))
    now_ms = to_ms(now)
    per_shard, (beat,) = yield from shards.each_read(
        ctx,
        lambda k: [
            ("ZCOUNT", k.due, "-inf", now_ms), ("ZCOUNT", k.due, now_ms, horizon_ms(ctx, now)),
            store.first_scored(k.due, now_ms, 1), store.first_scored(k.inflight, now_ms, 100),
            ("ZCARD", k.inflight),
        ],
        ("GET", ctx.shard(0).keys.beat),
    )  # fmt: skip
    overdue = soon = in_flight = stuck = 0
    oldest: list[int] = []
    for past_due, within, first, late, flying in per_shard:
        overdue += int(past_due)
        soon += int(within)
        late_keys = [key for key, _ in store.as_scored(late)]
        oldest += [now_ms - int(score) for _, score in store.as_scored(first)]
        oldest += [now_ms - Delivery.from_key(key).occurrence_ms for key in late_keys]
        stuck += len(late_keys)
        in_flight += int(flying)
    by_status = {s.value: counts.get(s.value, 0) for s in Status}
    if counts["unreadable"]:
        by_status["unreadable"] = counts["unreadable"]
    return {
        "total": total,
        "by_status": by_status,
        "due_overdue": overdue,
        "due_within_horizon": soon,
        "in_flight": in_flight,
        "in_flight_past_deadline": stuck,
        "oldest_overdue_seconds": round(max([0, *oldest]) / 1000, 3),
        "last_tick": None if beat is None else from_ms(int(beat)).isoformat(),
    }


@dataclass(frozen=True)
class ExportPage:
    """Records in id order; ``skipped`` names what could not be read, and why;
    ``after`` is the cursor of the next page (None: this was the last)."""

    records: list[ScheduledPrompt]
    skipped: list[tuple[str, str]]
    read: int
    after: str | None


def export_page(ctx: Scope, after: str | None = None) -> Plan[ExportPage]:
    """One page of every stored prompt (every shard, in id order), after the id ``after``."""
    page = yield from _raw_page(ctx, after)
    records: list[ScheduledPrompt] = []
    skipped: list[tuple[str, str]] = []
    for _, key, raw in page:
        if raw is None:
            skipped.append((key, "missing record"))
            continue
        try:
            records.append(ScheduledPrompt.from_json(raw))
        except RecordError as exc:
            skipped.append((key, f"unreadable ({exc})"))
    more = page[-1][0] if len(page) == PAGE else None
    return ExportPage(records, skipped, len(page), more)


def _raw_page(ctx: Scope, after: str | None) -> Plan[list[tuple[str, str, str | None]]]:
    """(id, record key, stored JSON) of up to :data:`PAGE` ids after ``after``."""
    rows = yield from shards.ids_after(ctx, after, PAGE)
    raws = yield from shards.read(rows)
    return [(i, shard.keys.prompt(i), raw) for (i, shard), raw in zip(rows, raws, strict=True)]


def parse_export_line(line: str, ctx: Scope) -> ScheduledPrompt:
    """One line of an export as a record, with the checks ``schedule_prompt`` applies.

    Raises :class:`InvalidSchedule` (what is wrong) or :class:`RecordError` (not a
    record of a schema this version reads).
    """
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    return check_record(ScheduledPrompt.from_dict(data), ctx.settings)


@dataclass
class ImportResult:
    """What :func:`import_records` did: ``skipped`` counts by reason."""

    imported: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def merge(self, other: ImportResult) -> None:
        self.imported += other.imported
        self.skipped.update(other.skipped)


def chunked(records: Iterable[ScheduledPrompt]) -> Iterator[list[ScheduledPrompt]]:
    """``records`` in lists of up to :data:`PAGE`, for :func:`import_records`."""
    batch: list[ScheduledPrompt] = []
    for record in records:
        batch.append(record)
        if len(batch) == PAGE:
            yield batch
            batch = []
    if batch:
        yield batch


def import_records(
    ctx: Scope, records: Sequence[ScheduledPrompt], now: datetime
) -> Plan[ImportResult]:
    """Store records made elsewhere (an export), keeping every existing id as it is.

    Each record is checked as ``schedule_prompt`` checks its input and written with the
    API's per-user quota; one record per script, so a concurrent writer only skips that
    record. Live ones due within the horizon are promoted at once, as a new prompt is.
    """
    result = ImportResult()
    for record in records:
        try:
            check_record(record, ctx.settings)
        except InvalidSchedule:
            result.skipped["invalid record"] += 1
            continue
        home = ctx.of_user(record.user_id)
        outcome = yield ctx.durable(
            store.put_op(home.keys, [Put(record, None)], ctx.settings.max_prompts_per_user)
        )
        state = store.as_text(outcome[0])
        if state == "ok":
            result.imported += 1
            if record.is_live:
                yield from promote_now(ctx, [record], now)
        elif state == "quota":
            result.skipped["over the per-user quota"] += 1
        else:
            result.skipped["already exists"] += 1
    return result


@dataclass(frozen=True)
class Check:
    """One health check: its name, whether it passed, and what was seen."""

    name: str
    ok: bool
    detail: str


def store_health(ctx: Scope, now: datetime) -> Plan[list[Check]]:
    """Eviction policy, persistence, and how fresh beat's last tick is. (A Redis
    Cluster's nodes are checked one by one with its topology, ``topology.py``.)"""
    checks = [] if ctx.settings.cluster else (yield from _config_checks())
    checks.append((yield from _beat(ctx, now)))
    return checks


def _config_checks() -> Plan[list[Check]]:
    config: dict[str, str] = {}
    for name in ("maxmemory-policy", "appendonly", "save"):
        reply = yield store.Refusable(store.Command(("CONFIG GET", name)))
        if isinstance(reply, Exception):  # managed Redis services often refuse CONFIG
            return [Check("redis config", False, f"CONFIG GET refused ({reply}); check by hand")]
        config |= {store.as_text(k): store.as_text(v) for k, v in reply.items()}
    return config_checks(config)


def config_checks(config: Mapping[str, str]) -> list[Check]:
    """What a node's ``maxmemory-policy``, ``appendonly`` and ``save`` mean for the
    prompts it holds (one Redis here; each primary of a cluster in ``topology.py``)."""
    policy = config.get("maxmemory-policy", "?")
    advice = (
        ""
        if policy == "noeviction"
        else ": Redis may evict prompts; set maxmemory-policy noeviction"
    )
    aof = config.get("appendonly") == "yes"
    save = config.get("save", "")
    if aof:
        detail = "AOF on"
    elif save:
        detail = (
            f"RDB snapshots only ({save}): a crash loses the writes since the last one; "
            "set appendonly yes"
        )
    else:
        detail = "off: a restart loses every prompt; set appendonly yes"
    return [
        Check("maxmemory-policy", policy == "noeviction", policy + advice),
        Check("persistence", aof, detail),
    ]


def _beat(ctx: Scope, now: datetime) -> Plan[Check]:
    """How fresh beat's last tick is."""
    last = yield store.Command(("GET", ctx.shard(0).keys.beat))
    tick = ctx.settings.tick_seconds
    if last is None:
        return Check("beat", False, "no tick recorded: is `celery beat` running?")
    age = now.timestamp() - int(last) / 1000
    return Check("beat", age <= 3 * tick + 5, f"last tick {age:.0f}s ago (every {tick:g}s)")
