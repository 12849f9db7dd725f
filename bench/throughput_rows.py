"""Scheduling throughput rows: ``schedule_prompt`` and ``schedule_many`` (one-time, cron)
against redbeat's ``save()`` and its writes pipelined, each run on an emptied server.
Method and figures: docs/performance.md, "Scheduling throughput" and "Methods"."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import hiredis
from redbeat.schedulers import RedBeatSchedulerEntry
from redbeat.schedulers import get_redis as redbeat_redis
from redbeat.schedules import rrule

import scheduled_prompts
from scheduled_prompts import api
from scheduled_prompts.connection import scope
from support.redis_server import RedisServer

from . import redbeat_peer
from .common import client_for, machine, median, progress, redis_server, table, write_results

PROMPT = (
    "Every weekday morning, summarise the overnight alerts of the payments cluster: list the "
    "three noisiest services with their error rates and one concrete follow-up for each, "
    "in ten lines at most."
).ljust(200, ".")[:200]
USERS = 1_000
PLATFORM = "bench"
ONCE_DELAY = 3_600
CRON = "*/5 * * * *"
CRON_ZONE = "Europe/Paris"
SINGLE_PROMISE = 1_000
MANY_PROMISE = 20_000
#: Issue 18: cron prompts whose (expression, timezone) pairs are all different.
DISTINCT_PROMISE = 5_000
#: Zones for the distinct pairs: each minute of the day in each (24 x 60 x 14 = 20,160).
DISTINCT_ZONES = (
    "America/Los_Angeles", "America/Denver", "America/Chicago", "America/New_York",
    "America/Sao_Paulo", "Europe/London", "Europe/Paris", "Europe/Helsinki",
    "Asia/Kolkata", "Asia/Shanghai", "Asia/Tokyo", "Australia/Sydney",
    "Australia/Lord_Howe", "Pacific/Auckland",
)  # fmt: skip


#: Members (or strings) per raw command of the floor: as ``schedule_many``'s batches.
FLOOR_CHUNK = 1_000
#: The floor ratio the issue asks of ``schedule_many``.
FLOOR_PROMISE = 0.5


@dataclass(frozen=True)
class Sizes:
    single: int
    many: int
    cron: int
    distinct: int


FULL = Sizes(single=5_000, many=20_000, cron=5_000, distinct=20_000)
QUICK = Sizes(single=1_000, many=5_000, cron=1_000, distinct=2_000)


def user(i: int) -> str:
    return f"user-{i % USERS:04d}"


def once_specs(n: int) -> list[dict[str, Any]]:
    """``n`` schedule_prompt keyword sets: one-time, due 3600 + i s ahead."""
    return [
        {"prompt": PROMPT, "user_id": user(i), "platform": PLATFORM, "delay": ONCE_DELAY + i}
        for i in range(n)
    ]


def cron_specs(n: int) -> list[dict[str, Any]]:
    """``n`` cron keyword sets starting one hour ahead (first run beyond the horizon)."""
    start_at = datetime.now(UTC) + timedelta(hours=1)
    return [
        {
            "prompt": PROMPT,
            "user_id": user(i),
            "platform": PLATFORM,
            "cron": CRON,
            "timezone": CRON_ZONE,
            "start_at": start_at,
        }
        for i in range(n)
    ]


def distinct_cron_specs(n: int) -> list[dict[str, Any]]:
    """``n`` cron keyword sets, every (expression, timezone) pair different: a daily time
    per user ("M H * * *"), each minute of the day in each of the zones in turn."""
    start_at = datetime.now(UTC) + timedelta(hours=1)
    specs = []
    for i in range(n):
        minute_of_day, zone = divmod(i, len(DISTINCT_ZONES))
        hour, minute = divmod(minute_of_day % 1440, 60)
        specs.append({
            "prompt": PROMPT, "user_id": user(i), "platform": PLATFORM,
            "cron": f"{minute} {hour} * * *", "timezone": DISTINCT_ZONES[zone],
            "start_at": start_at,
        })  # fmt: skip
    return specs


def stored_commands(client: Any, chunk: int = 1_000) -> list[tuple[Any, ...]]:
    """The server's whole contents as raw write commands, built untimed: ``MSET`` for the
    strings and variadic ``ZADD`` / ``HSET`` for the sorted sets and hashes,
    :data:`FLOOR_CHUNK` entries a command (the fewest, cheapest commands that store the
    same bytes: the floor any writer of these records pays)."""
    strings: list[bytes] = []
    commands: list[tuple[Any, ...]] = []
    for key in sorted(client.scan_iter(count=10_000)):
        kind = client.type(key)
        if kind == b"string":
            strings.append(key)
        elif kind == b"zset":
            entries = client.zrange(key, 0, -1, withscores=True)
            for i in range(0, len(entries), chunk):
                flat = [x for member, score in entries[i : i + chunk] for x in (score, member)]
                commands.append(("ZADD", key, *flat))
        elif kind == b"hash":
            fields = list(client.hgetall(key).items())
            for i in range(0, len(fields), chunk):
                flat = [x for pair in fields[i : i + chunk] for x in pair]
                commands.append(("HSET", key, *flat))
        else:
            raise RuntimeError(f"floor: no raw write for {key!r} of type {kind!r}")
    for i in range(0, len(strings), FLOOR_CHUNK):
        keys = strings[i : i + FLOOR_CHUNK]
        pairs = [x for pair in zip(keys, client.mget(keys), strict=True) for x in pair]
        if chunk == 1:
            commands += [("SET", pairs[j], pairs[j + 1]) for j in range(0, len(pairs), 2)]
        else:
            commands.append(("MSET", *pairs))
    return commands


def write_raw(client: Any, commands: list[tuple[Any, ...]]) -> None:
    """``commands`` on one connection, packed by hiredis and sent :data:`FLOOR_CHUNK` to a
    ``sendall``, replies read after the last (no per-command round trip or packing
    overhead beyond the protocol's)."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        for i in range(0, len(commands), FLOOR_CHUNK):
            packed = b"".join(hiredis.pack_command(c) for c in commands[i : i + FLOOR_CHUNK])
            conn.send_packed_command([packed], check_health=False)
        for _ in commands:
            conn.read_response()
    finally:
        pool.release(conn)


def write_pipeline(client: Any, commands: list[tuple[Any, ...]]) -> None:
    """``commands`` through redis-py's own pipeline (no transaction), executed every
    :data:`FLOOR_CHUNK` commands: what a Python writer of these records pays at least."""
    for i in range(0, len(commands), FLOOR_CHUNK):
        pipe = client.pipeline(transaction=False)
        for command in commands[i : i + FLOOR_CHUNK]:
            pipe.execute_command(*command)
        pipe.execute()


#: The floor the ratio is stated against: every stored entry written by its own plain
#: command, packed by hiredis, pipelined (docs/decisions.md, "The scheduling floor").
FLOOR = "same keys and values, hiredis-packed, one SET / ZADD / HSET per entry"
#: The floors measured: (entries per command, writer, row label).
FLOORS = (
    (1, write_raw, FLOOR),
    (FLOOR_CHUNK, write_raw, "same keys and values, hiredis-packed MSET / variadic ZADD, HSET"),
    (1, write_pipeline, "same keys and values, redis-py pipeline, one SET / ZADD / HSET per entry"),
)


@dataclass
class Row:
    system: str
    operation: str
    prompts: int
    seconds: list[float]
    promise: int | None = None

    @property
    def rates(self) -> list[float]:
        return [self.prompts / s for s in self.seconds]

    def cells(self) -> list[Any]:
        rates = self.rates
        verdict = ""
        if self.promise is not None:
            met = "met" if median(rates) >= self.promise else "MISSED"
            verdict = f">= {self.promise:,}/s: {met}"
        return [
            self.system,
            self.operation,
            self.prompts,
            median(rates),
            f"{min(rates):,.0f}-{max(rates):,.0f}",
            verdict,
        ]

    def as_dict(self) -> dict[str, Any]:
        rates = self.rates
        return {
            "system": self.system,
            "operation": self.operation,
            "prompts_per_run": self.prompts,
            "seconds": self.seconds,
            "rates": rates,
            "median_rate": median(rates),
            "min_rate": min(rates),
            "max_rate": max(rates),
            "promise": self.promise,
        }


HEADERS = (
    "system",
    "operation",
    "prompts per run",
    "median prompts/s",
    "min-max prompts/s",
    "SPEC §8",
)


def measure(
    prepare: Callable[[], Any],
    action: Callable[[Any], object],
    check: Callable[[], int],
    expected: int,
    *,
    runs: int,
    warmup: int = 1,
) -> list[float]:
    """Seconds of ``action(prepare())`` per run; ``prepare`` (flush, inputs) is untimed.

    After every run ``check()`` must count ``expected`` stored prompts.
    """
    out: list[float] = []
    for i in range(warmup + runs):
        state = prepare()
        gc.collect()
        start = time.perf_counter()
        action(state)
        elapsed = time.perf_counter() - start
        stored = check()
        if stored != expected:
            raise RuntimeError(f"run {i}: {stored} prompts stored, expected {expected}")
        if i >= warmup:
            out.append(elapsed)
    return out


def ours_rows(server: RedisServer, sizes: Sizes, runs: int) -> list[Row]:
    flusher = client_for(server)
    ids_key = scope().keys.ids

    def stored() -> int:
        return int(flusher.zcard(ids_key))

    def fresh(build: Callable[[int], list[dict[str, Any]]], n: int) -> Callable[[], Any]:
        def prepare() -> list[dict[str, Any]]:
            flusher.flushall()
            return build(n)

        return prepare

    def one_by_one(specs: list[dict[str, Any]]) -> None:
        schedule = api.schedule_prompt
        for spec in specs:
            schedule(**spec)

    rows = []
    progress(f"ours: schedule_prompt x {sizes.single:,}, {runs} runs")
    seconds = measure(fresh(once_specs, sizes.single), one_by_one, stored, sizes.single, runs=runs)
    rows.append(
        Row(
            "ours",
            "schedule_prompt, one-time, one call each",
            sizes.single,
            seconds,
            SINGLE_PROMISE,
        )
    )
    progress(f"ours: schedule_many of {sizes.many:,} one-time prompts, {runs} runs")
    seconds = measure(
        fresh(once_specs, sizes.many), api.schedule_many, stored, sizes.many, runs=runs
    )
    rows.append(Row("ours", "schedule_many, one-time", sizes.many, seconds, MANY_PROMISE))
    # The floor: what the last run stored, written again with raw pipelined commands.
    for chunk, writer, operation in FLOORS:
        commands = stored_commands(flusher, chunk)
        progress(f"floor: the same {sizes.many:,} records' bytes, {len(commands):,} commands")

        def empty(commands: list[tuple[Any, ...]] = commands) -> list[tuple[Any, ...]]:
            flusher.flushall()
            return commands

        def write(c: list[tuple[Any, ...]], writer: Any = writer) -> None:
            writer(flusher, c)

        seconds = measure(empty, write, stored, sizes.many, runs=runs)
        rows.append(Row("floor", operation, sizes.many, seconds))
    progress(f"ours: schedule_many of {sizes.cron:,} cron prompts, {runs} runs")
    seconds = measure(
        fresh(cron_specs, sizes.cron), api.schedule_many, stored, sizes.cron, runs=runs
    )
    rows.append(Row("ours", f"schedule_many, cron {CRON!r} {CRON_ZONE}", sizes.cron, seconds))
    progress(f"ours: schedule_many of {sizes.distinct:,} distinct cron pairs, {runs} runs")
    seconds = measure(
        fresh(distinct_cron_specs, sizes.distinct),
        api.schedule_many,
        stored,
        sizes.distinct,
        runs=runs,
    )
    rows.append(
        Row(
            "ours",
            "schedule_many, cron, every (expression, timezone) distinct",
            sizes.distinct,
            seconds,
            DISTINCT_PROMISE,
        )
    )
    return rows


def redbeat_entry(app: Any, i: int) -> Any:
    """Entry ``i``: a one-shot rrule 3600 + i s ahead, kwargs carrying the prompt."""
    when = datetime.now(UTC) + timedelta(seconds=ONCE_DELAY + i)
    return RedBeatSchedulerEntry(
        name=f"prompt-{i}",
        task="bench.deliver_prompt",
        schedule=rrule("MINUTELY", dtstart=when, count=1, app=app),
        kwargs={"prompt": PROMPT, "user_id": user(i), "platform": PLATFORM},
        app=app,
    )


def redbeat_pipelined(app: Any, n: int) -> None:
    """``save()``'s three writes for ``n`` entries, in one pipeline (not redbeat's API)."""
    schedule_key = app.redbeat_conf.schedule_key
    pipe = redbeat_redis(app).pipeline(transaction=False)
    for i in range(n):
        entry = redbeat_entry(app, i)
        definition = redbeat_peer.definition(
            entry.name, entry.task, entry.kwargs, entry.schedule,
            args=entry.args, options=entry.options, enabled=entry.enabled,
        )  # fmt: skip
        meta = redbeat_peer.meta(entry.last_run_at)
        redbeat_peer.queue_save(
            pipe, schedule_key, entry.key, definition=definition, meta=meta, score=entry.score
        )
    pipe.execute()


def redbeat_rows(server: RedisServer, sizes: Sizes, runs: int) -> list[Row]:
    app = redbeat_peer.redbeat_app(server.url)
    flusher = client_for(server)
    redbeat_entry(app, 0)  # builds app.redbeat_conf
    schedule_key = app.redbeat_conf.schedule_key

    def stored() -> int:
        return int(flusher.zcard(schedule_key))

    def fresh(n: int) -> Callable[[], int]:
        def prepare() -> int:
            flusher.flushall()
            return n

        return prepare

    def one_by_one(n: int) -> None:
        for i in range(n):
            redbeat_entry(app, i).save()

    rows = []
    progress(f"redbeat: RedBeatSchedulerEntry(...).save() x {sizes.single:,}, {runs} runs")
    seconds = measure(fresh(sizes.single), one_by_one, stored, sizes.single, runs=runs)
    rows.append(
        Row("celery-redbeat", "entry.save(), rrule count=1, one each", sizes.single, seconds)
    )
    progress(f"redbeat: hand-pipelined writes of {sizes.many:,} entries, {runs} runs")
    seconds = measure(
        fresh(sizes.many), lambda n: redbeat_pipelined(app, n), stored, sizes.many, runs=runs
    )
    rows.append(
        Row(
            "celery-redbeat",
            "save()'s writes hand-pipelined, NOT redbeat API",
            sizes.many,
            seconds,
        )
    )
    return rows


def floor_ratio(rows: list[Row]) -> float:
    """Ours ``schedule_many`` (one-time) median rate over the floor's, from one run."""
    many = next(r for r in rows if r.operation == "schedule_many, one-time")
    floor = next(r for r in rows if r.operation == FLOOR)
    return median(many.rates) / median(floor.rates)


def run(sizes: Sizes, runs: int, quick: bool) -> int:
    """The rows, printed as one table and written to ``bench/results/throughput.json``."""
    with redis_server() as server:
        scheduled_prompts.configure(redis_url=server.url, max_prompts_per_user=None)
        try:
            rows = ours_rows(server, sizes, runs) + redbeat_rows(server, sizes, runs)
            info = machine(client_for(server))
        finally:
            scheduled_prompts.configure()
    title = f"Scheduling throughput (median of {runs} runs, 200-char prompts, 1,000 users)"
    print(table(title, HEADERS, [r.cells() for r in rows]))
    ratio = floor_ratio(rows)
    verdict = "met" if ratio >= FLOOR_PROMISE else "MISSED"
    print(
        f"\n- schedule_many, one-time / floor (same run, medians): {ratio:.2f} "
        f"(issue 18: >= {FLOOR_PROMISE}: {verdict})"
    )
    path = write_results(
        "throughput-quick" if quick else "throughput",
        {
            "benchmark": "throughput",
            "quick": quick,
            "runs": runs,
            "warmup_runs": 1,
            "state_between_runs": "FLUSHALL before every run: each run starts empty",
            "prompt_chars": len(PROMPT),
            "users": USERS,
            "machine": info,
            "rows": [r.as_dict() for r in rows],
            "floor_ratio": ratio,
        },
    )
    progress(f"wrote {path}")
    return 0
