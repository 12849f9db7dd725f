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

A store of S shards (``SCHEDULED_PROMPTS_SHARDS``) enforces the limits in each shard, on
that shard's keys (a script touches one slot): each shard admits an equal share — 1/S of
the rate, a burst of ceil(B/S), floor(C/S) runner calls at once — so the platform as a
whole never goes above its rate or its cap over a sustained period (see docs/decisions.md,
Redis Cluster).
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
    #: The store's shards: each enforces its equal share of every limit.
    shards: int = 1

    def __bool__(self) -> bool:
        return bool(self.rates or self.concurrency)

    @functools.cached_property
    def script_arg(self) -> str:
        """What CLAIM takes: JSON ``{platform: [interval ms, burst tolerance ms,
        concurrency]}`` (0 where that limit is not set) of one shard's share, '' when no
        platform has one."""
        if not self:
            return ""
        out: dict[str, list[float]] = {}
        for platform in sorted(set(self.rates) | set(self.concurrency)):
            rate = self.rates.get(platform)
            interval = rate.interval_ms * self.shards if rate else 0.0
            burst = -(-rate.burst // self.shards) if rate else 1
            tolerance = (burst - 1) * interval
            out[platform] = [interval, tolerance, self.concurrency.get(platform, 0) // self.shards]
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
def limits(rates: str | None, concurrency: str | None, shards: int = 1) -> Limits:
    """The parsed limits of two setting values, for a store of ``shards`` shards (parsed
    once per process). A concurrency cap below the shard count cannot be shared out:
    ValueError says so."""
    caps = parse_concurrency(concurrency)
    small = {platform: cap for platform, cap in caps.items() if cap < shards}
    if small:
        named = ", ".join(f"{platform}={cap}" for platform, cap in small.items())
        raise ValueError(
            f"{named}: a store of {shards} shards enforces a concurrency cap in each shard, "
            f"floor(N/{shards}) calls at once there; give each platform at least {shards}, "
            "or fewer shards (SCHEDULED_PROMPTS_SHARDS)"
        )
    return Limits(parse_rates(rates), caps, shards)
