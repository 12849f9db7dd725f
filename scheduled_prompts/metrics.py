"""Delivery and tick metrics, counted in Redis by the steps that decide them.

Counters and histogram buckets live in one hash (``P:metrics``). The scripts that commit
an outcome, give a claim back for a retry, or find an occurrence no longer due add to it
in the same atomic step, so the counts are exact across every worker process and machine
(prefork pools included), and a step replayed after a lost reply — which changes nothing
— counts nothing. A field is the JSON list of the metric's name and label values; a
histogram keeps one count per bucket (the smallest upper bound at or above the value) and
a sum, and is made cumulative when read.
"""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import shards, store
from ._time import to_ms
from .keys import Keys
from .models import Status
from .occurrences import Delivery

if TYPE_CHECKING:
    from .plans import Plan
    from .store import Scope

#: Upper bounds (seconds) of the histograms' buckets; "+Inf" above the last.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
RUNNER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
OUTCOMES = ("delivered", "failed", "retried", "skipped", "redelivered")

#: One increment of the metrics hash: ("i" integer | "f" float, field, amount).
Increment = tuple[str, str, str]


@functools.lru_cache(maxsize=4096)
def field(*parts: str) -> str:
    """The hash field of a series: the JSON list of its name and label values."""
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=16)
def bucket_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The ``le`` label of each bucket, "+Inf" last."""
    return (*(repr(float(b)) for b in bounds), "+Inf")


def bucket(value: float, bounds: tuple[float, ...]) -> str:
    """The bucket ``value`` falls in: the smallest bound at or above it, else "+Inf"."""
    return bucket_labels(bounds)[bisect.bisect_left(bounds, value)]


def observe(
    name: str, labels: tuple[str, ...], value: float, bounds: tuple[float, ...]
) -> list[Increment]:
    """The increments of one histogram observation."""
    value = max(0.0, value)
    return [
        ("i", field(name, *labels, bucket(value, bounds)), "1"),
        ("f", field(name + "_sum", *labels), repr(value)),
    ]


@dataclass(frozen=True)
class Observation:
    """One delivery step as the metrics and the delivery log (``history.py``) see it: its
    outcome, for a runner call how late it was (``kind``: once, cron or trigger) and how
    long the runner took, and which prompt and occurrence it was about."""

    outcome: str
    platform: str
    kind: str | None = None
    lateness: float | None = None
    runner_seconds: float | None = None
    prompt_id: str = ""
    user_id: str = ""
    occurrence_ms: int = 0
    trigger: bool = False
    error: str | None = None
    #: Occurrences of a cron prompt that came due during this run and are not delivered
    #: (its ``overlap`` policy).
    skipped: int = 0

    def increments(self) -> list[Increment]:
        out: list[Increment] = [("i", field("deliveries", self.outcome, self.platform), "1")]
        if self.skipped:
            out.append(("i", field("overlap_skipped", self.platform), str(self.skipped)))
        if self.lateness is not None and self.kind is not None:
            out += observe("lateness", (self.kind, self.platform), self.lateness, LATENESS_BUCKETS)
        if self.runner_seconds is not None:
            out += observe("runner", (self.platform,), self.runner_seconds, RUNNER_BUCKETS)
        return out


class Batch:
    """The metrics of one script call: each step's increments as ``index:amount;…``
    (one argument per step, cheap to build and to parse), against the call's list of
    distinct fields (one more argument, JSON ``[["i"|"f", field], …]``)."""

    def __init__(self) -> None:
        self._at: dict[tuple[str, str], int] = {}

    def add(self, increments: Sequence[Increment]) -> str:
        out = []
        for kind, name, amount in increments:
            at = self._at.setdefault((kind, name), len(self._at))
            out.append(f"{at}:{amount}")
        return ";".join(out)

    def step(self, observation: Observation | None) -> str:
        return "" if observation is None else self.add(observation.increments())

    def fields(self) -> str:
        return json.dumps(list(self._at), ensure_ascii=False, separators=(",", ":"))


def tick_increments(seconds: float) -> list[Increment]:
    return observe("tick", (), seconds, TICK_BUCKETS)


def decode(raw: Mapping[str, str] | Mapping[bytes, bytes]) -> dict[tuple[str, ...], float]:
    """The metrics hash as {(name, *labels): value}; fields that name the same series
    (written by Python and by Lua, which escape differently) are added together."""
    out: dict[tuple[str, ...], float] = {}
    for key, value in raw.items():
        text = key.decode() if isinstance(key, bytes) else key
        try:
            parts = json.loads(text)
        except ValueError:
            continue
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            continue
        series = tuple(parts)
        out[series] = out.get(series, 0.0) + float(value)
    return out


#: Records one recount script call reads (about 2 ms of Redis time).
RECOUNT_PAGE = 500
#: Recount pages a tick runs while the status counts are incomplete.
RECOUNT_PAGES_PER_TICK = 40


def recount(
    ctx: Scope,
    now: datetime,
    *,
    restart: bool = False,
    pages: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Plan[bool]:
    """Count the stored prompts by status again, a page of records per script call,
    while writes go on (they keep the count right, see ``store._STATUS``); the new
    counts replace the old ones at the end. Starts a recount if none is running (or,
    with ``restart``, starts over); runs at most ``pages`` pages (all without). Returns
    whether the counts are complete. ``progress(n)`` after each page of ``n`` records."""
    keys = ctx.keys
    script_keys = [keys.ids, *store.status_keys(keys)]
    prefix = keys.prompt("")
    start = restart or not (yield store.Command(("EXISTS", keys.recount_cursor)))
    done = 0
    while pages is None or done < pages:
        args: list[str | int | float] = [RECOUNT_PAGE, prefix, to_ms(now), "1" if start else ""]
        state, counted = yield store.Eval(store.RECOUNT, script_keys, args)
        start = False
        done += 1
        if progress is not None:
            progress(int(counted))
        if store.as_text(state) != "more":
            return True
    return False


def recount_all(
    ctx: Scope, now: datetime, *, progress: Callable[[int], None] | None = None
) -> Plan[None]:
    """Recount every shard from the start (``scheduled-prompts recount``)."""
    for shard in ctx.every_shard():
        yield from recount(shard, now, restart=True, progress=progress)


def statuses(ctx: Scope) -> Plan[dict[str, int] | None]:
    """Stored prompts by status over every shard (every status, zeros included;
    ``unreadable`` when a recount found records it could not read), or None while the
    count of a shard is incomplete."""
    per_shard, _ = yield from shards.each_read(ctx, lambda keys: [("HGETALL", keys.counts)])
    return _summed_statuses([counts for (counts,) in per_shard])


def _summed_statuses(replies: Sequence[Any]) -> dict[str, int] | None:
    out = {s.value: 0 for s in Status}
    for reply in replies:
        counts = store.as_mapping(reply)
        if "counted" not in counts:
            return None
        for status, n in counts.items():
            if status != "counted":
                out[status] = out.get(status, 0) + int(n)
    return out


@dataclass(frozen=True)
class Snapshot:
    """Everything the exporter shows, read in a few round trips whatever the number of
    stored prompts: the counted series, and gauges from index sizes."""

    series: dict[tuple[str, ...], float]
    #: Stored prompts by status; None until the first count is complete.
    statuses: dict[str, int] | None
    due_backlog: int
    inflight: int
    oldest_overdue_seconds: float
    last_tick: float | None


def snapshot(ctx: Scope, now: datetime) -> Plan[Snapshot]:
    """Read the metrics hashes and the gauges of every shard, in one round trip (per
    node). Costs O(shards + series + in flight): the in-flight sets hold only
    occurrences within the horizon, never the stored prompts."""
    now_ms = to_ms(now)
    per_shard, (beat,) = yield from shards.each_read(
        ctx, lambda keys: _shard_reads(keys, now_ms), ("GET", ctx.shard(0).keys.beat)
    )
    series: dict[tuple[str, ...], float] = {}
    backlog = inflight = 0
    oldest: list[int] = [0]
    for raw, overdue, first, members, _ in per_shard:
        for name, value in decode(store.as_mapping(raw)).items():
            series[name] = series.get(name, 0) + value
        # A detached run (``overlap="allow"``) started already: it is running, not overdue.
        flights = (Delivery.from_key(store.as_text(m)) for m in members)
        handed = [d.occurrence_ms for d in flights if not d.detached]
        past = [ms for ms in handed if ms <= now_ms]
        oldest += [now_ms - int(score) for _, score in store.as_scored(first)]
        oldest += [now_ms - ms for ms in past]
        backlog += int(overdue) + len(past)
        inflight += len(handed)
    return Snapshot(
        series=series,
        statuses=_summed_statuses([counts for *_, counts in per_shard]),
        due_backlog=backlog,
        inflight=inflight,
        oldest_overdue_seconds=max(oldest) / 1000,
        last_tick=None if beat is None else int(beat) / 1000,
    )


def _shard_reads(keys: Keys, now_ms: int) -> list[tuple[str | int, ...]]:
    """What :func:`snapshot` reads of one shard: the metrics hash, the overdue count, the
    oldest overdue entry, the in-flight set and the status counts."""
    return [
        ("HGETALL", keys.metrics),
        ("ZCOUNT", keys.due, "-inf", now_ms),
        store.first_scored(keys.due, now_ms, 1),
        ("ZRANGE", keys.inflight, 0, -1),
        ("HGETALL", keys.counts),
    ]
