"""Schedules (SPEC §3): cron parsing and validation, DST rules, one-time instants.

Pure tests with explicit datetimes: a peer's DST suite, hand-computed 2026 transitions of
three zones, and a property test against the minute-by-minute reference in
``tests/cron_reference.py``.
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduled_prompts.errors import InvalidSchedule
from scheduled_prompts.schedules import (
    MACROS,
    first_cron_run,
    localize,
    next_cron_run,
    parse_cron,
    preview_schedule,
    resolve_at,
    resolve_delay,
)
from tests.cron_reference import reference_fires

NEW_YORK = "America/New_York"
BERLIN = "Europe/Berlin"
SYDNEY = "Australia/Sydney"
LORD_HOWE = "Australia/Lord_Howe"
RIGA = "Europe/Riga"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- 1. The peer DST suite (cronsim, Europe/Riga 2021) ------------------------------------

VECTORS_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "cronsim_dst_vectors.json"


def _peer_cases() -> list[Any]:
    if not VECTORS_PATH.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{VECTORS_PATH} is missing"))]
    cases = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return [pytest.param(case, id=case["name"]) for case in cases]


@pytest.mark.parametrize("case", _peer_cases())
def test_preview_matches_peer_dst_vector(case: dict[str, Any]) -> None:
    start = datetime(*case["start"], tzinfo=ZoneInfo(case["tz"]), fold=case["fold"])
    expected = [datetime.fromisoformat(text) for text in case["expect"]]

    got = preview_schedule(case["expr"], case["tz"], start=start, count=len(expected))

    assert got == expected  # aware datetimes: equal when they name the same instant


# --- 2. Hand-computed 2026 transitions ------------------------------------------------------
# America/New_York: EST -5 / EDT -4. Gap 2026-03-08 02:00-02:59 (07:00 UTC); repeated hour
#   2026-11-01 01:00-01:59 (first pass EDT 05:xx UTC, second pass EST 06:xx UTC).
# Europe/Berlin: CET +1 / CEST +2. Gap 2026-03-29 02:00-02:59 (01:00 UTC); repeated hour
#   2026-10-25 02:00-02:59 (first pass CEST 00:xx UTC, second pass CET 01:xx UTC).
# Australia/Sydney: AEST +10 / AEDT +11. Repeated hour 2026-04-05 02:00-02:59 (first pass
#   AEDT 2026-04-04 15:xx UTC, second pass AEST 16:xx UTC); gap 2026-10-04 02:00-02:59
#   (2026-10-03 16:00 UTC).


@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [
        pytest.param(
            NEW_YORK,
            utc(2026, 3, 7),
            [
                utc(2026, 3, 7, 7, 30),  # Mar 7 02:30 EST
                utc(2026, 3, 8, 7, 0),  # Mar 8 03:00 EDT: 02:30 does not exist
                utc(2026, 3, 9, 6, 30),  # Mar 9 02:30 EDT
            ],
            id="new_york",
        ),
        pytest.param(
            BERLIN,
            utc(2026, 3, 28),
            [
                utc(2026, 3, 28, 1, 30),  # Mar 28 02:30 CET
                utc(2026, 3, 29, 1, 0),  # Mar 29 03:00 CEST: 02:30 does not exist
                utc(2026, 3, 30, 0, 30),  # Mar 30 02:30 CEST
            ],
            id="berlin",
        ),
        pytest.param(
            SYDNEY,
            utc(2026, 10, 2),
            [
                utc(2026, 10, 2, 16, 30),  # Oct 3 02:30 AEST
                utc(2026, 10, 3, 16, 0),  # Oct 4 03:00 AEDT: 02:30 does not exist
                utc(2026, 10, 4, 15, 30),  # Oct 5 02:30 AEDT
            ],
            id="sydney",
        ),
    ],
)
def test_fixed_time_in_spring_gap_fires_once_at_gap_end(
    tz: str, start: datetime, expected: list[datetime]
) -> None:
    assert preview_schedule("30 2 * * *", tz, start=start, count=3) == expected


@pytest.mark.parametrize(
    ("expr", "tz", "start", "expected"),
    [
        pytest.param(
            "0,30 2 * * *",
            NEW_YORK,
            utc(2026, 3, 7, 12),
            [
                utc(2026, 3, 8, 7, 0),  # Mar 8 03:00 EDT, for both 02:00 and 02:30
                utc(2026, 3, 9, 6, 0),  # Mar 9 02:00 EDT
                utc(2026, 3, 9, 6, 30),  # Mar 9 02:30 EDT
            ],
            id="new_york",
        ),
        pytest.param(
            "0,15,45 2 * * *",
            BERLIN,
            utc(2026, 3, 28, 12),
            [
                utc(2026, 3, 29, 1, 0),  # Mar 29 03:00 CEST, for 02:00, 02:15 and 02:45
                utc(2026, 3, 30, 0, 0),  # Mar 30 02:00 CEST
                utc(2026, 3, 30, 0, 15),  # Mar 30 02:15 CEST
            ],
            id="berlin",
        ),
    ],
)
def test_several_fixed_times_in_spring_gap_fire_once_together(
    expr: str, tz: str, start: datetime, expected: list[datetime]
) -> None:
    assert preview_schedule(expr, tz, start=start, count=3) == expected


@pytest.mark.parametrize(
    ("expr", "tz", "start", "expected"),
    [
        pytest.param(
            "30 1 * * *",
            NEW_YORK,
            utc(2026, 10, 31, 12),
            [
                utc(2026, 11, 1, 5, 30),  # Nov 1 01:30 EDT (first pass; not 06:30 UTC)
                utc(2026, 11, 2, 6, 30),  # Nov 2 01:30 EST
                utc(2026, 11, 3, 6, 30),  # Nov 3 01:30 EST
            ],
            id="new_york",
        ),
        pytest.param(
            "30 2 * * *",
            BERLIN,
            utc(2026, 10, 24, 12),
            [
                utc(2026, 10, 25, 0, 30),  # Oct 25 02:30 CEST (first pass; not 01:30 UTC)
                utc(2026, 10, 26, 1, 30),  # Oct 26 02:30 CET
                utc(2026, 10, 27, 1, 30),  # Oct 27 02:30 CET
            ],
            id="berlin",
        ),
        pytest.param(
            "30 2 * * *",
            SYDNEY,
            utc(2026, 4, 4),  # Apr 4 11:00 AEDT
            [
                utc(2026, 4, 4, 15, 30),  # Apr 5 02:30 AEDT (first pass; not 16:30 UTC)
                utc(2026, 4, 5, 16, 30),  # Apr 6 02:30 AEST
                utc(2026, 4, 6, 16, 30),  # Apr 7 02:30 AEST
            ],
            id="sydney",
        ),
    ],
)
def test_fixed_time_in_repeated_hour_fires_once_on_first_pass(
    expr: str, tz: str, start: datetime, expected: list[datetime]
) -> None:
    assert preview_schedule(expr, tz, start=start, count=3) == expected


@pytest.mark.parametrize(
    ("expr", "tz", "start", "expected"),
    [
        pytest.param(
            "30 1 * * *",
            NEW_YORK,
            utc(2026, 11, 1, 6, 15),  # Nov 1 01:15 EST, the second pass
            utc(2026, 11, 2, 6, 30),  # Nov 2 01:30 EST, not Nov 1 01:30 EST (06:30 UTC)
            id="new_york",
        ),
        pytest.param(
            "30 2 * * *",
            BERLIN,
            utc(2026, 10, 25, 1, 15),  # Oct 25 02:15 CET, the second pass
            utc(2026, 10, 26, 1, 30),  # Oct 26 02:30 CET, not Oct 25 02:30 CET (01:30 UTC)
            id="berlin",
        ),
        pytest.param(
            "30 2 * * *",
            SYDNEY,
            utc(2026, 4, 4, 16, 15),  # Apr 5 02:15 AEST, the second pass
            utc(2026, 4, 5, 16, 30),  # Apr 6 02:30 AEST, not Apr 5 02:30 AEST (16:30 UTC)
            id="sydney",
        ),
    ],
)
def test_fixed_time_started_during_second_pass_waits_for_next_day(
    expr: str, tz: str, start: datetime, expected: datetime
) -> None:
    assert preview_schedule(expr, tz, start=start, count=1) == [expected]


@pytest.mark.parametrize(
    ("expr", "tz", "start", "expected"),
    [
        pytest.param(
            "*/30 * * * *",
            NEW_YORK,
            utc(2026, 11, 1, 4, 50),  # Nov 1 00:50 EDT
            [
                utc(2026, 11, 1, 5, 0),  # 01:00 EDT
                utc(2026, 11, 1, 5, 30),  # 01:30 EDT
                utc(2026, 11, 1, 6, 0),  # 01:00 EST
                utc(2026, 11, 1, 6, 30),  # 01:30 EST
                utc(2026, 11, 1, 7, 0),  # 02:00 EST
            ],
            id="new_york_every_30_minutes",
        ),
        pytest.param(
            "0 * * * *",
            NEW_YORK,
            utc(2026, 11, 1, 4, 30),  # Nov 1 00:30 EDT
            [
                utc(2026, 11, 1, 5, 0),  # 01:00 EDT
                utc(2026, 11, 1, 6, 0),  # 01:00 EST
                utc(2026, 11, 1, 7, 0),  # 02:00 EST
            ],
            id="new_york_hourly",
        ),
        pytest.param(
            "*/30 * * * *",
            BERLIN,
            utc(2026, 10, 24, 23, 45),  # Oct 25 01:45 CEST
            [
                utc(2026, 10, 25, 0, 0),  # 02:00 CEST
                utc(2026, 10, 25, 0, 30),  # 02:30 CEST
                utc(2026, 10, 25, 1, 0),  # 02:00 CET
                utc(2026, 10, 25, 1, 30),  # 02:30 CET
                utc(2026, 10, 25, 2, 0),  # 03:00 CET
            ],
            id="berlin_every_30_minutes",
        ),
        pytest.param(
            "0 * * * *",
            BERLIN,
            utc(2026, 10, 24, 23, 30),  # Oct 25 01:30 CEST
            [
                utc(2026, 10, 25, 0, 0),  # 02:00 CEST
                utc(2026, 10, 25, 1, 0),  # 02:00 CET
                utc(2026, 10, 25, 2, 0),  # 03:00 CET
            ],
            id="berlin_hourly",
        ),
        pytest.param(
            "*/30 * * * *",
            SYDNEY,
            utc(2026, 4, 4, 14, 50),  # Apr 5 01:50 AEDT
            [
                utc(2026, 4, 4, 15, 0),  # 02:00 AEDT
                utc(2026, 4, 4, 15, 30),  # 02:30 AEDT
                utc(2026, 4, 4, 16, 0),  # 02:00 AEST
                utc(2026, 4, 4, 16, 30),  # 02:30 AEST
                utc(2026, 4, 4, 17, 0),  # 03:00 AEST
            ],
            id="sydney_every_30_minutes",
        ),
        pytest.param(
            "0 * * * *",
            SYDNEY,
            utc(2026, 4, 4, 14, 30),  # Apr 5 01:30 AEDT
            [
                utc(2026, 4, 4, 15, 0),  # 02:00 AEDT
                utc(2026, 4, 4, 16, 0),  # 02:00 AEST
                utc(2026, 4, 4, 17, 0),  # 03:00 AEST
            ],
            id="sydney_hourly",
        ),
    ],
)
def test_wildcard_fires_on_both_passes_of_repeated_hour(
    expr: str, tz: str, start: datetime, expected: list[datetime]
) -> None:
    assert preview_schedule(expr, tz, start=start, count=len(expected)) == expected


@pytest.mark.parametrize(
    ("expr", "tz", "start", "expected"),
    [
        pytest.param(
            "*/30 * * * *",
            NEW_YORK,
            utc(2026, 3, 8, 6, 0),  # Mar 8 01:00 EST
            [
                utc(2026, 3, 8, 6, 30),  # 01:30 EST
                utc(2026, 3, 8, 7, 0),  # 03:00 EDT (02:00 and 02:30 do not exist)
                utc(2026, 3, 8, 7, 30),  # 03:30 EDT
            ],
            id="new_york_every_30_minutes",
        ),
        pytest.param(
            "0 * * * *",
            NEW_YORK,
            utc(2026, 3, 8, 5, 30),  # Mar 8 00:30 EST
            [
                utc(2026, 3, 8, 6, 0),  # 01:00 EST
                utc(2026, 3, 8, 7, 0),  # 03:00 EDT
                utc(2026, 3, 8, 8, 0),  # 04:00 EDT
            ],
            id="new_york_hourly",
        ),
        pytest.param(
            "*/30 * * * *",
            BERLIN,
            utc(2026, 3, 29, 0, 0),  # Mar 29 01:00 CET
            [
                utc(2026, 3, 29, 0, 30),  # 01:30 CET
                utc(2026, 3, 29, 1, 0),  # 03:00 CEST
                utc(2026, 3, 29, 1, 30),  # 03:30 CEST
            ],
            id="berlin_every_30_minutes",
        ),
        pytest.param(
            "0 * * * *",
            BERLIN,
            utc(2026, 3, 28, 23, 30),  # Mar 29 00:30 CET
            [
                utc(2026, 3, 29, 0, 0),  # 01:00 CET
                utc(2026, 3, 29, 1, 0),  # 03:00 CEST
                utc(2026, 3, 29, 2, 0),  # 04:00 CEST
            ],
            id="berlin_hourly",
        ),
        pytest.param(
            "*/30 * * * *",
            SYDNEY,
            utc(2026, 10, 3, 15, 0),  # Oct 4 01:00 AEST
            [
                utc(2026, 10, 3, 15, 30),  # 01:30 AEST
                utc(2026, 10, 3, 16, 0),  # 03:00 AEDT
                utc(2026, 10, 3, 16, 30),  # 03:30 AEDT
            ],
            id="sydney_every_30_minutes",
        ),
        pytest.param(
            "0 * * * *",
            SYDNEY,
            utc(2026, 10, 3, 14, 30),  # Oct 4 00:30 AEST
            [
                utc(2026, 10, 3, 15, 0),  # 01:00 AEST
                utc(2026, 10, 3, 16, 0),  # 03:00 AEDT
                utc(2026, 10, 3, 17, 0),  # 04:00 AEDT
            ],
            id="sydney_hourly",
        ),
    ],
)
def test_wildcard_skips_wall_times_in_spring_gap(
    expr: str, tz: str, start: datetime, expected: list[datetime]
) -> None:
    assert preview_schedule(expr, tz, start=start, count=len(expected)) == expected


@pytest.mark.parametrize(
    ("expr", "tz", "start", "expected"),
    [
        pytest.param(
            "*/30 * * * *",
            NEW_YORK,
            utc(2026, 11, 1, 5, 45),  # Nov 1 01:45 EDT, the first pass
            [
                utc(2026, 11, 1, 6, 0),  # 01:00 EST: an earlier wall time, a later instant
                utc(2026, 11, 1, 6, 30),  # 01:30 EST
                utc(2026, 11, 1, 7, 0),  # 02:00 EST
            ],
            id="new_york",
        ),
        pytest.param(
            "15 * * * *",
            SYDNEY,
            utc(2026, 4, 4, 15, 45),  # Apr 5 02:45 AEDT, the first pass
            [
                utc(2026, 4, 4, 16, 15),  # 02:15 AEST
                utc(2026, 4, 4, 17, 15),  # 03:15 AEST
            ],
            id="sydney",
        ),
    ],
)
def test_wildcard_started_during_first_pass_fires_again_on_second_pass(
    expr: str, tz: str, start: datetime, expected: list[datetime]
) -> None:
    assert preview_schedule(expr, tz, start=start, count=len(expected)) == expected


@pytest.mark.parametrize(
    ("tz", "day", "fires"),
    [
        pytest.param(NEW_YORK, datetime(2026, 3, 8), 23, id="new_york_spring"),
        pytest.param(NEW_YORK, datetime(2026, 11, 1), 25, id="new_york_fall"),
        pytest.param(BERLIN, datetime(2026, 3, 29), 23, id="berlin_spring"),
        pytest.param(BERLIN, datetime(2026, 10, 25), 25, id="berlin_fall"),
        pytest.param(SYDNEY, datetime(2026, 4, 5), 25, id="sydney_fall"),
        pytest.param(SYDNEY, datetime(2026, 10, 4), 23, id="sydney_spring"),
    ],
)
def test_hourly_fires_once_per_real_hour_on_transition_day(
    tz: str, day: datetime, fires: int
) -> None:
    zone = ZoneInfo(tz)
    start = (day - timedelta(minutes=1)).replace(tzinfo=zone)
    got = preview_schedule("0 * * * *", tz, start=start, count=30)
    on_day = [t for t in got if t.astimezone(zone).date() == day.date()]

    assert len(on_day) == fires
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(on_day))


@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [
        pytest.param(
            NEW_YORK,
            utc(2026, 3, 8, 12),
            [utc(2026, 3, 9, 6, 30), utc(2026, 3, 10, 6, 30)],  # 02:30 EDT
            id="new_york_spring",
        ),
        pytest.param(
            NEW_YORK,
            utc(2026, 11, 1, 12),
            [utc(2026, 11, 2, 7, 30), utc(2026, 11, 3, 7, 30)],  # 02:30 EST
            id="new_york_fall",
        ),
        pytest.param(
            BERLIN,
            utc(2026, 3, 29, 12),
            [utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)],  # 02:30 CEST
            id="berlin_spring",
        ),
        pytest.param(
            BERLIN,
            utc(2026, 10, 25, 12),
            [utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)],  # 02:30 CET
            id="berlin_fall",
        ),
        pytest.param(
            SYDNEY,
            utc(2026, 4, 5),  # Apr 5 10:00 AEST
            [utc(2026, 4, 5, 16, 30), utc(2026, 4, 6, 16, 30)],  # Apr 6, 7 02:30 AEST
            id="sydney_fall",
        ),
        pytest.param(
            SYDNEY,
            utc(2026, 10, 4),  # Oct 4 11:00 AEDT
            [utc(2026, 10, 4, 15, 30), utc(2026, 10, 5, 15, 30)],  # Oct 5, 6 02:30 AEDT
            id="sydney_spring",
        ),
    ],
)
def test_fixed_time_day_after_transition_is_back_to_normal(
    tz: str, start: datetime, expected: list[datetime]
) -> None:
    assert preview_schedule("30 2 * * *", tz, start=start, count=2) == expected


@pytest.mark.parametrize(
    ("tz", "day"),
    [
        pytest.param(NEW_YORK, datetime(2026, 3, 9), id="new_york_spring"),
        pytest.param(NEW_YORK, datetime(2026, 11, 2), id="new_york_fall"),
        pytest.param(BERLIN, datetime(2026, 3, 30), id="berlin_spring"),
        pytest.param(BERLIN, datetime(2026, 10, 26), id="berlin_fall"),
        pytest.param(SYDNEY, datetime(2026, 4, 6), id="sydney_fall"),
        pytest.param(SYDNEY, datetime(2026, 10, 5), id="sydney_spring"),
    ],
)
def test_wildcard_day_after_transition_is_back_to_normal(tz: str, day: datetime) -> None:
    zone = ZoneInfo(tz)
    start = (day - timedelta(minutes=1)).replace(tzinfo=zone)
    got = preview_schedule("*/30 * * * *", tz, start=start, count=48)

    walls = [t.astimezone(zone).replace(tzinfo=None) for t in got]
    assert walls == [day + timedelta(minutes=30 * i) for i in range(48)]


def test_daily_macro_at_midnight_spring_gap_fires_once_at_gap_end() -> None:
    # America/Santiago springs forward at midnight: 2026-09-06 00:00 -04 -> 01:00 -03.
    got = preview_schedule("@daily", "America/Santiago", start=utc(2026, 9, 4, 12), count=3)

    assert got == [
        utc(2026, 9, 5, 4, 0),  # Sep 5 00:00 -04
        utc(2026, 9, 6, 4, 0),  # Sep 6 01:00 -03: midnight does not exist
        utc(2026, 9, 7, 3, 0),  # Sep 7 00:00 -03
    ]


# --- 3. Property test against the brute-force reference -------------------------------------

#: The 2026 transitions of each zone, as UTC instants (UTC has none: any day will do).
TRANSITIONS: dict[str, list[datetime]] = {
    NEW_YORK: [utc(2026, 3, 8, 7), utc(2026, 11, 1, 6)],
    BERLIN: [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)],
    RIGA: [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)],
    SYDNEY: [utc(2026, 4, 4, 16), utc(2026, 10, 3, 16)],
    # Lord Howe moves by 30 minutes: 02:00 +11 -> 01:30 +10:30, 02:00 +10:30 -> 02:30 +11.
    LORD_HOWE: [utc(2026, 4, 4, 15), utc(2026, 10, 3, 15, 30)],
    "UTC": [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)],
}


@pytest.mark.parametrize(
    ("tz", "instant"),
    [(tz, instant) for tz, instants in TRANSITIONS.items() if tz != "UTC" for instant in instants],
)
def test_property_test_transitions_are_real_offset_changes(tz: str, instant: datetime) -> None:
    zone = ZoneInfo(tz)
    before = (instant - timedelta(seconds=1)).astimezone(zone).utcoffset()
    assert before != instant.astimezone(zone).utcoffset()


def _numbers(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(str)


def _lists(low: int, high: int) -> st.SearchStrategy[str]:
    return st.lists(st.integers(low, high), min_size=2, max_size=4, unique=True).map(
        lambda values: ",".join(str(v) for v in sorted(values))
    )


def _ranges(low: int, high: int, *, steps: bool = True) -> st.SearchStrategy[str]:
    @st.composite
    def build(draw: st.DrawFn) -> str:
        a = draw(st.integers(low, high))
        b = draw(st.integers(a, high))
        step = draw(st.none() | st.integers(1, 5)) if steps else None
        return f"{a}-{b}" if step is None else f"{a}-{b}/{step}"

    return build()


def _clock_field(high: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just("*"),
        st.integers(1, min(high, 30)).map(lambda n: f"*/{n}"),
        _numbers(0, high),
        _lists(0, high),
        _ranges(0, high),
    )


@st.composite
def cron_cases(draw: st.DrawFn) -> tuple[str, str, datetime, int]:
    tz = draw(st.sampled_from(sorted(TRANSITIONS)))
    transition = draw(st.sampled_from(TRANSITIONS[tz]))
    minute = draw(_clock_field(59))
    hour = draw(_clock_field(23))
    # '*' is listed twice so that most cases fire within the reference's three days.
    day = draw(st.one_of(st.just("*"), st.just("*"), _numbers(1, 28), _ranges(1, 28)))
    month = draw(st.one_of(st.just("*"), st.just("*"), _lists(1, 12)))
    weekday = draw(st.one_of(st.just("*"), st.just("*"), _ranges(0, 6, steps=False)))
    # Most starts fall within hours of the transition, where the DST rules bite.
    near = draw(st.sampled_from([timedelta(days=2), timedelta(hours=3), timedelta(minutes=90)]))
    offset = draw(st.timedeltas(min_value=-near, max_value=near))
    count = draw(st.integers(1, 4))
    return f"{minute} {hour} {day} {month} {weekday}", tz, transition + offset, count


@settings(max_examples=200, deadline=None)
@given(cron_cases())
def test_next_after_matches_minute_by_minute_reference(
    case: tuple[str, str, datetime, int],
) -> None:
    expr, tz, start, count = case
    schedule = parse_cron(expr, tz)
    limit = timedelta(days=3)

    expected = reference_fires(
        schedule.fields, schedule.zone, schedule.fixed_time, start, count, limit=limit
    )
    got: list[datetime] = []
    current: datetime | None = start
    while len(got) < count and current is not None:
        current = schedule.next_after(current)
        if current is not None:
            got.append(current)

    assert got[: len(expected)] == expected
    if len(expected) < count and len(got) > len(expected):
        # The reference saw every minute up to its limit: nothing more fires before it.
        window_end = start.replace(second=0, microsecond=0) + timedelta(minutes=1) + limit
        assert got[len(expected)] >= window_end


# --- 4. Validation and cron features ------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "fragments"),
    [
        pytest.param("0 0 * *", ["5 fields", "got 4"], id="four_fields"),
        pytest.param("0 0 0 * * *", ["5 fields", "got 6", "seconds"], id="six_fields"),
        pytest.param("", ["empty"], id="empty"),
        pytest.param("H * * * *", ["'H'", "not supported"], id="hashed_minute"),
        pytest.param("H/15 * * * *", ["'H'", "not supported"], id="hashed_step"),
        pytest.param("0 R * * *", ["'R'", "not supported"], id="random_hour"),
        pytest.param("@reboot", ["@reboot", "not supported"], id="reboot"),
        pytest.param("@fortnightly", ["unknown cron macro", "@fortnightly"], id="unknown_macro"),
        pytest.param("0 0 30 2 *", ["never fires"], id="february_30"),
        pytest.param("0 0 31 4 *", ["never fires"], id="april_31"),
        pytest.param("61 * * * *", ["invalid cron", "61 * * * *"], id="minute_out_of_range"),
    ],
)
def test_parse_cron_rejects_bad_expression_with_clear_message(
    expr: str, fragments: list[str]
) -> None:
    with pytest.raises(InvalidSchedule) as info:
        parse_cron(expr, "UTC")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_parse_cron_rejects_more_than_100_characters() -> None:
    minutes = ",".join(str(m) for m in range(34))  # 91 characters
    at_limit = minutes + " 0 12 * *"
    too_long = minutes + " 0 1-2 * *"
    assert (len(at_limit), len(too_long)) == (100, 101)

    assert parse_cron(at_limit, "UTC").expression == at_limit
    with pytest.raises(InvalidSchedule, match="at most 100 characters"):
        parse_cron(too_long, "UTC")


@pytest.mark.parametrize("tz", ["Mars/Olympus", "Europe/Atlantis", "+01:00"])
def test_parse_cron_rejects_unknown_timezone(tz: str) -> None:
    with pytest.raises(InvalidSchedule, match="unknown timezone"):
        parse_cron("0 9 * * *", tz)


@pytest.mark.parametrize("tz", [None, "", 5])
def test_parse_cron_rejects_timezone_that_is_not_a_name(tz: object) -> None:
    with pytest.raises(InvalidSchedule, match="IANA name"):
        parse_cron("0 9 * * *", tz)


@pytest.mark.parametrize("cron", [None, 42, ["0", "9", "*", "*", "*"], b"0 9 * * *"])
def test_parse_cron_rejects_non_string(cron: object) -> None:
    with pytest.raises(InvalidSchedule, match="must be a string"):
        parse_cron(cron, "UTC")


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        pytest.param("0 0 * * THU", [utc(2026, 1, 1), utc(2026, 1, 8)], id="weekday_name"),
        pytest.param("0 0 * MAR *", [utc(2026, 3, 1), utc(2026, 3, 2)], id="month_name"),
        pytest.param("0 0 * * thu", [utc(2026, 1, 1), utc(2026, 1, 8)], id="lower_case_name"),
    ],
)
def test_names_containing_h_or_r_stay_valid(expr: str, expected: list[datetime]) -> None:
    # 2026-01-01 is a Thursday.
    assert preview_schedule(expr, "UTC", start=utc(2025, 12, 31, 12), count=2) == expected


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@hourly", [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2)]),
        ("@daily", [utc(2026, 1, 2), utc(2026, 1, 3)]),
        ("@midnight", [utc(2026, 1, 2), utc(2026, 1, 3)]),
        ("@weekly", [utc(2026, 1, 4), utc(2026, 1, 11)]),  # Sundays
        ("@monthly", [utc(2026, 2, 1), utc(2026, 3, 1)]),
        ("@yearly", [utc(2027, 1, 1), utc(2028, 1, 1)]),
        ("@annually", [utc(2027, 1, 1), utc(2028, 1, 1)]),
    ],
)
def test_every_macro_parses_and_fires_as_its_expression(
    macro: str, expected: list[datetime]
) -> None:
    assert parse_cron(macro, "UTC").fields == MACROS[macro]
    assert preview_schedule(macro, "UTC", start=utc(2026, 1, 1), count=2) == expected


def test_macros_from_daily_up_are_fixed_time_and_hourly_is_wildcard() -> None:
    kinds = {macro: parse_cron(macro, "UTC").fixed_time for macro in MACROS}
    assert kinds == {macro: macro != "@hourly" for macro in MACROS}


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        pytest.param(
            "0 12 L * *",
            utc(2026, 1, 1),
            [utc(2026, 1, 31, 12), utc(2026, 2, 28, 12)],
            id="last_day_of_month",
        ),
        pytest.param(
            "0 9 * * 1#2",
            utc(2026, 1, 1),
            [utc(2026, 1, 12, 9), utc(2026, 2, 9, 9)],
            id="second_monday",
        ),
        pytest.param(
            # 2026-02-15 is a Sunday: the nearest weekday is Monday the 16th.
            "0 9 15W * *",
            utc(2026, 2, 1),
            [utc(2026, 2, 16, 9), utc(2026, 3, 16, 9)],
            id="nearest_weekday",
        ),
        pytest.param(
            "0 0 * * L5",
            utc(2026, 1, 1),
            [utc(2026, 1, 30), utc(2026, 2, 27)],
            id="last_friday",
        ),
        pytest.param(
            "0 0 29 2 *",
            utc(2026, 1, 1),
            [utc(2028, 2, 29), utc(2032, 2, 29)],
            id="leap_day",
        ),
    ],
)
def test_cron_extensions_fire_on_right_days(
    expr: str, start: datetime, expected: list[datetime]
) -> None:
    assert preview_schedule(expr, "UTC", start=start, count=2) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        pytest.param("0 22-22 * * *", [utc(2026, 1, 1, 22), utc(2026, 1, 2, 22)], id="hour"),
        pytest.param("0 22-22/2 * * *", [utc(2026, 1, 1, 22), utc(2026, 1, 2, 22)], id="step"),
        pytest.param(
            "30 9 * * MON-MON", [utc(2026, 1, 5, 9, 30), utc(2026, 1, 12, 9, 30)], id="dow"
        ),
        pytest.param("0 0 5-5 * *", [utc(2026, 1, 5), utc(2026, 2, 5)], id="day"),
    ],
)
def test_equal_range_means_that_value_only(expr: str, expected: list[datetime]) -> None:
    assert preview_schedule(expr, "UTC", start=utc(2026, 1, 1), count=2) == expected


def test_fixed_time_follows_first_two_fields() -> None:
    assert parse_cron("0 9 * * *", "UTC").fixed_time
    assert parse_cron("0-59 2 * * *", "UTC").fixed_time
    assert not parse_cron("*/15 9 * * *", "UTC").fixed_time
    assert not parse_cron("0 */2 * * *", "UTC").fixed_time
    assert not parse_cron("0 * * * *", "UTC").fixed_time


def test_next_after_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_cron("0 9 * * *", "UTC").next_after(datetime(2026, 1, 1))


# --- 5. One-time instants: resolve_at, resolve_delay, localize --------------------------------

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "tz", "expected"),
    [
        pytest.param("2026-03-08T09:30:00+01:00", "UTC", utc(2026, 3, 8, 8, 30), id="offset"),
        pytest.param("2026-03-08T09:30:00Z", NEW_YORK, utc(2026, 3, 8, 9, 30), id="zulu"),
        pytest.param(" 2026-03-08T09:30:00Z ", BERLIN, utc(2026, 3, 8, 9, 30), id="padded"),
        pytest.param(
            datetime(2026, 3, 8, 9, 30, tzinfo=timezone(timedelta(hours=-3))),
            BERLIN,
            utc(2026, 3, 8, 12, 30),
            id="aware_datetime",
        ),
        pytest.param("2026-11-15T09:00:00", NEW_YORK, utc(2026, 11, 15, 14), id="naive_string_est"),
        pytest.param(
            datetime(2026, 7, 15, 9, 0), BERLIN, utc(2026, 7, 15, 7), id="naive_datetime_cest"
        ),
        pytest.param(
            datetime(2026, 7, 15, 9, 0), SYDNEY, utc(2026, 7, 14, 23), id="naive_datetime_aest"
        ),
    ],
)
def test_resolve_at_reads_offsets_and_naive_values_in_timezone(
    at: object, tz: str, expected: datetime
) -> None:
    got = resolve_at(at, tz, NOW)
    assert got == expected
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("at", "tz", "expected"),
    [
        pytest.param("2026-03-08T02:30:00", NEW_YORK, utc(2026, 3, 8, 7), id="new_york"),
        pytest.param(datetime(2026, 3, 29, 2, 30), BERLIN, utc(2026, 3, 29, 1), id="berlin"),
        pytest.param(datetime(2026, 10, 4, 2, 30), SYDNEY, utc(2026, 10, 3, 16), id="sydney"),
        pytest.param(
            datetime(2026, 10, 4, 2, 15), LORD_HOWE, utc(2026, 10, 3, 15, 30), id="lord_howe"
        ),
    ],
)
def test_resolve_at_naive_value_in_gap_maps_to_gap_end(
    at: object, tz: str, expected: datetime
) -> None:
    assert resolve_at(at, tz, NOW) == expected


@pytest.mark.parametrize(
    ("at", "tz", "expected"),
    [
        # 01:30 EDT, not 01:30 EST (06:30 UTC)
        pytest.param(datetime(2026, 11, 1, 1, 30), NEW_YORK, utc(2026, 11, 1, 5, 30), id="ny"),
        # 02:30 CEST, not 02:30 CET (01:30 UTC)
        pytest.param("2026-10-25T02:30:00", BERLIN, utc(2026, 10, 25, 0, 30), id="berlin"),
        # Apr 5 02:30 AEDT, not 02:30 AEST (16:30 UTC)
        pytest.param(datetime(2026, 4, 5, 2, 30), SYDNEY, utc(2026, 4, 4, 15, 30), id="sydney"),
        # Apr 5 01:45 +11, not 01:45 +10:30 (15:15 UTC)
        pytest.param(
            datetime(2026, 4, 5, 1, 45), LORD_HOWE, utc(2026, 4, 4, 14, 45), id="lord_howe"
        ),
    ],
)
def test_resolve_at_ambiguous_naive_value_maps_to_first_pass(
    at: object, tz: str, expected: datetime
) -> None:
    assert resolve_at(at, tz, NOW) == expected


@pytest.mark.parametrize(
    ("wall", "tz", "expected"),
    [
        (datetime(2026, 1, 15, 9, 0), BERLIN, utc(2026, 1, 15, 8)),  # 09:00 CET
        (datetime(2026, 3, 8, 2, 0), NEW_YORK, utc(2026, 3, 8, 7)),  # gap -> 03:00 EDT
        (datetime(2026, 3, 8, 2, 59), NEW_YORK, utc(2026, 3, 8, 7)),  # gap -> 03:00 EDT
        (datetime(2026, 3, 8, 3, 0), NEW_YORK, utc(2026, 3, 8, 7)),  # 03:00 EDT
        (datetime(2026, 11, 1, 1, 0), NEW_YORK, utc(2026, 11, 1, 5)),  # 01:00 EDT
        (datetime(2026, 11, 1, 2, 0), NEW_YORK, utc(2026, 11, 1, 7)),  # 02:00 EST
        (datetime(2026, 10, 25, 2, 59), BERLIN, utc(2026, 10, 25, 0, 59)),  # 02:59 CEST
    ],
)
def test_localize_applies_fixed_time_rules(wall: datetime, tz: str, expected: datetime) -> None:
    assert localize(wall, ZoneInfo(tz)) == expected


@pytest.mark.parametrize(
    "at",
    [
        pytest.param(datetime(2026, 2, 28, 12, tzinfo=UTC), id="yesterday"),
        pytest.param("2026-03-01T12:00:00.122Z", id="one_ms_ago"),
        pytest.param(datetime(2026, 3, 1, 7, 0), id="naive_this_morning_in_new_york"),
    ],
)
def test_resolve_at_rejects_past_time(at: object) -> None:
    with pytest.raises(InvalidSchedule, match="in the past"):
        resolve_at(at, NEW_YORK, NOW)


def test_resolve_at_accepts_now_within_the_same_millisecond() -> None:
    assert resolve_at(NOW, "UTC", NOW) == NOW.replace(microsecond=123000)


@pytest.mark.parametrize(
    ("at", "fragment"),
    [
        ("tomorrow", "ISO-8601"),
        ("2026-13-01T00:00:00Z", "ISO-8601"),
        (1_800_000_000, "datetime or an ISO-8601 string"),
        (None, "datetime or an ISO-8601 string"),
    ],
)
def test_resolve_at_rejects_unparseable_values(at: object, fragment: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        resolve_at(at, "UTC", NOW)
    assert fragment in str(info.value)


def test_resolve_at_rejects_unknown_timezone_even_with_offset() -> None:
    with pytest.raises(InvalidSchedule, match="unknown timezone"):
        resolve_at("2026-04-01T00:00:00Z", "Nowhere/City", NOW)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (datetime(2026, 3, 5, 9, 0, 0, 987654, tzinfo=UTC), datetime(2026, 3, 5, 9, 0, 0, 987000)),
        ("2026-03-05T09:00:00.000999Z", datetime(2026, 3, 5, 9, 0, 0, 0)),
        (datetime(2026, 3, 5, 10, 0, 0, 1999), datetime(2026, 3, 5, 9, 0, 0, 1000)),  # CET
    ],
)
def test_resolve_at_truncates_to_milliseconds(at: object, expected: datetime) -> None:
    assert resolve_at(at, BERLIN, NOW) == expected.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        pytest.param(0, datetime(2026, 3, 1, 12, 0, 0, 123000), id="zero"),
        pytest.param(90, datetime(2026, 3, 1, 12, 1, 30, 123000), id="int"),
        pytest.param(1.5, datetime(2026, 3, 1, 12, 0, 1, 623000), id="float"),
        pytest.param(0.0015, datetime(2026, 3, 1, 12, 0, 0, 124000), id="sub_millisecond"),
        pytest.param(
            timedelta(minutes=5, microseconds=999),
            datetime(2026, 3, 1, 12, 5, 0, 124000),
            id="timedelta",
        ),
        pytest.param(
            timedelta(days=2), datetime(2026, 3, 3, 12, 0, 0, 123000), id="timedelta_days"
        ),
    ],
)
def test_resolve_delay_adds_to_now_truncated_to_milliseconds(
    delay: object, expected: datetime
) -> None:
    got = resolve_delay(delay, NOW)
    assert got == expected.replace(tzinfo=UTC)
    assert got.microsecond % 1000 == 0


@pytest.mark.parametrize(
    ("delay", "fragment"),
    [
        pytest.param(-1, ">= 0", id="negative_int"),
        pytest.param(-0.001, ">= 0", id="negative_float"),
        pytest.param(timedelta(seconds=-1), ">= 0", id="negative_timedelta"),
        pytest.param(math.nan, "finite", id="nan"),
        pytest.param(math.inf, "finite", id="inf"),
        pytest.param(True, "got bool", id="bool"),
        pytest.param("10", "got str", id="string"),
        pytest.param(None, "got NoneType", id="none"),
        pytest.param(10**12, "too far", id="overflow"),
    ],
)
def test_resolve_delay_rejects_bad_values(delay: object, fragment: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        resolve_delay(delay, NOW)
    assert fragment in str(info.value)


# --- 6. preview_schedule ------------------------------------------------------------------


def test_preview_count_zero_is_empty() -> None:
    assert preview_schedule("* * * * *", "UTC", start=utc(2026, 1, 1), count=0) == []


@pytest.mark.parametrize("count", [-1, 10_001, True, 1.5, "3", None])
def test_preview_rejects_bad_count(count: object) -> None:
    with pytest.raises(InvalidSchedule, match="count must be an integer"):
        preview_schedule("0 9 * * *", "UTC", start=utc(2026, 1, 1), count=count)  # type: ignore[arg-type]


def test_preview_rejects_start_that_is_not_a_datetime() -> None:
    with pytest.raises(InvalidSchedule, match="start must be a datetime"):
        preview_schedule("0 9 * * *", "UTC", start="2026-01-01", count=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        pytest.param(datetime(2026, 1, 1, 8, 59), utc(2026, 1, 1, 14), id="before"),  # 09:00 EST
        pytest.param(datetime(2026, 1, 1, 9, 0), utc(2026, 1, 2, 14), id="at_is_excluded"),
    ],
)
def test_preview_reads_naive_start_in_timezone(start: datetime, expected: datetime) -> None:
    assert preview_schedule("0 9 * * *", NEW_YORK, start=start, count=1) == [expected]


def test_preview_reads_ambiguous_naive_start_as_first_pass() -> None:
    # Naive 01:30 on 2026-11-01 in New York is 01:30 EDT (05:30 UTC).
    got = preview_schedule("*/30 * * * *", NEW_YORK, start=datetime(2026, 11, 1, 1, 30), count=2)
    assert got == [utc(2026, 11, 1, 6), utc(2026, 11, 1, 6, 30)]  # 01:00 EST, 01:30 EST


@pytest.mark.parametrize(
    ("expr", "tz", "start"),
    [
        ("*/7 * * * *", NEW_YORK, datetime(2026, 11, 1, 1, 3, 30, tzinfo=ZoneInfo(NEW_YORK))),
        ("30 2 * * *", BERLIN, datetime(2026, 3, 28, 23, 59, 59, 999999, tzinfo=UTC)),
        ("*/15 * * * *", LORD_HOWE, datetime(2026, 4, 5, 1, 40, tzinfo=ZoneInfo(LORD_HOWE))),
        ("0 9 * * 1-5", SYDNEY, datetime(2026, 4, 3, 9, 0, tzinfo=timezone(timedelta(hours=5)))),
    ],
)
def test_preview_results_are_utc_aware_increasing_and_after_start(
    expr: str, tz: str, start: datetime
) -> None:
    got = preview_schedule(expr, tz, start=start, count=20)

    assert len(got) == 20
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in got)
    assert got[0] > start
    assert all(a < b for a, b in pairwise(got))


def test_preview_defaults_to_now() -> None:
    before = datetime.now(UTC)
    got = preview_schedule("* * * * *", "UTC", count=2)
    after = datetime.now(UTC)

    # "now" is cut to milliseconds, so the first minute boundary is after before - 1 ms.
    assert before - timedelta(milliseconds=1) < got[0] <= after + timedelta(minutes=1)
    assert got[1] - got[0] == timedelta(minutes=1)


# --- Bounds of a cron prompt (start_at, end_at) ------------------------------------------------


def test_first_cron_run_includes_occurrence_exactly_at_start_at() -> None:
    schedule = parse_cron("0 9 * * *", "UTC")
    assert first_cron_run(schedule, NOW, start_at=utc(2026, 3, 5, 9)) == utc(2026, 3, 5, 9)


def test_first_cron_run_ignores_start_at_in_the_past() -> None:
    schedule = parse_cron("0 9 * * *", "UTC")
    assert first_cron_run(schedule, NOW, start_at=utc(2026, 2, 1)) == utc(2026, 3, 2, 9)


def test_cron_run_at_end_at_is_included_and_after_it_is_none() -> None:
    schedule = parse_cron("0 9 * * *", "UTC")
    assert next_cron_run(schedule, NOW, end_at=utc(2026, 3, 2, 9)) == utc(2026, 3, 2, 9)
    assert next_cron_run(schedule, NOW, end_at=utc(2026, 3, 2, 8, 59)) is None
    assert first_cron_run(schedule, NOW, end_at=utc(2026, 3, 2, 8, 59)) is None


# --- the plain walk: daily and weekly shapes without croniter ------------------------------


def _part(draw: st.DrawFn, low: int, high: int) -> str:
    kind = draw(st.sampled_from(["value", "range", "step", "star-step"]))
    if kind == "star-step":
        return f"*/{draw(st.integers(1, high - low + 1))}"
    first = draw(st.integers(low, high))
    if kind == "value":
        return str(first)
    last = draw(st.integers(first, high))
    return f"{first}-{last}" + (f"/{draw(st.integers(1, 10))}" if kind == "step" else "")


@st.composite
def plain_expressions(draw: st.DrawFn) -> str:
    def field(low: int, high: int) -> str:
        if draw(st.booleans()) and high < 59:
            return "*"
        return ",".join(_part(draw, low, high) for _ in range(draw(st.integers(1, 3))))

    weekday = "*" if draw(st.booleans()) else field(0, 7)
    return f"{field(0, 59)} {field(0, 23)} * * {weekday}"


@settings(max_examples=300)
@given(
    plain_expressions(),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31)),
)
def test_the_plain_walk_gives_croniters_wall_times(expression: str, start: datetime) -> None:
    from croniter import croniter

    from scheduled_prompts.schedules import _plain_fields, _plain_walls

    fields = parse_cron(expression).fields
    plain = _plain_fields(fields)
    assert plain is not None, fields
    walk = croniter(fields, start, ret_type=datetime)
    expected = [walk.get_next(datetime) for _ in range(12)]
    got = list(itertools.islice(_plain_walls(start, *plain), 12))
    assert got == expected


@pytest.mark.parametrize(
    "expression",
    ["0 9 1 * *", "0 9 * 2 *", "0 9 * * MON", "0 9 * * 5L", "5/15 * * * *", "0 9 L * *",
     "0 9 * * 1#2", "50-10 * * * *"],
)  # fmt: skip
def test_other_shapes_are_left_to_croniter(expression: str) -> None:
    from scheduled_prompts.schedules import _plain_fields

    assert _plain_fields(parse_cron(expression).fields) is None


def test_a_plain_walk_ends_with_the_calendar() -> None:
    schedule = parse_cron("30 23 * * 1")
    assert schedule.plain is not None
    last = schedule.next_after(datetime(9999, 12, 21, tzinfo=UTC))
    assert last == datetime(9999, 12, 27, 23, 30, tzinfo=UTC)
    assert schedule.next_after(datetime(9999, 12, 28, tzinfo=UTC)) is None
