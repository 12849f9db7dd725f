"""The store on a Redis Cluster: ``python -m bench.cluster [--quick]``.

1. Tick against stored prompts on a 3-primary cluster (16 shards): 0 and 100 due, from
   1,000 to 1,000,000 stored — flat, as on one Redis.
2. One Redis vs a cluster of 1 and of 3 primaries (16 shards), the same code and machine:
   ``schedule_many`` of 20,000 and a burst of 10,000 due at one second delivered by one
   worker, with the Redis CPU each costs (``INFO cpu`` of every primary, before and
   after). The broker is a Redis of its own in every row, so store CPU is the store's.
3. The model: primaries for a rate of deliveries, from the Redis CPU per delivery.

On 2 cores the cluster cannot be faster than one Redis (its primaries share the cores
with the worker); the figures that carry to more machines are the CPU per delivery per
primary. Method and figures: docs/performance.md, "Redis Cluster".
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

import scheduled_prompts
from bench.burst import RecordTail, wait_deadline, wait_for_count
from bench.common import machine, median, progress, sleep_until, table, timed, write_results
from bench.tick import DUE, RUNS, Workload, check_count, load_ours, timed_with_setup
from scheduled_prompts import engine
from scheduled_prompts._time import utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.occurrences import Delivery
from support.cluster import Cluster
from support.redis_cluster import RedisCluster
from support.redis_server import RedisServer

TICK_SIZES = (1_000, 100_000, 1_000_000)
QUICK_TICK_SIZES = (1_000, 10_000)
SCHEDULE_N = 20_000
BURST_N = 10_000
QUICK_N = 2_000
SHARDS = 16
#: 1 M deliveries a minute, the rate the model is asked about.
TARGET_PER_S = 1_000_000 / 60
#: Share of a primary's core the model plans to use (headroom for spikes, replication,
#: persistence and other clients).
UTILISATION = 0.5


@dataclass(frozen=True)
class Topology:
    label: str
    primaries: int  # 0: one plain Redis, one shard (the single-Redis default)


TOPOLOGIES = (
    Topology("one Redis, 1 shard", 0),
    Topology(f"cluster, 1 primary, {SHARDS} shards", 1),
    Topology(f"cluster, 3 primaries, {SHARDS} shards", 3),
)


class Store:
    """The store of one topology: its URL and the nodes whose CPU is its cost."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.plain: RedisServer | None = None
        self.cluster: RedisCluster | None = None
        if topology.primaries:
            self.cluster = RedisCluster(primaries=topology.primaries).start()
            self.url = self.cluster.url
        else:
            self.plain = RedisServer().start()
            self.url = self.plain.url

    def ports(self) -> list[int]:
        if self.cluster is not None:
            return [node.port for node in self.cluster.nodes]
        assert self.plain is not None
        return [self.plain.port]

    def cpu(self) -> list[float]:
        """CPU seconds each node has used (user + system)."""
        out = []
        for port in self.ports():
            client = redis.Redis(port=port)
            info = client.info("cpu")
            client.close()
            out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
        return out

    def settings(self) -> dict[str, Any]:
        return {"redis_url": self.url, **({"shards": SHARDS} if self.cluster else {})}

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.cleanup()
        if self.plain is not None:
            self.plain.cleanup()


@contextmanager
def store(topology: Topology, broker: RedisServer) -> Iterator[Store]:
    made = Store(topology)
    try:
        scheduled_prompts.configure(broker_url=broker.url, **made.settings())
        yield made
    finally:
        scheduled_prompts.configure()
        made.close()


def spent(before: Sequence[float], after: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(before, after, strict=True)]


# --- 1. tick on the cluster --------------------------------------------------------------


def tick_on_cluster(sizes: Sequence[int], broker: RedisServer) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        with store(Topology("cluster", 3), broker):
            rows.append(tick_at(size))
            progress(f"tick on the cluster, {size:,} stored: {rows[-1]}")
    return rows


def tick_at(size: int) -> dict[str, Any]:
    """Median tick with none and with ``DUE`` due, ``size`` stored (configured store)."""
    wl = Workload(utcnow().replace(microsecond=0), size)
    progress(f"tick: storing {size:,} on 3 primaries")
    near = load_ours(wl)
    client, ctx = get_redis(), scope()
    # The near prompts are the workload's first DUE, in order: their users give the shards.
    homes = {pid: ctx.of_user(wl.user(i)).number for i, (pid, _) in enumerate(near)}
    published: list[Delivery] = []

    def none_due() -> None:
        engine.tick(client, ctx, published.extend)
        check_count("cluster", len(published), 0)

    zero = timed(none_due, runs=RUNS)

    def rearm() -> None:
        published.clear()
        for shard in ctx.every_shard():
            mine = {pid: ms for pid, ms in near if homes[pid] == shard.number}
            if mine:
                client.zadd(shard.keys.due, mine)
            client.delete(shard.keys.inflight)

    now = wl.due_at - timedelta(seconds=60)
    due = timed_with_setup(
        rearm,
        lambda: engine.tick(client, ctx, published.extend, now=now),
        lambda: check_count("cluster", len(published), DUE),
        runs=RUNS,
    )
    return {"stored": size, "due_0_ms": median(zero) * 1000, "due_100_ms": median(due) * 1000}


# --- 2. one Redis vs 1 and 3 primaries ---------------------------------------------------


def schedule_rate(made: Store, n: int) -> dict[str, Any]:
    at = datetime.now(UTC) + timedelta(days=1)
    specs = [
        {"prompt": f"p{i}", "user_id": f"user-{i % 5000}", "platform": "bench", "at": at}
        for i in range(n)
    ]
    before = made.cpu()
    started = time.perf_counter()
    scheduled_prompts.schedule_many(specs)
    seconds = time.perf_counter() - started
    cpu = spent(before, made.cpu())
    return {"schedule_per_s": n / seconds, "schedule_cpu_us": sum(cpu) / n * 1e6}


def burst(made: Store, broker: RedisServer, n: int, tmp: Path) -> dict[str, Any]:
    """N due at T, one worker (its defaults): seconds from T to the last runner call."""
    c = Cluster(tmp, redis=broker, tick_seconds=60, lease_seconds=60, broker_url=broker.url,
                **made.settings())  # fmt: skip
    try:
        c.worker("w1")
        t = math.ceil(time.time() + 5 + n / 1000)
        at = datetime.fromtimestamp(t, UTC)
        scheduled_prompts.schedule_many(
            [{"prompt": f"burst {i}", "user_id": f"u{i % 100}", "platform": "bench", "at": at}
             for i in range(n)]
        )  # fmt: skip
        sleep_until(t)
        before = made.cpu()
        tail = RecordTail(c.records, b'"start"')
        got = wait_for_count(tail, n, deadline=wait_deadline(t, n))
        last = max(r["at"] for r in c.calls("start")) - t
        # Commits land just after the last call: wait until nothing is in flight.
        deadline = time.time() + 30
        while any(get_redis().zcard(s.keys.inflight) for s in scope().every_shard()):
            if time.time() > deadline:
                break
            time.sleep(0.05)
        cpu = spent(before, made.cpu())
    finally:
        for process in c.processes:  # not c.close(): the broker stays for the next row
            process.stop()
    busy = [x for x in cpu if x > 0.01 * sum(cpu)] or cpu
    return {
        "burst_delivered": got,
        "burst_s": last,
        "burst_per_s": got / last if last > 0 else math.nan,
        "delivery_cpu_us": sum(cpu) / max(got, 1) * 1e6,
        "delivery_cpu_us_per_primary": [x / max(got, 1) * 1e6 for x in busy],
    }


def compare(n_schedule: int, n_burst: int, broker: RedisServer) -> list[dict[str, Any]]:
    rows = []
    for topology in TOPOLOGIES:
        with store(topology, broker) as made, tempfile.TemporaryDirectory() as tmp:
            progress(f"{topology.label}: schedule_many of {n_schedule:,}")
            row: dict[str, Any] = {"topology": topology.label, "primaries": topology.primaries}
            row |= schedule_rate(made, n_schedule)
            redis.Redis.from_url(broker.url).flushall()
            _empty(made)
            progress(f"{topology.label}: a burst of {n_burst:,}")
            row |= burst(made, broker, n_burst, Path(tmp))
            rows.append(row)
            progress(f"{topology.label}: {row}")
        redis.Redis.from_url(broker.url).flushall()
    return rows


def _empty(made: Store) -> None:
    for port in made.ports():
        client = redis.Redis(port=port)
        client.flushall()
        client.close()


# --- 3. the model --------------------------------------------------------------------------


def model(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Primaries for ``TARGET_PER_S`` deliveries a second: each primary runs its commands
    on one core, planned at ``UTILISATION``; shards spread the load evenly over them."""
    out = []
    for row in rows:
        cost = row["delivery_cpu_us"] / 1e6  # Redis CPU seconds per delivery, all nodes
        per_primary = UTILISATION / cost
        out.append(
            {
                "topology": row["topology"],
                "redis_cpu_us_per_delivery": row["delivery_cpu_us"],
                "deliveries_per_s_per_primary": per_primary,
                "primaries_for_1m_per_min": math.ceil(TARGET_PER_S / per_primary),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--skip-tick", action="store_true", help="only the comparison")
    args = parser.parse_args(argv)
    sizes = QUICK_TICK_SIZES if args.quick else TICK_SIZES
    n_schedule, n_burst = (QUICK_N, QUICK_N) if args.quick else (SCHEDULE_N, BURST_N)
    broker = RedisServer().start()
    try:
        compared = compare(n_schedule, n_burst, broker)
        ticks = [] if args.skip_tick else tick_on_cluster(sizes, broker)
    finally:
        broker.cleanup()
    print(table(
        f"One Redis vs a Redis Cluster: schedule_many of {n_schedule:,}, a burst of "
        f"{n_burst:,} (one worker)",
        ["store", "schedule/s", "Redis CPU µs per prompt", "burst s", "deliveries/s",
         "Redis CPU µs per delivery", "per busy primary"],
        [[r["topology"], r["schedule_per_s"], r["schedule_cpu_us"], r["burst_s"],
          r["burst_per_s"], r["delivery_cpu_us"],
          " / ".join(f"{x:.0f}" for x in r["delivery_cpu_us_per_primary"])]
         for r in compared],
    ))  # fmt: skip
    print()
    if ticks:
        print(table(
            "Tick on a 3-primary cluster (16 shards), median ms",
            ["stored", "0 due", f"{DUE} due"],
            [[r["stored"], r["due_0_ms"], r["due_100_ms"]] for r in ticks],
        ))  # fmt: skip
        print()
    modelled = model(compared)
    print(table(
        f"Model: primaries for 1,000,000 deliveries a minute ({TARGET_PER_S:,.0f}/s) at "
        f"{UTILISATION:.0%} of a core each",
        ["measured on", "Redis CPU µs per delivery", "deliveries/s per primary",
         "primaries for 1 M/min"],
        [[m["topology"], m["redis_cpu_us_per_delivery"], m["deliveries_per_s_per_primary"],
          m["primaries_for_1m_per_min"]] for m in modelled],
    ))  # fmt: skip
    path = write_results(
        "cluster",
        {"machine": machine(), "compare": compared, "tick": ticks, "model": modelled,
         "quick": args.quick},
    )  # fmt: skip
    progress(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
