"""What every benchmark shares: a private redis-server, the median and one quantile,
``sleep_until``, a Markdown table, a JSON file with the machine.
Method and figures: docs/performance.md, "Methods"."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from support.redis_server import RedisServer, redis_server_binary

RESULTS = Path(__file__).resolve().parent / "results"


@contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    """A redis-server of our own on a free port (never a server someone else runs)."""
    server = RedisServer(*extra).start()
    try:
        yield server
    finally:
        server.cleanup()


def client_for(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method: the smallest value with at
    least a fraction ``q`` of the values at or below it (p99 of 100 values is the 99th
    smallest, of 10 values the largest). 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def sleep_until(at: float) -> None:
    """Sleep until the epoch time ``at`` (at once if it has passed)."""
    while (left := at - time.time()) > 0:
        time.sleep(min(left, 0.5))


def timed(fn: Callable[[], Any], *, runs: int = 5, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn``, ``runs`` times after ``warmup`` unmeasured calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def machine(client: redis.Redis | None = None) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
    }
    if client is not None:
        info["redis"] = client.info("server")["redis_version"]
    else:
        out = subprocess.run(
            [redis_server_binary(), "--version"], capture_output=True, text=True, check=False
        )
        info["redis"] = out.stdout.strip()
    try:
        import hiredis  # noqa: F401, PLC0415

        info["hiredis"] = True
    except ImportError:
        info["hiredis"] = False
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (right-aligned numbers) under a ``###`` title."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [f"### {title}", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (with the machine) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def progress(text: str) -> None:
    """A progress line on stderr (tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
