"""What a scenario delivered, read back from the recording runner's lines.

A runner call is a ``start`` line and the next line of the same process: ``end`` (the
runner returned), ``fail`` (the flaky runner raised) or nothing (the process died, or a
later ``start`` of a reused pid). A prefork pool process runs one task at a time, so
pairing by pid in file order is exact.

Counts:

- *delivered*: expected occurrences with a completed call (cron: see ``cron_coverage``);
- *duplicated*: keys with more than one completed call; *started twice*: keys with more
  than one call that was not a runner failure (a retry after the runner raised is the
  retry policy working, not a duplicate);
- a repeat is *documented* when the call before it was cut off by a fault: it started
  before the fault ended and had not returned more than ``COMMIT_SLACK`` before the
  fault began (so its commit cannot have landed); for a worker kill it must also have
  run in one of the killed processes. Anything else is *unexplained*.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..common import quantile
from .workload import Workload

#: Longest a commit takes after the runner returns, for "its commit cannot have landed".
COMMIT_SLACK = 0.5


@dataclass
class Call:
    key: str
    pid: int
    start: float
    attempt: int
    end: float | None = None
    failed: bool = False

    @property
    def completed(self) -> bool:
        return self.end is not None and not self.failed


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # epoch seconds: when the fault began
    until: float  # when it ended (== at for an instant kill)
    pids: frozenset[int] = frozenset()  # the processes killed, for a worker kill

    def explains(self, call: Call) -> bool:
        if self.pids and call.pid not in self.pids:
            return False
        return call.start <= self.until and (call.end is None or call.end >= self.at - COMMIT_SLACK)


def pair_calls(records: list[dict[str, Any]]) -> list[Call]:
    calls: list[Call] = []
    running: dict[int, Call] = {}
    for r in records:
        pid = int(r["pid"])
        if r["event"] == "start":
            call = Call(r["key"], pid, float(r["at"]), int(r["attempt"]))
            calls.append(call)
            running[pid] = call
            continue
        ended = running.pop(pid, None)
        if ended is None or ended.key != r["key"]:
            raise ValueError(f"recording out of order at {r}")
        ended.end = float(r["at"])
        ended.failed = r["event"] == "fail"
    return calls


def _epoch(dt: datetime) -> float:
    return dt.timestamp()


def cron_coverage(
    minutes: list[int], done: dict[int, float], end_ms: int | None = None
) -> tuple[int, int, list[float]]:
    """(covered, coalesced, lateness per covered minute) for one cron prompt.

    ``done`` maps each delivered minute (ms) to its first completed call's start. A
    delivered minute ``d`` stands for itself and every expected minute after the previous
    delivered one: the occurrences it coalesced. A minute after the window's end
    (``end_ms``) stands for expected minutes over a minute late when it was delivered:
    the engine coalesced them (an outage that outlasted the window).
    """
    delivered = sorted(done)
    covered = coalesced = 0
    late: list[float] = []

    def stands_for(d: int, m: int) -> bool:
        if d < m:
            return False
        return end_ms is None or d <= end_ms or done[d] - m / 1000 > 60

    for m in minutes:
        by = next((d for d in delivered if stands_for(d, m)), None)
        if by is None:
            continue
        covered += 1
        coalesced += by != m
        late.append(done[by] - m / 1000)
    return covered, coalesced, late


def analyse(work: Workload, records: list[dict[str, Any]], faults: list[Fault]) -> dict[str, Any]:
    calls = pair_calls(records)
    by_key: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_key[c.key].append(c)

    def first_done(key: str) -> float | None:
        return next((c.start for c in by_key.get(key, []) if c.completed), None)

    lateness: list[float] = []
    missing = []
    for key, occurrence in work.once.items():
        started = first_done(key)
        if started is None:
            missing.append(key)
        else:
            lateness.append(started - _epoch(occurrence))
    cron_expected = cron_covered = cron_coalesced = 0
    cron_missing: list[str] = []
    end_ms = int(_epoch(work.end) * 1000)
    for pid, minutes in work.cron.items():
        done = {}
        for key in by_key:
            head, _, ms = key.rpartition(":")
            if head == pid and (t := first_done(key)) is not None:
                done[int(ms)] = t
        covered, coalesced, late = cron_coverage(minutes, done, end_ms)
        cron_expected += len(minutes)
        cron_covered += covered
        cron_coalesced += coalesced
        lateness += late
        cron_missing += [f"{pid}:{m}" for m in minutes[covered:]]

    duplicated = sorted(k for k, cs in by_key.items() if sum(c.completed for c in cs) > 1)
    started_twice = sorted(k for k, cs in by_key.items() if sum(not c.failed for c in cs) > 1)
    documented: list[dict[str, Any]] = []
    unexplained: list[dict[str, Any]] = []
    for key in started_twice:
        tried = [c for c in by_key[key] if not c.failed]
        for before in tried[:-1]:
            cause = next((f.kind for f in faults if f.explains(before)), None)
            row = {
                "key": key,
                "pid": before.pid,
                "started": round(before.start, 3),
                "returned": None if before.end is None else round(before.end, 3),
                "cause": cause,
            }
            (documented if cause else unexplained).append(row)
    known = set(work.once) | {f"{p}:{m}" for p, ms in work.cron.items() for m in ms}
    cron_ids = set(work.cron)
    unexpected = sorted(
        k for k in by_key if k not in known and k.rpartition(":")[0] not in cron_ids
    )
    lateness.sort()
    expected = len(work.once) + cron_expected
    return {
        "expected": expected,
        "delivered": len(work.once) - len(missing) + cron_covered,
        "missing": len(missing) + len(cron_missing),
        "missing_keys": (missing + cron_missing)[:50],
        "duplicated": len(duplicated),
        "started_twice": len(started_twice),
        "documented_repeats": documented,
        "unexplained_repeats": unexplained,
        "unexpected_keys": unexpected[:50],
        "cron": {
            "expected_minutes": cron_expected,
            "covered": cron_covered,
            "coalesced": cron_coalesced,
        },
        "calls": len(calls),
        "runner_failures": sum(c.failed for c in calls),
        "interrupted_calls": sum(c.end is None for c in calls),
        "max_lateness_s": round(lateness[-1], 3) if lateness else None,
        "p50_lateness_s": round(quantile(lateness, 0.5), 3) if lateness else None,
        "p99_lateness_s": round(quantile(lateness, 0.99), 3) if lateness else None,
    }
