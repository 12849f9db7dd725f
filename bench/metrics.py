"""What counting the metrics costs per delivery: ``python -m bench.metrics [--quick]``.
The commit of batches of deliveries with and without their counts, interleaved in the
same run. Method and figures: docs/performance.md, "Methods"."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import scheduled_prompts
from bench.common import machine, median, progress, redis_server, table, write_results
from scheduled_prompts._time import to_ms
from scheduled_prompts.claims import Claimed, Claims
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.metrics import Observation
from scheduled_prompts.occurrences import Delivery

FULL = {"n": 10_000, "batch": 200, "rounds": 5}
QUICK = {"n": 1_000, "batch": 200, "rounds": 1}


def _claimed(n: int, tag: str) -> tuple[Claims, list[Claimed]]:
    at = datetime.now(UTC) + timedelta(hours=1)
    specs = [
        {"prompt": f"{tag} {i}", "user_id": f"u{i % 100}", "platform": "bench", "at": at}
        for i in range(n)
    ]
    made = scheduled_prompts.schedule_many(specs)
    claims = Claims(get_redis(), scope())
    deliveries = [Delivery(p.id, to_ms(at)) for p in made]
    taken: list[Claimed] = []
    for i in range(0, n, 1000):
        taken += [c for c in claims.claim(deliveries[i : i + 1000], at) if isinstance(c, Claimed)]
    return claims, taken


def _commit(n: int, batch: int, counted: bool) -> float:
    """Seconds per delivery to commit ``n`` claimed occurrences, ``batch`` a call."""
    claims, taken = _claimed(n, "counted" if counted else "plain")

    def change(r: Any) -> Any:
        return r.replace(run_count=r.run_count + 1, version=r.version + 1)

    started = time.perf_counter()
    for i in range(0, len(taken), batch):
        part = taken[i : i + batch]
        seen = (
            [Observation("delivered", "bench", "once", 0.012, 0.003) for _ in part]
            if counted
            else None
        )
        claims.commit([(c, change) for c in part], seen)
    return (time.perf_counter() - started) / len(taken)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs: dict[str, list[float]] = {"without counts": [], "with counts": []}
    with redis_server() as server:
        scheduled_prompts.configure(redis_url=server.url, horizon_seconds=0)
        try:
            _commit(200, sizes["batch"], True)  # warm-up: scripts loaded
            for rnd in range(sizes["rounds"]):
                progress(f"round {rnd + 1}")
                for label, found in runs.items():
                    get_redis().flushall()
                    found.append(_commit(sizes["n"], sizes["batch"], label == "with counts"))
            hash_bytes = int(get_redis().memory_usage(scope().keys.metrics) or 0)
        finally:
            scheduled_prompts.configure()
    plain, counted = median(runs["without counts"]), median(runs["with counts"])
    rows = [
        ["commit without counts", plain * 1e6, ""],
        ["commit with counts", counted * 1e6, f"+{(counted - plain) * 1e6:.1f} µs"],
    ]
    print(
        table(
            f"Counting the metrics: commit of {sizes['n']:,} deliveries, {sizes['batch']} a "
            f"call (median of {sizes['rounds']} interleaved round(s))",
            ["step", "µs per delivery", "cost of the counts"],
            rows,
        )
    )
    print(f"\nmetrics hash after the run: {hash_bytes:,} bytes (bounded by the label sets)")
    name = "metrics-quick" if args.quick else "metrics"
    data = {"machine": machine(), "sizes": sizes, "runs": runs, "hash_bytes": hash_bytes}
    progress(f"wrote {write_results(name, data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
