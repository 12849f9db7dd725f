"""What counting the metrics and logging the steps cost per delivery:
``python -m bench.metrics [--quick]``. The commit of batches of deliveries without counts,
with counts, and with counts and the delivery log, interleaved in the same run. Method
and figures: docs/performance.md, "Methods"."""

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


#: The variants measured: (label, what each delivery adds: nothing, its counts, its
#: counts and its log entry).
VARIANTS = ("without counts", "with counts", "with counts and log")


def _commit(n: int, batch: int, variant: str) -> float:
    """Seconds per delivery to commit ``n`` claimed occurrences, ``batch`` a call."""
    claims, taken = _claimed(n, variant.replace(" ", "-"))

    def change(r: Any) -> Any:
        return r.replace(run_count=r.run_count + 1, version=r.version + 1)

    def seen(c: Claimed) -> Observation:
        if variant == "with counts":
            return Observation("delivered", "bench", "once", 0.012, 0.003)
        d = c.delivery
        return Observation(
            "delivered", "bench", "once", 0.012, 0.003, d.prompt_id, c.record.user_id,
            d.occurrence_ms,
        )  # fmt: skip

    started = time.perf_counter()
    for i in range(0, len(taken), batch):
        part = taken[i : i + batch]
        steps = None if variant == "without counts" else [seen(c) for c in part]
        claims.commit([(c, change) for c in part], steps)
    return (time.perf_counter() - started) / len(taken)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with redis_server() as server:
        scheduled_prompts.configure(redis_url=server.url, horizon_seconds=0)
        try:
            _commit(200, sizes["batch"], VARIANTS[-1])  # warm-up: scripts loaded
            for rnd in range(sizes["rounds"]):
                progress(f"round {rnd + 1}")
                for variant, found in runs.items():
                    get_redis().flushall()
                    found.append(_commit(sizes["n"], sizes["batch"], variant))
            hash_bytes = int(get_redis().memory_usage(scope().keys.metrics) or 0)
            log_bytes = int(get_redis().memory_usage(scope().keys.log) or 0)
            log_entries = int(get_redis().xlen(scope().keys.log))
        finally:
            scheduled_prompts.configure()
    plain = median(runs[VARIANTS[0]])
    rows = [[VARIANTS[0].replace("without", "commit without"), plain * 1e6, ""]]
    for variant in VARIANTS[1:]:
        took = median(runs[variant])
        rows.append([f"commit {variant}", took * 1e6, f"+{(took - plain) * 1e6:.1f} µs"])
    print(
        table(
            f"Counting the metrics and logging: commit of {sizes['n']:,} deliveries, "
            f"{sizes['batch']} a call (median of {sizes['rounds']} interleaved round(s))",
            ["step", "µs per delivery", "cost over no counts"],
            rows,
        )
    )
    print(f"\nmetrics hash after the run: {hash_bytes:,} bytes (bounded by the label sets)")
    print(
        f"delivery log after the run: {log_entries:,} entries, {log_bytes:,} bytes "
        f"({log_bytes / max(1, log_entries):.0f} bytes an entry)"
    )
    name = "metrics-quick" if args.quick else "metrics"
    data = {
        "machine": machine(),
        "sizes": sizes,
        "runs": runs,
        "hash_bytes": hash_bytes,
        "log_entries": log_entries,
        "log_bytes": log_bytes,
    }
    progress(f"wrote {write_results(name, data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
