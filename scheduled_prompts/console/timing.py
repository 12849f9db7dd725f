"""Times as the console shows them: a prompt's next fire times, UTC and local clocks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from .. import display
from ..models import Kind, ScheduledPrompt
from ..schedules import fires_after, parse_cron

#: Fire times listed on a prompt's page.
NEXT_FIRES = 10


@dataclass(frozen=True)
class Instant:
    """One instant in UTC and on the prompt's own clock."""

    utc: str
    local: str


def next_fires(record: ScheduledPrompt, count: int = NEXT_FIRES) -> list[datetime]:
    """The next ``count`` occurrences, the way the engine will fire them (see
    :func:`fires`)."""
    return list(itertools.islice(fires(record), count))


def fires(record: ScheduledPrompt) -> Iterator[datetime]:
    """The prompt's fire times from ``next_run_at`` on: none for a paused or finished
    prompt, the one time of a one-time prompt, and for a cron prompt the schedule's
    instants within ``end_at`` and the runs ``max_runs`` leaves, each later by the
    prompt's jitter offset."""
    if not record.is_live or record.next_run_at is None:
        return
    yield record.next_run_at
    if record.kind is Kind.ONCE:
        return
    assert record.cron_expression is not None
    schedule = parse_cron(record.cron_expression, record.timezone)
    # The schedule's instants are nominal; each fires the prompt's jitter offset later.
    offset = record.offset
    later = fires_after(schedule, record.next_run_at - offset, end_at=record.end_at, offset=offset)
    if record.max_runs is not None:
        later = itertools.islice(later, max(0, record.max_runs - record.scheduled_runs - 1))
    yield from later


def utc_text(value: datetime | None) -> str:
    return display.utc_text(value, empty="—")


def local_text(value: datetime | None, zone: str) -> str:
    return display.local_text(value, zone, empty="—")


def instant(value: datetime, zone: str) -> Instant:
    return Instant(utc_text(value), local_text(value, zone))


def seconds_text(value: float | None) -> str:
    """``0.123 s`` / ``12.3 s`` / ``—``."""
    if value is None:
        return "—"
    return f"{value:.3f} s" if abs(value) < 10 else f"{value:.1f} s"
