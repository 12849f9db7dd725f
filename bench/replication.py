"""What high availability costs: ``python -m bench.replication [--quick]``.
schedule_prompt, schedule_many and deliveries on one Redis, behind Sentinel, and with
SCHEDULED_PROMPTS_MIN_REPLICAS=1. Method and figures: docs/performance.md, "Methods"."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import scheduled_prompts
from bench.burst import prepare_due
from bench.common import machine, median, progress, quantile, table, write_results
from scheduled_prompts import engine, set_bot_runner
from scheduled_prompts.connection import get_redis, scope
from support.sentinel import SentinelGroup

FULL = {"singles": 2_000, "many": 20_000, "deliveries": 5_000, "rounds": 3}
QUICK = {"singles": 200, "many": 2_000, "deliveries": 600, "rounds": 1}


class _Quiet:
    """A runner that returns at once: the figures are the store's, not a runner's."""

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        return None


def _configs(group: SentinelGroup) -> list[tuple[str, dict[str, Any]]]:
    primary = f"redis://127.0.0.1:{group.primary_port()}/0"
    return [
        ("one Redis (the primary's URL), MIN_REPLICAS=0", {"redis_url": primary}),
        ("behind Sentinel, MIN_REPLICAS=0", {"redis_url": group.url()}),
        ("behind Sentinel, MIN_REPLICAS=1", {"redis_url": group.url(), "min_replicas": 1}),
    ]


def _singles(n: int) -> dict[str, float]:
    latencies = []
    began = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        scheduled_prompts.schedule_prompt(
            f"single {i}", user_id=f"u{i % 100}", platform="bench", delay=3600
        )
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - began
    return {
        "per_s": n / wall,
        "p50_ms": quantile(latencies, 0.5) * 1e3,
        "p99_ms": quantile(latencies, 0.99) * 1e3,
    }


def _many(n: int) -> dict[str, float]:
    specs = [
        {"prompt": f"many {i}", "user_id": f"u{i % 1000}", "platform": "bench", "delay": 3600}
        for i in range(n)
    ]
    t0 = time.perf_counter()
    scheduled_prompts.schedule_many(specs)
    return {"per_s": n / (time.perf_counter() - t0)}


def _deliveries(n: int, batched: bool) -> dict[str, float]:
    deliveries = prepare_due(n, "deliver")[0]
    client, ctx = get_redis(), scope()
    size = ctx.settings.deliver_batch_size if batched else 1
    outcomes: Counter[str] = Counter()
    t0 = time.perf_counter()
    for i in range(0, len(deliveries), size):
        batch = deliveries[i : i + size]
        if batched:
            outcomes.update(r.outcome.value for r in engine.deliver_many(client, ctx, batch))
        else:
            outcomes[engine.deliver(client, ctx, batch[0]).outcome.value] += 1
    wall = time.perf_counter() - t0
    if outcomes != Counter({"delivered": len(deliveries)}):
        raise RuntimeError(f"not every occurrence was delivered: {dict(outcomes)}")
    return {"per_s": len(deliveries) / wall}


def measure(sizes: dict[str, int]) -> dict[str, Any]:
    measures: dict[str, Callable[[], dict[str, float]]] = {
        "schedule_prompt": lambda: _singles(sizes["singles"]),
        "schedule_many": lambda: _many(sizes["many"]),
        "deliver_many": lambda: _deliveries(sizes["deliveries"], batched=True),
        "deliver": lambda: _deliveries(sizes["deliveries"] // 5, batched=False),
    }
    rows: dict[str, dict[str, list[dict[str, float]]]] = {}
    with SentinelGroup() as group:
        set_bot_runner(_Quiet())
        try:
            configs = _configs(group)
            for _label, settings in configs:  # warm-up: scripts loaded, connections made
                scheduled_prompts.configure(horizon_seconds=0, **settings)
                _singles(20)
                _deliveries(20, batched=True)
            for rnd in range(sizes["rounds"]):
                # Interleaved: each configuration sees the same background load.
                for label, settings in configs:
                    progress(f"round {rnd + 1}: {label}")
                    scheduled_prompts.configure(horizon_seconds=0, **settings)
                    for name, fn in measures.items():
                        get_redis().flushall()
                        group.wait_replicated(group.nodes[1])
                        rows.setdefault(label, {}).setdefault(name, []).append(fn())
        finally:
            set_bot_runner(None)
            scheduled_prompts.configure()
    return {
        label: {
            name: {key: median([r[key] for r in runs]) for key in runs[0]}
            for name, runs in by_name.items()
        }
        for label, by_name in rows.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replication", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    results = measure(sizes)
    base = results["behind Sentinel, MIN_REPLICAS=0"]
    rows = []
    for label, got in results.items():
        rows.append(
            [
                label,
                got["schedule_prompt"]["per_s"],
                got["schedule_prompt"]["p50_ms"],
                got["schedule_prompt"]["p99_ms"],
                got["schedule_many"]["per_s"],
                got["deliver_many"]["per_s"],
                got["deliver"]["per_s"],
                f"{got['deliver_many']['per_s'] / base['deliver_many']['per_s']:.2f}",
            ]
        )
    print(
        table(
            f"High availability: a primary, a replica, three sentinels on this machine "
            f"(median of {sizes['rounds']} interleaved round(s))",
            [
                "configuration",
                f"schedule_prompt /s ({sizes['singles']:,})",
                "p50 ms",
                "p99 ms",
                f"schedule_many /s ({sizes['many']:,})",
                f"deliver_many /s ({sizes['deliveries']:,})",
                f"deliver /s ({sizes['deliveries'] // 5:,})",
                "deliver_many vs Sentinel N=0",
            ],
            rows,
        )
    )
    name = "replication-quick" if args.quick else "replication"
    path = write_results(name, {"machine": machine(), "sizes": sizes, "results": results})
    progress(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
