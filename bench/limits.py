"""Platform limits: ``python -m bench.limits [--quick]``.
What a delivery on an unlimited platform pays when limits are configured for others
(in-process, interleaved), and the burst of N due at the same second with and without a
limit (a real worker). Method and figures: docs/performance.md, "Platform limits"."""

from __future__ import annotations

import argparse
import bisect
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

import scheduled_prompts
from bench.burst import (
    BurstRun,
    RecordTail,
    cluster,
    default_lead,
    pick_t,
    wait_deadline,
    wait_for_count,
)
from bench.common import machine, median, progress, redis_server, sleep_until, table, write_results
from scheduled_prompts import engine
from scheduled_prompts._time import to_ms
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.occurrences import Delivery
from support.recording_runner import MemoryRunner

FULL = {"n": 10_000, "batch": 200, "rounds": 5, "burst": 10_000, "limit": 2_000, "paced": 200}
QUICK = {"n": 1_000, "batch": 200, "rounds": 1, "burst": 1_000, "limit": 200, "paced": 50}
#: Limits on other platforms than the one measured.
ELSEWHERE = {
    "rate_limits": "discord=50/s,telegram=20/m:5,slack=1/s",
    "concurrency_limits": "discord=4,web=2",
}


# --- part 1: the cost on an unlimited platform --------------------------------------------


def _deliver(n: int, batch: int, settings: dict[str, Any], url: str) -> float:
    """Seconds per delivery: ``n`` due occurrences on "free", delivered in-process by
    ``engine.deliver_many`` ``batch`` at a time with a runner that returns at once."""
    scheduled_prompts.configure(redis_url=url, horizon_seconds=0, **settings)
    get_redis().flushall()
    at = datetime.now(UTC) + timedelta(hours=1)
    made = scheduled_prompts.schedule_many(
        [{"prompt": f"p{i}", "user_id": f"u{i % 100}", "platform": "free", "at": at}
         for i in range(n)]
    )  # fmt: skip
    deliveries = [Delivery(p.id, to_ms(at)) for p in made]
    client, ctx = get_redis(), scope()
    started = time.perf_counter()
    for i in range(0, n, batch):
        results = engine.deliver_many(client, ctx, deliveries[i : i + batch], now=at)
        assert all(r.outcome is engine.Outcome.DELIVERED for r in results)
    return (time.perf_counter() - started) / n


def cost(sizes: dict[str, int]) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {"no limits": [], "limits on other platforms": []}
    scheduled_prompts.set_bot_runner(MemoryRunner())
    with redis_server() as server:
        try:
            _deliver(400, sizes["batch"], ELSEWHERE, server.url)  # warm-up
            for rnd in range(sizes["rounds"]):
                progress(f"cost, round {rnd + 1}")
                for label, found in runs.items():
                    settings = ELSEWHERE if label != "no limits" else {}
                    found.append(_deliver(sizes["n"], sizes["batch"], settings, server.url))
        finally:
            scheduled_prompts.configure()
            scheduled_prompts.set_bot_runner(None)
    return runs


# --- part 2: a burst with a limit ----------------------------------------------------------


def busiest_second(times: list[float]) -> int:
    """The most runner calls that started within any one second."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered)), default=0)


def burst(n: int, label: str, settings: dict[str, Any]) -> dict[str, Any]:
    """N prompts on "bench" due at the same second, one worker (as ``bench.burst``)."""
    with cluster(**settings) as c:
        c.worker("w1", concurrency=2)
        client = redis.Redis.from_url(c.redis.url)
        t = pick_t(default_lead("batched", n))
        at = datetime.fromtimestamp(t, UTC)
        start = time.time()
        scheduled_prompts.schedule_many(
            [
                {"prompt": f"burst {i}", "user_id": f"u{i % 100}", "platform": "bench", "at": at}
                for i in range(n)
            ]
        )
        end = time.time()
        sleep_until(t)
        tail = RecordTail(c.records, b'"start"')
        wait_for_count(tail, n, deadline=wait_deadline(t, n) + n / 100)
        calls = c.calls("start")
        run = BurstRun("ours", label, n, 2, t, end - start, t - end, 0)
        times = [r["at"] for r in calls]
        run.finish(times, [r["key"] for r in calls])
        client.close()
    return {**run.as_dict(), "busiest_second": busiest_second(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs = cost(sizes)
    base = median(runs["no limits"])
    rows = []
    for label, found in runs.items():
        took = median(found)
        rows.append([label, took * 1e6, f"{(took / base - 1) * 100:+.1f} %"])
    print(
        table(
            f"Delivering {sizes['n']:,} occurrences of an unlimited platform, "
            f"{sizes['batch']} a batch, in-process (median of {sizes['rounds']} "
            "interleaved round(s))",
            ["configuration", "µs per delivery", "vs no limits"],
            rows,
        )
    )
    n, limit, paced = sizes["burst"], sizes["limit"], sizes["paced"]
    bursts = []
    for size, label, settings in (
        (n, "no limits", {}),
        (n, "limits on other platforms", ELSEWHERE),
        (n, f"this platform limited to {limit:,}/s", {"rate_limits": f"bench={limit}/s"}),
        (paced * 10, f"this platform limited to {paced:,}/s", {"rate_limits": f"bench={paced}/s"}),
    ):
        progress(f"burst of {size:,}: {label}")
        bursts.append(burst(size, label, settings))
    columns = ["variant", "n", "delivered", "first_s", "last_s", "busiest_second", "duplicates"]
    print()
    print(
        table(
            "Burst: N due at the same second, one worker (--concurrency=2)",
            [
                "configuration",
                "N",
                "delivered",
                "first s",
                "last s",
                "busiest second",
                "duplicates",
            ],
            [[b[c] for c in columns] for b in bursts],
        )
    )
    name = "limits-quick" if args.quick else "limits"
    path = write_results(
        name, {"machine": machine(), "sizes": sizes, "cost": runs, "bursts": bursts}
    )
    progress(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
