"""The prompts a scenario schedules, and the occurrences it therefore expects.

One-time prompts are spread evenly over the window; a few cron prompts (``* * * * *``)
run alongside. Expected occurrences:

- every one-time prompt once, with key ``{id}:{schedule_time ms}``;
- for a cron prompt, every minute from its first ``next_run_at`` up to the window's end.
  A cron occurrence that was overdue by more than a minute when it was delivered is
  coalesced into the latest missed minute (the engine's documented behaviour), so a cron
  minute counts as delivered when it, or a later minute delivered in its place, has a
  completed runner call (see ``measure.cron_coverage``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import scheduled_prompts as sp
from scheduled_prompts._time import from_ms, to_ms, utcnow

CRON = "* * * * *"
MINUTE_MS = 60_000


@dataclass(frozen=True)
class Size:
    once: int
    cron: int
    lead: float  # seconds from scheduling to the first one-time occurrence
    spread: float  # seconds over which the one-time occurrences are spread
    settle: float  # seconds after the window to wait for stragglers

    @property
    def prompts(self) -> int:
        return self.once + self.cron


FULL = Size(once=295, cron=5, lead=5.0, spread=60.0, settle=120.0)
QUICK = Size(once=57, cron=3, lead=3.0, spread=15.0, settle=90.0)


@dataclass
class Workload:
    start: datetime  # first one-time occurrence
    end: datetime  # last one-time occurrence: the window's end
    once: dict[str, datetime] = field(default_factory=dict)  # key -> occurrence
    cron: dict[str, list[int]] = field(default_factory=dict)  # prompt id -> minutes (ms)
    prompt_ids: list[str] = field(default_factory=list)

    @property
    def fault_at(self) -> datetime:
        """The middle of the window, or a cron minute near it (just after the minute, so
        the fault meets cron deliveries in flight)."""
        span = self.end - self.start
        lo, hi = to_ms(self.start + span * 0.25), to_ms(self.end - span * 0.25)
        minute = -(-lo // MINUTE_MS) * MINUTE_MS
        if self.cron and minute <= hi:
            return from_ms(minute) + timedelta(seconds=0.1)
        return self.start + span / 2

    def expected(self) -> int:
        return len(self.once) + sum(len(m) for m in self.cron.values())

    def add_once(self, prompts: list[sp.ScheduledPrompt]) -> None:
        for p in prompts:
            assert p.schedule_time is not None
            self.once[f"{p.id}:{to_ms(p.schedule_time)}"] = p.schedule_time
            self.prompt_ids.append(p.id)


def once_specs(n: int, first: datetime, spread: float, tag: str) -> list[dict[str, object]]:
    step = spread / max(1, n - 1)
    return [
        {
            "prompt": f"{tag} {i}",
            "user_id": f"user-{i % 10}",
            "platform": "faults",
            "at": first + timedelta(seconds=step * i),
        }
        for i in range(n)
    ]


def create(size: Size) -> Workload:
    """Schedule the scenario's prompts through the public API (one ``schedule_many``)."""
    now = utcnow()
    first = now + timedelta(seconds=size.lead)
    end = first + timedelta(seconds=size.spread)
    once = sp.schedule_many(once_specs(size.once, first, size.spread, "once"))
    cron = sp.schedule_many(
        [
            {"prompt": f"cron {i}", "user_id": f"cron-{i}", "platform": "faults", "cron": CRON}
            for i in range(size.cron)
        ]
    )
    work = Workload(start=first, end=end)
    work.add_once(once)
    for p in cron:
        assert p.next_run_at is not None
        first_ms, end_ms = to_ms(p.next_run_at), to_ms(end)
        work.cron[p.id] = list(range(first_ms, end_ms + 1, MINUTE_MS))
        work.prompt_ids.append(p.id)
    return work
