"""The upcoming load: occurrences in the next 24 hours, hour by hour, as an SVG chart.

Each hour's bar is one ``ZCOUNT`` on the due index (``P:due``, scored by next occurrence):
24 cheap calls, whatever the number of stored prompts. Occurrences already promoted to
Celery (due within the horizon) have left ``P:due`` for ``P:inflight``; that set is small
(minutes of occurrences), so it is read whole when it holds at most :data:`EXPAND_LIMIT`
and its occurrences are placed in their hours too.

The due index holds only each prompt's *next* occurrence, so a cron prompt that fires
again within the window would be counted once. When at most :data:`EXPAND_LIMIT` prompts
are next due in the window (in ``P:due`` and in flight together), their records are read
and the repeats of the cron ones added (up to :data:`EXPAND_OCCURRENCES` repeats in all);
above that the chart shows next occurrences only and says so, rather than read thousands
of records on every view.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from .. import shards, store
from .._time import from_ms, to_ms
from ..models import Kind, ScheduledPrompt
from ..occurrences import Delivery
from ..plans import Plan
from ..store import Scope
from .timing import fires

HOURS = 24
#: Most prompts next due in the window whose records are read to add cron repeats; also
#: the most in-flight occurrences read to place them in their hours.
EXPAND_LIMIT = 2_000
#: Most cron repeats added in all (an every-minute prompt alone has 1,440 a day).
EXPAND_OCCURRENCES = 20_000
#: Records read per round trip.
_READ = 500
_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Window:
    """What Redis says of the next :data:`HOURS` hours from ``start``."""

    start: datetime
    due_counts: list[int]  # next occurrences per hour in P:due (ZCOUNT each)
    overdue: int  # in P:due before start: waiting for a tick
    in_flight: int  # occurrences handed to Celery (ZCARD P:inflight)
    flights: list[Delivery]  # those occurrences, when at most EXPAND_LIMIT
    cron: list[ScheduledPrompt]  # the cron prompts next due in the window, when read
    read: bool  # whether the records were read (few enough prompts in the window)


@dataclass(frozen=True)
class Load:
    """Occurrences per hour; ``repeats`` counts the cron repeats added to them."""

    start: datetime
    counts: list[int]
    overdue: int  # due before start and not delivered yet (in P:due or in flight)
    in_flight: int
    flights_placed: bool  # the in-flight occurrences are in the bars
    next_total: int  # next occurrences in the window (P:due and in flight)
    repeats: int
    expanded: bool  # cron repeats are counted
    truncated: bool  # ... but only the first EXPAND_OCCURRENCES of them

    @property
    def total(self) -> int:
        return sum(self.counts)


def window(ctx: Scope, now: datetime) -> Plan[Window]:
    """The per-hour ZCOUNTs of every shard (one pipelined round trip), the in-flight
    occurrences, and the records of the window's cron prompts when they are few."""
    start_ms = to_ms(now)
    edges = [start_ms + hour * 3_600_000 for hour in range(HOURS + 1)]
    every = ctx.every_shard()
    per_shard, _ = yield from shards.each_read(
        ctx,
        lambda keys: [
            *(("ZCOUNT", keys.due, low, f"({high}") for low, high in pairwise(edges)),
            ("ZCOUNT", keys.due, "-inf", f"({start_ms}"),
            ("ZCARD", keys.inflight),
        ],
    )
    counts = [sum(int(replies[hour]) for replies in per_shard) for hour in range(HOURS)]
    overdue = sum(int(replies[HOURS]) for replies in per_shard)
    sizes = [int(replies[HOURS + 1]) for replies in per_shard]
    in_flight = sum(sizes)
    flights: list[Delivery] = []
    if 0 < in_flight <= EXPAND_LIMIT:
        for shard, size in zip(every, sizes, strict=True):
            if size:
                keys = yield store.Command(("ZRANGE", shard.keys.inflight, 0, EXPAND_LIMIT - 1))
                flights += [Delivery.from_key(store.as_text(k), shard.number) for k in keys]
    due_total: int = sum(counts)
    read = in_flight <= EXPAND_LIMIT and due_total + in_flight <= EXPAND_LIMIT
    cron: list[ScheduledPrompt] = []
    if read:
        rows = [(d.prompt_id, ctx.shard(d.shard)) for d in flights if d.scheduled]
        for shard in every if due_total else ():
            found = yield store.Command(
                ("ZRANGEBYSCORE", shard.keys.due, edges[0], f"({edges[-1]}", "LIMIT", 0,
                 EXPAND_LIMIT)
            )  # fmt: skip
            rows += [(store.as_text(i), shard) for i in found]
        cron = yield from _cron_records(list(dict.fromkeys(rows)))
    return Window(now, counts, overdue, in_flight, flights, cron, read)


def _cron_records(rows: list[tuple[str, Scope]]) -> Plan[list[ScheduledPrompt]]:
    found: list[ScheduledPrompt] = []
    for i in range(0, len(rows), _READ):
        chunk = rows[i : i + _READ]
        raws = yield from shards.read(chunk)
        for (pid, shard), raw in zip(chunk, raws, strict=True):
            record = store.parse_record(shard.keys.prompt(pid), raw)
            if record is not None and record.kind is Kind.CRON and record.is_live:
                found.append(record)
    return found


def expand(seen: Window) -> Load:
    """Place the in-flight occurrences and add the repeats of the window's cron prompts to
    the hourly counts (CPU only: the console runs it in a thread)."""
    counts = list(seen.due_counts)
    end = seen.start + HOURS * _HOUR
    overdue = seen.overdue
    for flight in seen.flights:
        when = from_ms(flight.occurrence_ms)
        if when < seen.start:
            overdue += 1
        elif when < end:
            counts[_hour(seen.start, when)] += 1
    next_total = sum(counts)
    repeats = 0
    truncated = False
    for record in seen.cron:
        for when in _repeats(record, end):
            if repeats == EXPAND_OCCURRENCES:
                truncated = True
                break
            if when >= seen.start:
                counts[_hour(seen.start, when)] += 1
                repeats += 1
        if truncated:
            break
    return Load(
        start=seen.start,
        counts=counts,
        overdue=overdue,
        in_flight=seen.in_flight,
        flights_placed=len(seen.flights) == seen.in_flight,
        next_total=next_total,
        repeats=repeats,
        expanded=seen.read,
        truncated=truncated,
    )


def _hour(start: datetime, when: datetime) -> int:
    return int((when - start) / _HOUR)


def _repeats(record: ScheduledPrompt, end: datetime) -> Iterator[datetime]:
    """The occurrences after ``next_run_at`` and before ``end``."""
    later = itertools.islice(fires(record), 1, None)
    return itertools.takewhile(lambda when: when < end, later)


# --- the chart ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    hour: int
    count: int
    x: float
    y: float
    width: float
    height: float
    center: float
    label: str  # the hour's start, UTC (HH:MM)
    show_label: bool


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    baseline: float
    peak: int
    bars: list[Bar]


CHART_WIDTH = 960
CHART_HEIGHT = 260
_LEFT = 40
_TOP = 24
_BOTTOM = 36
_GAP = 6
#: A bar for an hour with any occurrence is at least this tall, so one is never lost.
_MIN_BAR = 3


def chart(load: Load) -> Chart:
    """Bar geometry for the SVG the page draws (no JavaScript, no image file)."""
    plot = CHART_HEIGHT - _TOP - _BOTTOM
    slot = (CHART_WIDTH - _LEFT) / HOURS
    peak = max(load.counts, default=0)
    bars = []
    for hour, count in enumerate(load.counts):
        height = 0.0 if count == 0 else max(_MIN_BAR, plot * count / peak)
        start = load.start + hour * _HOUR
        x = _LEFT + hour * slot + _GAP / 2
        bars.append(
            Bar(
                hour=hour,
                count=count,
                x=round(x, 1),
                y=round(_TOP + plot - height, 1),
                width=round(slot - _GAP, 1),
                height=round(height, 1),
                center=round(x + (slot - _GAP) / 2, 1),
                label=start.strftime("%H:%M"),
                show_label=hour % 3 == 0,
            )
        )
    return Chart(CHART_WIDTH, CHART_HEIGHT, _TOP + plot, peak, bars)
