"""Pure schedule maths: parsing, validation and next-fire instants. No Redis here.

Cron expressions are matched against the *wall clock* of an IANA timezone, and the
daylight-saving rules are those of cronie/Vixie cron:

* A *fixed-time* expression (neither the minute nor the hour field starts with ``*``;
  also ``@daily`` … ``@yearly``) names wall times a person means once a day. A wall
  time inside a spring-forward gap fires once, at the first instant after the gap; a
  wall time inside a repeated fall-back hour fires once, on its first pass.
* A *wildcard* expression (``*/15 * * * *``, ``0 * * * *``) follows real time: both
  passes of a repeated hour fire, and wall times that do not exist do not fire.

All results are aware UTC datetimes; arithmetic happens in UTC.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from ._time import to_iso, truncate_ms, utcnow
from .errors import InvalidSchedule

MAX_CRON_CHARS = 100

#: Macros and the 5-field expressions they stand for.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELDS_HELP = (
    "5 fields: minute (0-59) hour (0-23) day-of-month (1-31, L, W) month (1-12 or "
    "JAN-DEC) day-of-week (0-6 or SUN-SAT, 5L = last Friday, 1#2 = second Monday), "
    "e.g. '0 9 * * 1-5', or one of " + ", ".join(MACROS)
)
# 'H' (hashed) and 'R' (random) are croniter extensions; a bare letter token is one of
# them, while month and weekday names (MAR, THU) contain the letters inside a word.
_EXTENSION_TOKEN = re.compile(r"(?<![A-Za-z])([HhRr])(?![A-Za-z])")
# The largest backward jump of a zone's offset we look for around an instant. Real DST
# shifts are at most 2 h; the window leaves room for rarer offset changes.
_SHIFT_WINDOW = timedelta(hours=26)
# "5L" (last Friday, as in Quartz and most cron docs) is spelled "L5" by croniter.
_LAST_WEEKDAY = re.compile(r"(?<![0-9#])([0-7])L\b")
_EQUAL_RANGE = re.compile(r"^([A-Za-z0-9]+)-([A-Za-z0-9]+)(?:/\d+)?$")
_ONE_MINUTE = timedelta(minutes=1)
#: The offset of an occurrence without jitter.
NO_OFFSET = timedelta(0)


def get_zone(name: object) -> ZoneInfo:
    """The :class:`ZoneInfo` for an IANA name, or :class:`InvalidSchedule`."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidSchedule(
            f"timezone must be an IANA name such as 'Europe/Berlin' or 'UTC', got {name!r}"
        )
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSchedule(
            f"unknown timezone {name!r}: use an IANA name such as 'America/New_York', "
            "'Europe/Berlin' or 'UTC'"
        ) from None


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron expression in a timezone. Build it with :func:`parse_cron`."""

    expression: str
    timezone: str
    fields: str

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def plain(self) -> tuple[tuple[int, ...], tuple[int, ...], frozenset[int] | None] | None:
        """(minutes, hours, weekdays or None for every day) when the expression is plain
        numbers in those fields and ``*`` for day of month and month — the daily and
        weekly shape most schedules have, walked without croniter (see :func:`_plain_walls`);
        None for anything else."""
        return _plain_fields(self.fields)

    @cached_property
    def fixed_time(self) -> bool:
        minute, hour = self.fields.split()[:2]
        return not (minute.startswith("*") or hour.startswith("*"))

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire instant strictly after ``after`` (aware), or None if none is left.

        Matching wall times are walked in order with croniter on naive local times; each
        is mapped to real instants under the DST rules above. Because a fall-back repeats
        wall times, the walk starts early enough to see repeats of times before ``after``
        and stops only when no later wall time can map to an earlier instant.
        """
        if after.utcoffset() is None:
            raise ValueError("after must be an aware datetime")
        a = after.astimezone(UTC)
        zone = self.zone
        back = _offset_span(zone, a, _shift(a, _SHIFT_WINDOW))
        start = _shift(_wall(a, zone), -(back + _ONE_MINUTE))
        walk = self._walls(start)
        best: datetime | None = None
        stop_wall = datetime.max
        while True:
            try:
                m = next(walk)
                if m > stop_wall:
                    return best
                for u in self._instants(m):
                    if u > a and (best is None or u < best):
                        best = u
                        span = _offset_span(zone, _shift(u, -_SHIFT_WINDOW), u)
                        stop_wall = _shift(_wall(u, zone), span)
            except (CroniterBadDateError, OverflowError, StopIteration):
                # No match left, or the walk reached the end of the calendar (year 9999).
                return best

    def _walls(self, start: datetime) -> Iterator[datetime]:
        """The matching naive wall times strictly after ``start``, ascending."""
        if self.plain is not None:
            return _plain_walls(start, *self.plain)
        walk = croniter(self.fields, start, ret_type=datetime)
        return iter(functools.partial(walk.get_next, datetime), None)

    def iter_after(self, after: datetime) -> Iterator[datetime]:
        """Fire instants strictly after ``after``, in order, for as long as they last."""
        current: datetime | None = after
        while current is not None:
            current = self.next_after(current)
            if current is not None:
                yield current

    def _instants(self, wall: datetime) -> tuple[datetime, ...]:
        zone = self.zone
        first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
        if first == second:
            return (first,)
        if first < second:  # repeated (fall-back) wall time: fold=0 is the first pass
            return (first,) if self.fixed_time else (first, second)
        # A wall time inside a spring-forward gap: fold=1 maps before the transition,
        # fold=0 after it.
        return (_transition(zone, second, first),) if self.fixed_time else ()


def parse_cron(expression: object, timezone: object = "UTC") -> CronSchedule:
    """Validate ``expression`` and ``timezone``; raise :class:`InvalidSchedule` if bad."""
    if isinstance(expression, str) and isinstance(timezone, str):
        return _parse_cron_text(expression, timezone)  # remembered: a schedule is immutable
    return _parse_cron(expression, timezone)


@functools.lru_cache(maxsize=1024)
def _parse_cron_text(expression: str, timezone: str) -> CronSchedule:
    return _parse_cron(expression, timezone)


def _parse_cron(expression: object, timezone: object) -> CronSchedule:
    if not isinstance(expression, str):
        raise InvalidSchedule(
            f"cron must be a string of {_FIELDS_HELP}; got {type(expression).__name__}"
        )
    text = " ".join(expression.split())
    if not text:
        raise InvalidSchedule(f"cron must not be empty; use {_FIELDS_HELP}")
    if len(expression) > MAX_CRON_CHARS:
        raise InvalidSchedule(
            f"cron must be at most {MAX_CRON_CHARS} characters, got {len(expression)}"
        )
    zone = get_zone(timezone)
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise InvalidSchedule(
                "'@reboot' is not supported: a scheduled prompt needs clock times; use "
                + _FIELDS_HELP
            )
        fields = MACROS.get(text.lower())
        if fields is None:
            raise InvalidSchedule(f"unknown cron macro {text!r}; use {_FIELDS_HELP}")
    else:
        parts = text.split()
        if len(parts) != 5:
            extra = " (seconds and year fields are not supported)" if len(parts) in (6, 7) else ""
            raise InvalidSchedule(
                f"cron must have 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(parts)}: {text!r}{extra}"
            )
        match = _EXTENSION_TOKEN.search(text)
        if match:
            raise InvalidSchedule(
                f"cron {text!r} uses '{match.group(1)}' (hashed/random values), which is "
                f"not supported; use explicit values: {_FIELDS_HELP}"
            )
        parts[4] = _LAST_WEEKDAY.sub(r"L\1", parts[4])
        fields = " ".join(_collapse_equal_ranges(part) for part in parts)
    if _plain_fields(fields) is not None:  # valid by its shape, and fires every week
        return CronSchedule(expression=text, timezone=zone.key, fields=fields)
    try:
        probe = croniter(fields, datetime(2000, 1, 1), ret_type=datetime)
        probe.get_next(datetime)
    except CroniterBadDateError:
        raise InvalidSchedule(f"cron {text!r} never fires: no date matches it") from None
    except (CroniterBadCronError, ValueError, KeyError, IndexError) as exc:
        raise InvalidSchedule(f"invalid cron {text!r} ({exc}); use {_FIELDS_HELP}") from None
    return CronSchedule(expression=text, timezone=zone.key, fields=fields)


def localize(wall: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall time in ``zone`` as a UTC instant, by the fixed-time DST rules.

    A repeated wall time means its first pass; a wall time inside a gap means the first
    instant after the gap.
    """
    naive = wall.replace(tzinfo=None)
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first <= second:
        return first
    return _transition(zone, second, first)


def parse_instant(name: str, value: object, zone: ZoneInfo) -> datetime:
    """A time argument (aware datetime, or ISO-8601; naive means in ``zone``) as UTC ms."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidSchedule(
                f"{name} must be an ISO-8601 date-time such as '2026-03-08T09:30:00+01:00' "
                f"(an offset or 'Z' is recommended), got {value!r}"
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise InvalidSchedule(
            f"{name} must be a datetime or an ISO-8601 string, got {type(value).__name__}"
        )
    try:
        aware = parsed.astimezone(UTC) if parsed.utcoffset() is not None else localize(parsed, zone)
        return truncate_ms(aware)
    except OverflowError:
        raise InvalidSchedule(f"{name} {parsed.isoformat()} is out of range") from None


def resolve_at(at: object, timezone: object, now: datetime) -> datetime:
    """The instant of ``at=``, which must not be in the past."""
    instant = parse_instant("at", at, get_zone(timezone))
    if instant < truncate_ms(now):
        raise InvalidSchedule(
            f"at is in the past ({to_iso(instant)} is before now, {to_iso(now)}); "
            "give a future time, with its UTC offset"
        )
    return instant


def resolve_delay(delay: object, now: datetime) -> datetime:
    """The instant ``delay`` (seconds, or a timedelta; >= 0) after ``now``."""
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise InvalidSchedule(
            f"delay must be a number of seconds or a timedelta, got {type(delay).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidSchedule(f"delay must be a finite number of seconds >= 0, got {delay!r}")
    try:
        return truncate_ms(now + timedelta(seconds=seconds))
    except OverflowError:
        raise InvalidSchedule(f"delay {delay!r} is too far in the future") from None


def first_cron_run(
    schedule: CronSchedule,
    now: datetime,
    *,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
    offset: timedelta = NO_OFFSET,
) -> datetime | None:
    """The first occurrence that fires after ``now``, at or after ``start_at``, at or
    before ``end_at`` (both nominal), as the instant it fires: its nominal time plus
    ``offset`` (a prompt's jitter, see :func:`jitter_offset`)."""
    after = now - offset
    if start_at is not None and start_at > after:
        after = start_at - timedelta(microseconds=1)
    nominal = _bounded(_next_after(schedule, after), end_at)
    return None if nominal is None else nominal + offset


def fires_after(
    schedule: CronSchedule,
    nominal: datetime,
    *,
    end_at: datetime | None = None,
    offset: timedelta = NO_OFFSET,
) -> Iterator[datetime]:
    """The occurrences after ``nominal`` (a nominal time), in order, up to ``end_at``, each
    as the instant it fires: its nominal time plus ``offset`` (a prompt's jitter)."""
    while (following := next_cron_run(schedule, nominal, end_at=end_at)) is not None:
        yield following + offset
        nominal = following


def next_cron_run(
    schedule: CronSchedule, after: datetime, *, end_at: datetime | None = None
) -> datetime | None:
    """The occurrence after ``after`` within ``end_at``, or None when the schedule is over.

    Remembered for recent (schedule, instant) pairs: prompts sharing an expression and
    firing together (``0 9 * * *`` for many users) ask the same question many times.
    """
    return _bounded(_next_after(schedule, after), end_at)


@functools.lru_cache(maxsize=4096)
def _next_after(schedule: CronSchedule, after: datetime) -> datetime | None:
    return schedule.next_after(after)


#: The longest jitter a one-time prompt takes (a cron prompt's is below its interval).
MAX_ONCE_JITTER_SECONDS = 86_400.0
#: Fire times looked at to find a cron schedule's shortest interval.
_GAP_SAMPLES = 500


def jitter_offset(prompt_id: str, jitter_seconds: float | None) -> timedelta:
    """The prompt's fixed offset in [0, ``jitter_seconds``), whole milliseconds, derived
    from its id: the same for every occurrence and every process, different across
    prompts (SHA-256 of the id as a fraction)."""
    if not jitter_seconds:
        return NO_OFFSET
    fraction = int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "big") / 2**64
    return timedelta(milliseconds=math.floor(fraction * jitter_seconds * 1000))


def shortest_interval(schedule: CronSchedule, after: datetime) -> timedelta | None:
    """The shortest time between two fires of ``schedule`` over its next
    :data:`_GAP_SAMPLES` (None when it fires at most once)."""
    shortest: timedelta | None = None
    previous: datetime | None = None
    for n, instant in enumerate(schedule.iter_after(after)):
        if previous is not None and (shortest is None or instant - previous < shortest):
            shortest = instant - previous
        previous = instant
        if n >= _GAP_SAMPLES:
            break
    return shortest


def check_jitter(
    jitter_seconds: object, schedule: CronSchedule | None, now: datetime
) -> float | None:
    """``jitter_seconds`` if it is a number of seconds the schedule can take: > 0, and
    below a cron schedule's shortest interval (or :data:`MAX_ONCE_JITTER_SECONDS` for a
    one-time prompt) so that occurrences keep their order; None stays None."""
    if jitter_seconds is None:
        return None
    if (
        isinstance(jitter_seconds, bool)
        or not isinstance(jitter_seconds, int | float)
        or not math.isfinite(jitter_seconds)
        or jitter_seconds <= 0
    ):
        raise InvalidSchedule(
            f"jitter_seconds must be a number of seconds > 0 (or None), got {jitter_seconds!r}"
        )
    if schedule is None:
        if jitter_seconds > MAX_ONCE_JITTER_SECONDS:
            raise InvalidSchedule(
                f"jitter_seconds of a one-time prompt is at most {MAX_ONCE_JITTER_SECONDS:g} "
                f"(a day), got {jitter_seconds:g}"
            )
        return float(jitter_seconds)
    gap = shortest_interval(schedule, now)
    if gap is not None and jitter_seconds >= gap.total_seconds():
        raise InvalidSchedule(
            f"jitter_seconds must be below the cron schedule's shortest interval "
            f"({gap.total_seconds():g} s for {schedule.expression!r}), got {jitter_seconds:g}"
        )
    return float(jitter_seconds)


def preview_schedule(
    cron: str,
    timezone: str = "UTC",
    *,
    start: datetime | None = None,
    count: int = 5,
    jitter_seconds: float | None = None,
    prompt_id: str | None = None,
) -> list[datetime]:
    """The next ``count`` fire instants of ``cron`` in ``timezone`` strictly after ``start``.

    ``start`` defaults to now; a naive ``start`` is read as a wall time in ``timezone``.
    Results are aware UTC datetimes. With ``jitter_seconds`` and the prompt's id, each
    instant is the jittered one the prompt fires at (its nominal time plus the prompt's
    offset, see :func:`jitter_offset`).
    """
    schedule = parse_cron(cron, timezone)
    if (jitter_seconds is None) != (prompt_id is None):
        raise InvalidSchedule("give jitter_seconds and prompt_id together (or neither)")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 10_000:
        raise InvalidSchedule(f"count must be an integer from 0 to 10000, got {count!r}")
    if start is None:
        start = utcnow()
    elif not isinstance(start, datetime):
        raise InvalidSchedule(f"start must be a datetime, got {type(start).__name__}")
    elif start.utcoffset() is None:
        start = localize(start, schedule.zone)
    shift = NO_OFFSET
    if prompt_id is not None:
        check_jitter(jitter_seconds, schedule, start.astimezone(UTC))
        shift = jitter_offset(prompt_id, jitter_seconds)
    return list(itertools.islice(fires_after(schedule, start - shift, offset=shift), count))


_PLAIN_PART = re.compile(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?")


def _plain_values(field: str, low: int, high: int) -> tuple[int, ...] | None:
    """The values of a field made of ``*``, ``*/S``, ``N``, ``A-B`` and ``A-B/S`` parts
    (comma-separated) within [low, high], ascending; None for any other form (names, L,
    W, #, ``N/S``, a reversed range) or a value out of bounds, left to croniter."""
    values: set[int] = set()
    for part in field.split(","):
        match = _PLAIN_PART.fullmatch(part)
        if match is None:
            return None
        step = int(match[4]) if match[4] else 1
        if match[1] == "*":
            first, last = low, high
        elif match[4] and not match[3]:
            return None  # "N/S": croniter's own reading, not walked here
        else:
            first = int(match[2])
            last = int(match[3]) if match[3] else first
        if step < 1 or not low <= first <= last <= high:
            return None
        values.update(range(first, last + 1, step))
    return tuple(sorted(values))


@functools.lru_cache(maxsize=4096)
def _plain_fields(
    fields: str,
) -> tuple[tuple[int, ...], tuple[int, ...], frozenset[int] | None] | None:
    minute, hour, day, month, weekday = fields.split()
    if day != "*" or month != "*":
        return None
    minutes, hours = _plain_values(minute, 0, 59), _plain_values(hour, 0, 23)
    days = None if weekday == "*" else _plain_values(weekday, 0, 7)
    if minutes is None or hours is None or (weekday != "*" and days is None):
        return None
    return minutes, hours, None if days is None else frozenset(d % 7 for d in days)


def _plain_walls(
    start: datetime,
    minutes: tuple[int, ...],
    hours: tuple[int, ...],
    weekdays: frozenset[int] | None,
) -> Iterator[datetime]:
    """Wall times strictly after ``start`` (naive) at one of ``hours``:``minutes`` on a
    day whose weekday (0 = Sunday) is in ``weekdays`` (None: every day), ascending — what
    croniter's walk gives for such an expression, without its per-step date arithmetic.
    Raises OverflowError past the end of the calendar, as croniter does."""
    day = start.date()
    while True:
        if weekdays is None or day.isoweekday() % 7 in weekdays:
            for hour in hours:
                for minute in minutes:
                    wall = datetime(day.year, day.month, day.day, hour, minute)
                    if wall > start:
                        yield wall
        day += timedelta(days=1)


def _collapse_equal_ranges(field: str) -> str:
    """Rewrite ``N-N`` (and ``N-N/S``) as ``N``.

    In Vixie cron ``22-22`` is hour 22 alone; croniter reads an equal range as the whole
    cycle ("Jan-Jan"), which would turn ``0 22-22 * * *`` into an hourly schedule.
    """
    items = []
    for item in field.split(","):
        match = _EQUAL_RANGE.match(item)
        same = match and _same_value(match.group(1), match.group(2))
        items.append(match.group(1) if match and same else item)
    return ",".join(items)


def _same_value(low: str, high: str) -> bool:
    if low.isdigit() and high.isdigit():
        return int(low) == int(high)
    return low.lower() == high.lower()


def _bounded(instant: datetime | None, end_at: datetime | None) -> datetime | None:
    if instant is None or (end_at is not None and instant > end_at):
        return None
    return instant


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _offset(instant: datetime, zone: ZoneInfo) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def _shift(value: datetime, delta: timedelta) -> datetime:
    """``value + delta``, saturated at the ends of the calendar instead of overflowing."""
    try:
        return value + delta
    except OverflowError:
        edge = datetime.max if delta > timedelta(0) else datetime.min
        return edge.replace(tzinfo=value.tzinfo)


def _offset_span(zone: ZoneInfo, lo: datetime, hi: datetime) -> timedelta:
    """How far the zone's UTC offset moves within [lo, hi], sampled at every whole hour
    from the one at or before ``lo`` to the one at or after ``hi``; 0 if fixed. (A wider
    window than asked only makes the callers walk a little further.)"""
    return _hours_span(zone, math.floor(lo.timestamp() / 3600), math.ceil(hi.timestamp() / 3600))


@functools.lru_cache(maxsize=4096)
def _hours_span(zone: ZoneInfo, first: int, last: int) -> timedelta:
    offsets = {o for hour in range(first, last + 1) if (o := _hour_offset(zone, hour)) is not None}
    return max(offsets) - min(offsets) if offsets else timedelta(0)


@functools.lru_cache(maxsize=16_384)
def _hour_offset(zone: ZoneInfo, hour: int) -> timedelta | None:
    """The zone's UTC offset at the start of epoch hour ``hour`` (None outside the
    calendar). Remembered: the walks of many prompts in one zone ask the same hours."""
    try:
        return _offset(datetime.fromtimestamp(hour * 3600, UTC), zone)
    except (OverflowError, ValueError, OSError):
        return None


def _transition(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first instant in (before, after] whose offset is that of ``after`` (to 1 s)."""
    target = _offset(after, zone)
    lo, hi = int(before.timestamp()), int(after.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(datetime.fromtimestamp(mid, UTC), zone) == target:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)
