"""Tick cost against stored prompts: ``python -m bench.tick [--quick]``.
Ours, the seed's full scan and celery-redbeat, 1,000 to 1,000,000 stored, 0 or 100 due.
Method and figures: docs/performance.md, "Tick cost" and "Methods"."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from celery import Celery
from redbeat.decoder import RedBeatJSONEncoder, to_timestamp
from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry
from redbeat.schedules import rrule

import scheduled_prompts
from bench import baseline, redbeat_peer
from bench.common import (
    client_for,
    machine,
    median,
    progress,
    redis_server,
    table,
    timed,
    write_results,
)
from scheduled_prompts import api, engine
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.occurrences import Delivery
from scheduled_prompts.settings import get_settings
from scheduled_prompts.store import Scope
from scheduled_prompts.validation import build_from_spec
from support.redis_server import RedisServer

FULL_SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
DUE = 100
USERS = 5_000
PROMPT_CHARS = 200
CHUNK = 20_000
RUNS = 7
SLOW_SCAN = 500_000  # from this size on, the full scan gets 3 runs and no warm-up
NEAR = timedelta(hours=1)  # where the 100 "due" prompts sit, from the workload's base time
FAR = timedelta(days=1)  # every other prompt is at least this far ahead
REDBEAT_TASK = "bench.fire_prompt"  # not registered: apply_async falls back to send_task
_FILLER = "Summarise the open pull requests and post the list to the team channel. " * 4


@dataclass(frozen=True)
class Workload:
    """``size`` one-time prompts scheduled at ``base``: the first ``DUE`` an hour ahead,
    the rest a day or more ahead, one second apart."""

    base: datetime
    size: int

    @property
    def due_at(self) -> datetime:
        return self.base + NEAR

    def at(self, i: int) -> datetime:
        if i < DUE:
            return self.due_at + timedelta(milliseconds=i)
        return self.base + FAR + timedelta(seconds=i)

    def prompt(self, i: int) -> str:
        return f"[{i:09d}] {_FILLER}"[:PROMPT_CHARS]

    def user(self, i: int) -> str:
        return f"user-{i % USERS:05d}"

    def spec(self, i: int) -> dict[str, Any]:
        return {"prompt": self.prompt(i), "user_id": self.user(i), "platform": "bench",
                "at": self.at(i)}  # fmt: skip

    def chunks(self) -> list[range]:
        return [range(s, min(s + CHUNK, self.size)) for s in range(0, self.size, CHUNK)]


def _loaded(system: str, done: int, total: int, started: float) -> None:
    if done == total or done % 100_000 == 0:
        rate = done / max(time.perf_counter() - started, 1e-9)
        progress(f"{system}: {done:,}/{total:,} stored ({rate:,.0f}/s)")


# --- ours ------------------------------------------------------------------------------


def load_ours(wl: Workload) -> list[tuple[str, int]]:
    """Store the workload with ``api.schedule_many`` (configured Redis); returns the
    ``(id, due ms)`` of the ``DUE`` near prompts."""
    near: list[tuple[str, int]] = []
    started = time.perf_counter()
    for chunk in wl.chunks():
        records = api.schedule_many([wl.spec(i) for i in chunk])
        near += [(r.id, to_ms(r.next_run_at)) for r in records[: max(0, DUE - chunk.start)]
                 if r.next_run_at is not None]  # fmt: skip
        _loaded("ours", chunk.stop, wl.size, started)
    return near


def rearm_ours(client: redis.Redis, ctx: Scope, near: Sequence[tuple[str, int]]) -> None:
    """Put the near prompts back in the due index, as before the tick that promoted them."""
    pipe = client.pipeline(transaction=False)
    pipe.zadd(ctx.keys.due, dict(near))
    pipe.delete(ctx.keys.inflight)
    pipe.execute()


def timed_with_setup(
    setup: Callable[[], None],
    fn: Callable[[], Any],
    check: Callable[[], None],
    *,
    runs: int,
    warmup: int = 1,
) -> list[float]:
    """Seconds per call of ``fn``; ``setup()`` before and ``check()`` after are not timed."""
    out = []
    for n in range(warmup + runs):
        setup()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        check()
        if n >= warmup:
            out.append(elapsed)
    return out


def measure_ours(wl: Workload, near: Sequence[tuple[str, int]]) -> dict[int, list[float]]:
    client, ctx = get_redis(), scope()
    published: list[Delivery] = []

    def none_due() -> None:
        engine.tick(client, ctx, published.extend)
        if published:
            raise RuntimeError(f"ours: {len(published)} published with none due")

    horizon = timedelta(seconds=ctx.settings.horizon_seconds)
    if utcnow() + horizon >= wl.due_at:
        raise RuntimeError("the near prompts came within the horizon: the load took too long")
    zero = timed(none_due, runs=RUNS)
    now = wl.due_at - timedelta(seconds=60)

    def setup() -> None:
        published.clear()
        rearm_ours(client, ctx, near)

    due = timed_with_setup(
        setup,
        lambda: engine.tick(client, ctx, published.extend, now=now),
        lambda: check_count("ours", len(published), DUE),
        runs=RUNS,
    )
    return {0: zero, DUE: due}


def check_count(system: str, got: int, want: int) -> None:
    if got != want:
        raise RuntimeError(f"{system}: a tick handled {got} occurrences, expected {want}")


# --- seed full scan --------------------------------------------------------------------


def load_seed(client: redis.Redis, wl: Workload) -> None:
    """Store the workload as the seed did: one record JSON per key (built and encoded by
    our own model, so the bytes are the same as ours)."""
    settings = get_settings()
    started = time.perf_counter()
    for chunk in wl.chunks():
        records = (build_from_spec(wl.spec(i), wl.base, settings)[0] for i in chunk)
        baseline.load(client, ((r.id, r.to_json()) for r in records))
        _loaded("seed", chunk.stop, wl.size, started)


def measure_seed(client: redis.Redis, wl: Workload) -> tuple[dict[int, list[float]], int, int]:
    slow = wl.size >= SLOW_SCAN
    runs, warmup = (3, 0) if slow else (RUNS, 1)
    counts: set[int] = set()

    def at(now_ms: int) -> Callable[[], None]:
        return lambda: counts.add(len(baseline.tick(client, now_ms)))

    zero = timed(at(to_ms(utcnow())), runs=runs, warmup=warmup)
    check_count("seed", max(counts), 0)
    counts.clear()
    due = timed(at(to_ms(wl.due_at) + 1_000), runs=runs, warmup=warmup)
    check_count("seed", min(counts), DUE)
    check_count("seed", max(counts), DUE)
    return {0: zero, DUE: due}, runs, warmup


# --- celery-redbeat --------------------------------------------------------------------


class NoSendScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat's scheduler with sending replaced by a counter (no broker needed)."""

    sent = 0

    def send_task(self, *args: Any, **kwargs: Any) -> None:
        self.sent += 1

    @property
    def _maybe_due_kwargs(self) -> dict[str, Any]:
        return {"producer": None}


class RedBeatLoader:
    """Stores many entries as ``RedBeatSchedulerEntry.save()`` stores one, pipelined."""

    def __init__(self, app: Celery, created: datetime) -> None:
        self.app = app
        self.schedule_key = app.redbeat_conf.schedule_key
        self.created = created.astimezone(app.timezone)
        template = RedBeatJSONEncoder().default(rrule("DAILY", count=1, dtstart=created))
        self.template = {k: v for k, v in template.items() if k not in ("dtstart", "dtstart_tz")}

    @staticmethod
    def name(i: int) -> str:
        return f"prompt-{i:019d}"  # 26 characters, as our ids

    def key(self, i: int) -> str:
        return str(RedBeatSchedulerEntry.generate_key(self.app, self.name(i)))

    def definition(self, name: str, wl: Workload, i: int, dtstart: datetime) -> str:
        schedule = {**self.template, "dtstart": to_timestamp(dtstart), "dtstart_tz": 0}
        return redbeat_peer.definition(
            name, REDBEAT_TASK, self.kwargs(wl, i), schedule, args=[], options={}
        )

    @staticmethod
    def kwargs(wl: Workload, i: int) -> dict[str, Any]:
        return {"prompt": wl.prompt(i), "user_id": wl.user(i), "platform": "bench"}

    def meta(self, last_run_at: datetime) -> str:
        return redbeat_peer.meta(last_run_at)

    def load(self, client: redis.Redis, wl: Workload) -> None:
        started = time.perf_counter()
        meta = self.meta(self.created)
        for chunk in wl.chunks():
            pipe = client.pipeline(transaction=False)
            for i in chunk:
                at = wl.at(i)
                definition = self.definition(self.name(i), wl, i, at)
                redbeat_peer.queue_save(
                    pipe, self.schedule_key, self.key(i),
                    definition=definition, meta=meta, score=to_timestamp(at),
                )  # fmt: skip
            pipe.execute()
            _loaded("redbeat", chunk.stop, wl.size, started)

    def check(self, client: redis.Redis, wl: Workload) -> None:
        """The bulk-written entry 0 reads back with ``from_key``, and its definition is
        byte for byte what a real ``save()`` writes for the same entry."""
        loaded = RedBeatSchedulerEntry.from_key(self.key(0), app=self.app)
        if loaded.kwargs != self.kwargs(wl, 0) or loaded.schedule.dtstart != wl.at(0).replace(
            microsecond=0
        ):
            raise RuntimeError(f"redbeat loader: entry 0 reads back wrong: {loaded!r}")
        name = "loader-check"
        real = RedBeatSchedulerEntry(
            name, REDBEAT_TASK, rrule("DAILY", count=1, dtstart=wl.at(0)), args=[],
            kwargs=self.kwargs(wl, 0), app=self.app,
        ).save()  # fmt: skip
        try:
            saved = client.hget(real.key, "definition")
            if saved is None or saved.decode() != self.definition(name, wl, 0, wl.at(0)):
                raise RuntimeError(
                    f"redbeat loader writes another definition than save(): {saved!r}"
                )
            if (
                abs(float(client.zscore(self.schedule_key, real.key) or 0) - to_timestamp(wl.at(0)))
                > 1
            ):
                raise RuntimeError("redbeat loader scores entries differently from save()")
        finally:
            real.delete()

    def make_due(self, client: redis.Redis, wl: Workload, dtstart: datetime) -> Callable[[], None]:
        """Rewrite the near entries to be due at ``dtstart``; returns their re-arm."""
        pipe = client.pipeline(transaction=False)
        for i in range(DUE):
            pipe.hset(self.key(i), "definition", self.definition(self.name(i), wl, i, dtstart))
        pipe.execute()
        meta = self.meta((dtstart - timedelta(hours=1)).astimezone(self.app.timezone))
        score = to_timestamp(dtstart)

        def rearm() -> None:
            pipe = client.pipeline(transaction=False)
            for i in range(DUE):
                pipe.hset(self.key(i), "meta", meta)
            pipe.zadd(self.schedule_key, {self.key(i): score for i in range(DUE)})
            pipe.execute()

        return rearm


def measure_redbeat(client: redis.Redis, url: str, wl: Workload) -> dict[int, list[float]]:
    app = redbeat_peer.redbeat_app(url)
    loader = RedBeatLoader(app, wl.base)
    loader.load(client, wl)
    loader.check(client, wl)
    scheduler = NoSendScheduler(app=app)
    zero = timed(scheduler.tick, runs=RUNS)
    check_count("redbeat", scheduler.sent, 0)
    rearm = loader.make_due(client, wl, utcnow() - timedelta(minutes=1))

    def setup() -> None:
        scheduler.sent = 0
        rearm()

    due = timed_with_setup(
        setup, scheduler.tick, lambda: check_count("redbeat", scheduler.sent, DUE), runs=RUNS
    )
    scheduler.close()
    return {0: zero, DUE: due}


# --- the run ---------------------------------------------------------------------------


def cell(system: str, size: int, due: int, samples: Sequence[float], warmup: int) -> dict[str, Any]:
    return {
        "system": system,
        "stored": size,
        "due": due,
        "median_ms": median(samples) * 1000,
        "runs": len(samples),
        "warmup": warmup,
        "samples_ms": [round(s * 1000, 4) for s in samples],
    }


def measure_size(server: RedisServer, size: int) -> list[dict[str, Any]]:
    client, url = client_for(server), server.url
    wl = Workload(utcnow(), size)
    cells: list[dict[str, Any]] = []
    progress(f"{size:,} stored: ours")
    near = load_ours(wl)
    for due, samples in measure_ours(wl, near).items():
        cells.append(cell("ours", size, due, samples, 1))
    client.flushall()
    progress(f"{size:,} stored: seed full scan")
    load_seed(client, wl)
    seed, _, warmup = measure_seed(client, wl)
    for due, samples in seed.items():
        cells.append(cell("seed", size, due, samples, warmup))
    client.flushall()
    progress(f"{size:,} stored: celery-redbeat")
    for due, samples in measure_redbeat(client, url, wl).items():
        cells.append(cell("redbeat", size, due, samples, 1))
    client.flushall()
    return cells


def summarise(cells: Sequence[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    by = {(c["system"], c["stored"], c["due"]): c["median_ms"] for c in cells}
    small, large = min(sizes), max(sizes)
    ratio = {str(due): by[("ours", large, due)] / by[("ours", small, due)] for due in (0, DUE)}
    return {
        "ratio_sizes": [large, small],
        "ours_ratio": ratio,
        "ours_none_due_ms_at_largest": by[("ours", large, 0)],
        "promise": "tick with 1,000,000 stored, none due <= 2 ms; tick(1M)/tick(1k) <= 2",
        "promise_met": large >= 1_000_000
        and small <= 1_000
        and by[("ours", large, 0)] <= 2.0
        and ratio["0"] <= 2.0,
    }


def render(cells: Sequence[dict[str, Any]], sizes: Sequence[int], summary: dict[str, Any]) -> str:
    by = {(c["system"], c["stored"], c["due"]): c for c in cells}
    rows = []
    for size in sizes:
        for due in (0, DUE):
            row: list[Any] = [f"{size:,} / {due}"]
            for system in ("ours", "seed", "redbeat"):
                c = by[(system, size, due)]
                row.append(c["median_ms"])
            rows.append(row)
    large, small = summary["ratio_sizes"]
    ratio = summary["ours_ratio"]
    lines = [
        table(
            "Tick cost vs stored prompts (median ms)",
            ["stored / due", "ours ms", "seed full scan ms", "redbeat ms"],
            rows,
        ),
        "",
        f"ours tick({large:,})/tick({small:,}): {ratio['0']:.2f} with none due, "
        f"{ratio[str(DUE)]:.2f} with {DUE} due (promise: tick(1M)/tick(1k) <= 2, "
        f"tick(1M, none due) <= 2 ms; ours at {large:,} none due: "
        f"{summary['ours_none_due_ms_at_largest']:.3f} ms)",
        f"runs per cell: {RUNS} after 1 warm-up"
        + "".join(
            f"; {c['system']} {c['stored']:,}/{c['due']}: {c['runs']}, no warm-up"
            for c in cells
            if c["runs"] != RUNS
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tick", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1k and 10k stored only")
    parser.add_argument("--sizes", help="comma-separated population sizes, e.g. 1000,100000")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    sizes = sorted(sizes or (QUICK_SIZES if args.quick else FULL_SIZES))
    if min(sizes) < DUE:
        parser.error(f"every size must be at least {DUE}")
    cells: list[dict[str, Any]] = []
    with redis_server() as server:
        client = client_for(server)
        scheduled_prompts.configure(redis_url=server.url, queue="bench-tick")
        try:
            for size in sizes:
                cells += measure_size(server, size)
            info = machine(client)
        finally:
            scheduled_prompts.configure()
    summary = summarise(cells, sizes)
    print(render(cells, sizes, summary))
    path = write_results(
        "tick-quick" if args.quick else "tick",
        {"machine": info, "sizes": sizes, "due": DUE, "prompt_chars": PROMPT_CHARS,
         "users": USERS, "cells": cells, **summary},
    )  # fmt: skip
    progress(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
