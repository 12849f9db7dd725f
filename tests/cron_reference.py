"""A brute-force reference for SPEC §3's cron rules: walk real time minute by minute.

Independent of ``schedules.py``: it never maps wall times to instants, it only looks at
the wall clock of each real minute and at the offsets around it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

MINUTE = timedelta(minutes=1)


def _matcher(fields: str) -> Callable[[datetime], bool]:
    """Vixie matching on the value sets croniter expands (day-of-month OR day-of-week when
    both are restricted). Only plain numbers, ranges, lists and steps are supported."""
    expanded, _ = croniter.expand(fields)
    sets = [None if values == ["*"] else {int(v) for v in values} for values in expanded]
    minutes, hours, days, months, weekdays = sets
    if weekdays is not None and 7 in weekdays:
        weekdays = weekdays | {0}

    def matches(wall: datetime) -> bool:
        if minutes is not None and wall.minute not in minutes:
            return False
        if hours is not None and wall.hour not in hours:
            return False
        if months is not None and wall.month not in months:
            return False
        day_ok = days is None or wall.day in days
        weekday_ok = weekdays is None or (wall.isoweekday() % 7) in weekdays
        if days is not None and weekdays is not None:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    return matches


def reference_fires(  # noqa: PLR0917 - mirrors the schedule's own fields
    fields: str, zone: ZoneInfo, fixed_time: bool, after: datetime, count: int, limit: timedelta
) -> list[datetime]:
    """Fire instants strictly after ``after``, found by testing every real minute."""
    _matches = _matcher(fields)
    t = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    end = t + limit
    out: list[datetime] = []
    while t < end and len(out) < count:
        local = t.astimezone(zone)
        wall = local.replace(tzinfo=None)
        prev = (t - MINUTE).astimezone(zone)
        prev_wall = prev.replace(tzinfo=None)
        fires = _matches(wall)
        if fixed_time:
            # Second pass of a repeated wall time: the same wall time was already seen
            # at an earlier real instant (within the last day).
            if fires:
                earlier = (
                    t
                    + (local.utcoffset() or timedelta())
                    - (local.replace(fold=0).utcoffset() or timedelta())
                )
                if earlier < t and earlier.astimezone(zone).replace(tzinfo=None) == wall:
                    fires = False
            # First instant after a gap: fire if any skipped wall time matches.
            skipped = prev_wall + MINUTE
            while not fires and skipped < wall:
                fires = _matches(skipped)
                skipped += MINUTE
        if fires:
            out.append(t)
        t += MINUTE
    return out
