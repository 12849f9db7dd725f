"""Per-platform delivery limits: a rate (token bucket) and a concurrency cap, global across
every worker and machine.

Both are enforced by the CLAIM script (``store.py``), on Redis's clock, in the step that
takes an occurrence's lease: an occurrence over a limit is not claimed; it gets a time to
come back and waits — never dropped, never counted as a failure. The rate is a generic
cell rate algorithm (a token bucket kept as one timestamp): each claim on a limited
platform reserves the next free slot, so occurrences over the rate come back in the
order they were claimed, spaced by ``1/rate``; ``burst`` slots may be taken at once when
the platform was idle. The concurrency cap counts the platform's prompts whose lease is
held (claimed, not yet committed or released); a worker killed mid-call frees its slot
when its lease expires.

Settings: ``SCHEDULED_PROMPTS_RATE_LIMITS="discord=50/s,telegram=20/m:5"`` (N per
second, minute or hour; ``:B`` allows a burst of B, default 1: evenly spaced) and
``SCHEDULED_PROMPTS_CONCURRENCY_LIMITS="discord=4"``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

RATE_FORM = "platform=N/s, N/m or N/h, optionally :BURST (e.g. discord=50/s,telegram=20/m:5)"
CONCURRENCY_FORM = "platform=N, N a whole number >= 1 (e.g. discord=4,telegram=2)"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^(\d+)/([smh])(?::(\d+))?$")


@dataclass(frozen=True)
class Rate:
    """``count`` deliveries per ``per_seconds``, up to ``burst`` of them at once."""

    count: int
    per_seconds: float
    burst: int = 1

    @property
    def interval_ms(self) -> float:
        """Time between two slots."""
        return self.per_seconds * 1000 / self.count

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.per_seconds]
        return f"{self.count}/{unit}" + (f":{self.burst}" if self.burst != 1 else "")


@dataclass(frozen=True)
class Limits:
    """The limits of every platform that has one."""

    rates: dict[str, Rate]
    concurrency: dict[str, int]

    def __bool__(self) -> bool:
        return bool(self.rates or self.concurrency)

    @functools.cached_property
    def script_arg(self) -> str:
        """What CLAIM takes: JSON ``{platform: [interval ms, burst tolerance ms,
        concurrency]}`` (0 where that limit is not set), '' when no platform has one."""
        if not self:
            return ""
        out: dict[str, list[float]] = {}
        for platform in sorted(set(self.rates) | set(self.concurrency)):
            rate = self.rates.get(platform)
            interval = rate.interval_ms if rate else 0.0
            tolerance = (rate.burst - 1) * interval if rate else 0.0
            out[platform] = [interval, tolerance, self.concurrency.get(platform, 0)]
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def _entries(text: str, form: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        platform, sep, value = part.partition("=")
        platform, value = platform.strip(), value.strip()
        if not sep or not platform or not value:
            raise ValueError(f"{part!r} is not {form}")
        if platform in seen:
            raise ValueError(f"platform {platform!r} is given twice in {text!r}")
        seen.add(platform)
        out.append((platform, value))
    return out


def parse_rates(text: str | None) -> dict[str, Rate]:
    """``"discord=50/s,telegram=20/m:5"`` as {platform: Rate}; a clear error otherwise."""
    rates: dict[str, Rate] = {}
    for platform, value in _entries(text or "", RATE_FORM):
        match = _RATE.match(value.replace(" ", ""))
        if match is None:
            raise ValueError(f"{platform}={value!r} is not {RATE_FORM}")
        count, unit, burst = int(match[1]), match[2], int(match[3] or 1)
        if count < 1 or burst < 1:
            raise ValueError(f"{platform}={value!r}: the rate and the burst must be >= 1")
        rates[platform] = Rate(count, _UNITS[unit], burst)
    return rates


def parse_concurrency(text: str | None) -> dict[str, int]:
    """``"discord=4"`` as {platform: 4}; a clear error otherwise."""
    caps: dict[str, int] = {}
    for platform, value in _entries(text or "", CONCURRENCY_FORM):
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{platform}={value!r} is not {CONCURRENCY_FORM}")
        caps[platform] = int(value)
    return caps


@functools.lru_cache(maxsize=16)
def limits(rates: str | None, concurrency: str | None) -> Limits:
    """The parsed limits of two setting values (parsed once per process)."""
    return Limits(parse_rates(rates), parse_concurrency(concurrency))
