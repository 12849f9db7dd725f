"""The fault suite's bookkeeping, on hand-written recordings (no processes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bench.faults.measure import Fault, analyse, cron_coverage, pair_calls
from bench.faults.runners import fails_first_attempt
from bench.faults.workload import Workload

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
E0 = T0.timestamp()


def rec(event: str, key: str, at: float, pid: int = 1, attempt: int = 1) -> dict[str, Any]:
    return {"event": event, "key": key, "at": E0 + at, "pid": pid, "attempt": attempt}


def work(*keys: str) -> Workload:
    w = Workload(start=T0, end=T0 + timedelta(seconds=10))
    for i, key in enumerate(keys):
        w.once[key] = T0 + timedelta(seconds=i)
    return w


def test_calls_pair_by_process_and_a_call_without_end_was_cut_off() -> None:
    calls = pair_calls(
        [
            rec("start", "a:1", 0.0, pid=1),
            rec("start", "b:1", 0.1, pid=2),
            rec("end", "b:1", 0.2, pid=2),
            rec("start", "c:1", 0.3, pid=2),
            rec("fail", "c:1", 0.4, pid=2),
        ]
    )
    assert [(c.key, c.completed, c.failed, c.end is None) for c in calls] == [
        ("a:1", False, False, True),
        ("b:1", True, False, False),
        ("c:1", False, True, False),
    ]


def test_a_repeat_after_a_kill_of_its_worker_is_documented_and_any_other_is_not() -> None:
    records = [
        rec("start", "a:1", 0.0, pid=7),  # cut off by the kill at 0.5
        rec("start", "b:1", -1.1, pid=8),
        rec("end", "b:1", -1.0, pid=8),  # returned well before the kill: committed
        rec("start", "a:1", 6.0, pid=9),
        rec("end", "a:1", 6.1, pid=9),
        rec("start", "b:1", 6.0, pid=10),
        rec("end", "b:1", 6.1, pid=10),
    ]
    kill = Fault("worker kill -9", E0 + 0.5, E0 + 0.5, frozenset({7, 8}))
    r = analyse(work("a:1", "b:1"), records, [kill])
    assert r["missing"] == 0 and r["duplicated"] == 1 and r["started_twice"] == 2
    assert [d["key"] for d in r["documented_repeats"]] == ["a:1"]
    assert [d["key"] for d in r["unexplained_repeats"]] == ["b:1"]


def test_a_call_of_a_process_that_was_not_killed_is_not_excused() -> None:
    kill = Fault("worker kill -9", E0 + 0.5, E0 + 0.5, frozenset({7}))
    r = analyse(
        work("a:1"),
        [rec("start", "a:1", 0.0, pid=8), rec("start", "a:1", 6.0, 9), rec("end", "a:1", 6.1, 9)],
        [kill],
    )
    assert [d["key"] for d in r["unexplained_repeats"]] == ["a:1"]


def test_a_retry_after_the_runner_raised_is_not_a_repeat() -> None:
    records = [rec("start", "a:1", 0.0), rec("fail", "a:1", 0.1), rec("start", "a:1", 2.1, 1, 2)]
    r = analyse(work("a:1"), [*records, rec("end", "a:1", 2.2)], [])
    assert r["started_twice"] == 0 and r["runner_failures"] == 1 and r["delivered"] == 1
    assert r["max_lateness_s"] == 2.1


def test_an_undelivered_occurrence_is_missing() -> None:
    r = analyse(work("a:1", "b:1"), [rec("start", "a:1", 0.0), rec("end", "a:1", 0.1)], [])
    assert r["missing"] == 1 and r["missing_keys"] == ["b:1"]


def test_a_cron_minute_counts_when_it_or_a_later_minute_standing_for_it_was_delivered() -> None:
    minutes = [0, 60_000, 120_000, 180_000]
    covered, coalesced, late = cron_coverage(minutes, {0: 0.1, 120_000: 125.0})
    assert (covered, coalesced) == (3, 1)
    assert late == [0.1, 65.0, 5.0]


def test_a_minute_after_the_window_stands_for_the_minutes_it_coalesced() -> None:
    # The window ends at 60 s. An outage made minute 60 s coalesce into minute 120 s
    # (delivered at 127 s, 67 s late for it): covered. Minute 0 was delivered on time.
    minutes = [0, 60_000]
    assert cron_coverage(minutes, {0: 0.1, 120_000: 127.0}, end_ms=60_000)[:2] == (2, 1)
    # Without a delivery after the window, minute 60 s is missing.
    assert cron_coverage(minutes, {0: 0.1}, end_ms=60_000)[:2] == (1, 0)


def test_about_a_fifth_of_keys_fail_their_first_attempt() -> None:
    failing = sum(fails_first_attempt(f"p{i}:1795622400000", 20) for i in range(5000))
    assert 900 < failing < 1100
