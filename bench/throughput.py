"""Scheduling throughput: ``python -m bench.throughput [--quick] [--profile] [--runs N]``.
``schedule_prompt`` and ``schedule_many`` against redbeat; ``--profile``: where time goes.
Method and figures: docs/performance.md, "Scheduling throughput" and "Methods"."""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from pyinstrument import Profiler
from pyinstrument.frame import Frame
from redbeat.schedulers import RedBeatSchedulerEntry
from redbeat.schedulers import get_redis as redbeat_redis
from redbeat.schedules import rrule

import scheduled_prompts
from scheduled_prompts import api, ids, store, validation, verbs
from scheduled_prompts._time import utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.models import ScheduledPrompt
from scheduled_prompts.schedules import first_cron_run, parse_cron
from scheduled_prompts.settings import Settings, get_settings
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
PROFILE_PROMPTS = 20_000
PROFILE_INTERVAL = 0.0005
TREE_LINES = 70
SINGLE_PROMISE = 1_000
MANY_PROMISE = 20_000


@dataclass(frozen=True)
class Sizes:
    single: int
    many: int
    cron: int


FULL = Sizes(single=5_000, many=20_000, cron=5_000)
QUICK = Sizes(single=1_000, many=5_000, cron=1_000)


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


# --------------------------------------------------------------------------- throughput


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
    progress(f"ours: schedule_many of {sizes.cron:,} cron prompts, {runs} runs")
    seconds = measure(
        fresh(cron_specs, sizes.cron), api.schedule_many, stored, sizes.cron, runs=runs
    )
    rows.append(Row("ours", f"schedule_many, cron {CRON!r} {CRON_ZONE}", sizes.cron, seconds))
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
    client = redbeat_redis(app)
    schedule_key = app.redbeat_conf.schedule_key
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        entry = redbeat_entry(app, i)
        stored = redbeat_peer.definition(
            entry.name, entry.task, entry.kwargs, entry.schedule,
            args=entry.args, options=entry.options, enabled=entry.enabled,
        )  # fmt: skip
        pipe.hset(entry.key, "definition", stored)
        pipe.hsetnx(entry.key, "meta", redbeat_peer.meta(entry.last_run_at))
        pipe.zadd(schedule_key, {entry.key: entry.score})
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


def throughput(sizes: Sizes, runs: int, quick: bool) -> int:
    with redis_server() as server:
        scheduled_prompts.configure(redis_url=server.url, max_prompts_per_user=None)
        try:
            rows = ours_rows(server, sizes, runs) + redbeat_rows(server, sizes, runs)
            info = machine(client_for(server))
        finally:
            scheduled_prompts.configure()
    title = f"Scheduling throughput (median of {runs} runs, 200-char prompts, 1,000 users)"
    print(table(title, HEADERS, [r.cells() for r in rows]))
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
        },
    )
    progress(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------ profile

Matcher = Callable[[Frame], bool]


def _in(frame: Frame, suffix: str, *functions: str) -> bool:
    path = (frame.file_path or "").replace("\\", "/")
    return path.endswith(suffix) and (not functions or frame.function in functions)


def _is_record_init(frame: Frame) -> bool:
    if _in(frame, "scheduled_prompts/models.py", "__post_init__"):
        return True
    parent = frame.parent
    return frame.function == "__init__" and parent is not None and parent.function == "build_prompt"


def _is_reply(frame: Frame) -> bool:
    path = (frame.file_path or "").replace("\\", "/")
    return "/redis/" in path and frame.function in ("parse_response", "read_response")


#: Phases of the profiled call: a sample's self time goes to the innermost frame of its
#: stack that one of these matches; if none does, to the innermost GENERIC match.
SPECIFIC: tuple[tuple[str, Matcher], ...] = (
    ("id generation (new_prompt_ids)", lambda f: _in(f, "ids.py", "new_prompt_ids")),
    ("ScheduledPrompt construction", _is_record_init),
    (
        "schedule resolution (resolve_schedule)",
        lambda f: _in(f, "validation.py", "resolve_schedule"),
    ),
    (
        "field checks (text, grace, metadata)",
        lambda f: _in(f, "validation.py", "check_text", "check_grace", "check_metadata"),
    ),
    (
        "build_from_spec / build_prompt (rest)",
        lambda f: _in(f, "validation.py", "build_from_spec", "build_prompt"),
    ),
    ("to_json", lambda f: _in(f, "scheduled_prompts/models.py", "to_json")),
    (
        "create_op arg building (excl. to_json)",
        lambda f: _in(f, "scheduled_prompts/store.py", "create_op"),
    ),
    (
        "redis-py command packing (pack_commands)",
        lambda f: _in(f, "redis/connection.py", "pack", "pack_commands"),
    ),
    (
        "socket send (sendall: blocks while Redis works)",
        lambda f: _in(f, "redis/connection.py", "send_packed_command"),
    ),
    ("waiting for and reading replies (recv, parse)", _is_reply),
)
GENERIC: tuple[tuple[str, Matcher], ...] = (
    ("redis-py, other", lambda f: "/redis/" in (f.file_path or "").replace("\\", "/")),
    (
        "schedule_many loop, promote_now, plan driver, Stream",
        lambda f: "scheduled_prompts/" in (f.file_path or "").replace("\\", "/"),
    ),
)


def _frames(frame: Frame) -> Iterator[Frame]:
    yield frame
    for child in frame.children:
        if not child.is_synthetic:
            yield from _frames(child)


def _category(frame: Frame) -> str:
    for categories in (SPECIFIC, GENERIC):
        node: Frame | None = frame
        while node is not None:
            for name, matches in categories:
                if matches(node):
                    return name
            node = node.parent
    return "other"


def attribute(root: Frame) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Self time per phase (see SPECIFIC), and self time per frame, costliest first."""
    by_phase: dict[str, float] = {name: 0.0 for name, _ in (*SPECIFIC, *GENERIC)}
    by_phase["other"] = 0.0
    by_frame: dict[str, float] = {}
    for frame in _frames(root):
        own = frame.total_self_time
        if own <= 0:
            continue
        by_phase[_category(frame)] += own
        where = frame.file_path_short or "<built-in>"
        label = f"{frame.function}  {where}:{frame.line_no or ''}".rstrip(":")
        by_frame[label] = by_frame.get(label, 0.0) + own
    top = sorted(by_frame.items(), key=lambda kv: kv[1], reverse=True)
    return by_phase, top


@dataclass
class Task:
    """One phase measurement: ``fn`` timed; ``before``/``after`` untimed around it."""

    name: str
    fn: Callable[[], object]
    before: Callable[[], object] | None = None
    after: Callable[[], object] | None = None
    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)


def run_rounds(tasks: Sequence[Task], times: int) -> None:
    """``times`` rounds, each task once per round: every phase sees the same load."""
    for _ in range(times):
        for task in tasks:
            if task.before is not None:
                task.before()
            gc.collect()
            start = time.perf_counter()
            task.fn()
            task.seconds.append(time.perf_counter() - start)
            if task.after is not None:
                task.after()


_CTOR_FIELDS = (
    "id",
    "prompt",
    "user_id",
    "platform",
    "channel_id",
    "kind",
    "status",
    "created_at",
    "updated_at",
    "schedule_time",
    "cron_expression",
    "timezone",
    "next_run_at",
    "max_runs",
    "start_at",
    "end_at",
    "misfire_grace_seconds",
    "metadata",
)


def _linear_pack(command: Sequence[Any]) -> bytes:
    """RESP for one command with a single join (what a non-quadratic packer costs)."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


@dataclass
class Bench:
    """What the phase measurements share: the specs, the clients, the clock."""

    specs: list[dict[str, Any]]
    settings: Settings
    ctx: store.Scope
    client: redis.Redis
    flusher: redis.Redis
    now: datetime

    def flush(self) -> None:
        self.flusher.flushall()

    def check(self) -> None:
        stored = int(self.flusher.zcard(self.ctx.keys.ids))
        if stored != len(self.specs):
            raise RuntimeError(f"{stored} prompts stored, expected {len(self.specs)}")


def without_gc(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with the cyclic garbage collector off."""

    def run() -> object:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn()
        finally:
            if was_enabled:
                gc.enable()

    return run


def _validation_tasks(b: Bench) -> list[Task]:
    specs, now, settings = b.specs, b.now, b.settings
    limit = settings.max_prompt_chars
    names = validation._MAX_NAME_CHARS
    built = [validation.build_from_spec(s, now, settings)[0] for s in specs]
    kwargs = [{name: getattr(r, name) for name in _CTOR_FIELDS} for r in built]

    def checks() -> None:
        check_text = validation.check_text
        for s in specs:
            check_text("prompt", s["prompt"], limit=limit)
            check_text("user_id", s["user_id"], limit=names)
            check_text("platform", s["platform"], limit=names)
            check_text("channel_id", s.get("channel_id"), limit=names, optional=True)
            validation.check_grace(s.get("misfire_grace_seconds"))
            validation.check_metadata(s.get("metadata"), settings)

    def resolve() -> None:
        for s in specs:
            validation.resolve_schedule(validation.ScheduleRequest.of(s), now)

    def build() -> object:
        return [validation.build_from_spec(s, now, settings) for s in specs]

    return [
        Task("build", build),
        Task("build_no_gc", without_gc(build)),
        Task("ids", lambda: ids.new_prompt_ids(len(specs))),
        Task("checks", checks),
        Task("resolve", resolve),
        Task("construct", lambda: [ScheduledPrompt(**kw) for kw in kwargs]),
        Task("to_json", lambda: [r.to_json() for r in built]),
    ]


def _create_ops(b: Bench, built: list[ScheduledPrompt]) -> list[store.Eval]:
    """The CREATE script calls ``schedule_many`` streams, one per batch."""
    batch = verbs.BATCH
    return [
        store.create_op(b.ctx.keys, built[i : i + batch], None) for i in range(0, len(built), batch)
    ]


def _redis_tasks(b: Bench, ops: list[store.Eval], conn: Any, extra: dict[str, Any]) -> list[Task]:
    """Packing (redis-py's and the what-ifs), the raw round trip, Stream.run."""
    # Exactly what store.Stream.run sends: SCRIPT LOAD, then one EVALSHA per batch.
    commands: list[tuple[Any, ...]] = [("SCRIPT LOAD", store.CREATE.source)]
    commands += [("EVALSHA", op.script.sha, len(op.keys), *op.keys, *op.args) for op in ops]
    packed = conn.pack_commands(commands)
    extra["payload_bytes"] = sum(len(chunk) for chunk in packed)
    extra["server_cpu_s"] = []
    extra["evalsha_s"] = []
    replies: list[Any] = []
    cpu0: list[float] = []

    def before_trip() -> None:
        b.flush()
        b.flusher.config_resetstat()
        cpu0[:] = [_cpu(b.flusher)]

    def trip() -> None:
        conn.send_packed_command(packed, check_health=False)
        replies[:] = [conn.read_response() for _ in commands]

    def after_trip() -> None:
        extra["server_cpu_s"].append(_cpu(b.flusher) - cpu0[0])
        stats = b.flusher.info("commandstats")
        extra["evalsha_s"].append(float(stats.get("cmdstat_evalsha", {}).get("usec", 0)) / 1e6)
        if any(list(r) != ["ok"] for r in replies[1:]):
            raise RuntimeError(f"the raw round trip was refused: {replies[1]!r}")
        b.check()

    tasks = [
        Task("pack", lambda: conn.pack_commands(commands)),
        Task("pack_linear", lambda: [_linear_pack(c) for c in commands]),
        Task("trip", trip, before_trip, after_trip),
        Task("stream", lambda: store.Stream(iter(ops)).run(b.client), b.flush, b.check),
    ]
    try:
        import hiredis  # type: ignore[import-not-found]  # noqa: PLC0415

        tasks.append(Task("pack_hiredis", lambda: [hiredis.pack_command(c) for c in commands]))
    except ImportError:
        pass
    return tasks


@dataclass
class Phases:
    """Seconds per phase of ``schedule_many`` for ``n`` prompts (best of the rounds)."""

    n: int
    rows: list[tuple[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def time_phases(server: RedisServer, times: int) -> Phases:
    """Each phase of ``schedule_many(20,000 one-time specs)`` timed by itself."""
    specs = once_specs(PROFILE_PROMPTS)
    settings = get_settings()
    now = utcnow()
    b = Bench(specs, settings, scope(), get_redis(), client_for(server), now)
    built = [validation.build_from_spec(s, now, settings)[0] for s in specs]
    ops = _create_ops(b, built)
    extra: dict[str, Any] = {}
    conn = b.client.connection_pool.get_connection()
    try:
        tasks = [
            Task("total", lambda: api.schedule_many(specs), b.flush, b.check),
            Task("total_no_gc", without_gc(lambda: api.schedule_many(specs)), b.flush, b.check),
            *_validation_tasks(b),
            Task("create_ops", lambda: _create_ops(b, built)),
            *_redis_tasks(b, ops, conn, extra),
        ]
        run_rounds(tasks, times)
    finally:
        b.client.connection_pool.release(conn)
    s = {t.name: t.best for t in tasks}
    build, create_ops, stream = s["build"], s["create_ops"], s["stream"]
    parts = s["ids"] + s["checks"] + s["resolve"] + s["construct"]
    rows = [
        ("end-to-end api.schedule_many", s["total"]),
        ("1. validation: validation.build_from_spec", build),
        ("   1a. id generation (new_prompt_ids)", s["ids"]),
        ("   1b. field checks (check_text x4, grace, metadata)", s["checks"]),
        ("   1c. schedule resolution (ScheduleRequest.of, resolve_schedule)", s["resolve"]),
        ("   1d. ScheduledPrompt(...) construction", s["construct"]),
        ("   1e. cyclic GC while the records pile up (gc on - off)", build - s["build_no_gc"]),
        ("   1f. rest: glue, and 1a-1d dearer interleaved than alone", s["build_no_gc"] - parts),
        ("2. ScheduledPrompt.to_json", s["to_json"]),
        ("3. create_op arg building (excl. to_json)", create_ops - s["to_json"]),
        ("4. redis-py Connection.pack_commands", s["pack"]),
        ("5. Redis round trip: send, Redis work, read replies", s["trip"]),
        ("   5a. redis-server CPU (INFO cpu)", min(extra["server_cpu_s"])),
        ("   5b. of which EVALSHA execution (commandstats)", min(extra["evalsha_s"])),
        ("6. store.Stream beyond the raw trip (packs, sends each alone)", stream - s["trip"]),
        ("7. schedule_many loop, promote_now, driver", s["total"] - build - create_ops - stream),
    ]
    extra.update(
        {
            "end_to_end_gc_disabled": s["total_no_gc"],
            "pack_linear_python": s["pack_linear"],
            "pack_hiredis": s.get("pack_hiredis"),
            "evalsha_calls": len(ops),
            "records_per_evalsha": verbs.BATCH,
            "store_stream_run": stream,
            "all_seconds": {t.name: t.seconds for t in tasks},
        }
    )
    return Phases(len(specs), rows, extra)


def time_cron_validation(times: int, n: int = 2_000) -> list[tuple[str, float]]:
    """Seconds per cron spec in ``build_from_spec`` and in its two cron steps."""
    specs = cron_specs(n)
    settings = get_settings()
    now = utcnow()
    parsed = [parse_cron(s["cron"], s["timezone"]) for s in specs]
    start_at = specs[0]["start_at"]
    tasks = [
        Task("build", lambda: [validation.build_from_spec(s, now, settings) for s in specs]),
        Task("parse", lambda: [parse_cron(s["cron"], s["timezone"]) for s in specs]),
        Task("first", lambda: [first_cron_run(c, now, start_at=start_at) for c in parsed]),
    ]
    run_rounds(tasks, times)
    build, parse, first = (t.best / n for t in tasks)
    return [
        ("validation.build_from_spec, cron spec", build),
        ("   schedules.parse_cron", parse),
        ("   schedules.first_cron_run (from start_at)", first),
        ("   rest", build - parse - first),
    ]


def profile_once(server: RedisServer) -> tuple[Profiler, Any]:
    flusher = client_for(server)
    specs = once_specs(PROFILE_PROMPTS)
    flusher.flushall()
    api.schedule_many(once_specs(2_000))  # warm: connection, script cache, imports
    flusher.flushall()
    gc.collect()
    profiler = Profiler(interval=PROFILE_INTERVAL)
    profiler.start()
    api.schedule_many(specs)
    session = profiler.stop()
    return profiler, session


def print_profile(profiler: Profiler, session: Any, unprofiled: float) -> dict[str, Any]:
    """The trimmed pyinstrument tree, self time per phase, the costliest frames."""
    n = PROFILE_PROMPTS
    root = session.root_frame()
    if root is None:
        raise RuntimeError("pyinstrument recorded no samples")
    by_phase, top = attribute(root)
    sampled = root.time
    text = profiler.output_text(
        unicode=False,
        color=False,
        show_all=False,
        time="percent_of_total",
        processor_options={"filter_threshold": 0.02},
    )
    lines = text.splitlines()
    shown = [*lines[:TREE_LINES], "... (trimmed)"] if len(lines) > TREE_LINES else lines
    print(f"### pyinstrument, one schedule_many of {n:,} one-time prompts (frames >= 2 %)\n")
    print(
        f"Profiled: {sampled:.2f} s; unprofiled (best end-to-end below): {unprofiled:.2f} s. "
        "pyinstrument's hook runs on every call, so call-heavy code is over-represented "
        "here; the phase timings further down are unprofiled.\n"
    )
    print("```\n" + "\n".join(shown) + "\n```\n")
    rows: list[list[Any]] = [
        [name, secs, 100 * secs / sampled, 1e6 * secs / n]
        for name, secs in sorted(by_phase.items(), key=lambda kv: kv[1], reverse=True)
        if secs > 0
    ]
    rows.append(["total (sampled wall time)", sampled, 100.0, 1e6 * sampled / n])
    title = f"Self time by phase, innermost known frame ({session.sample_count:,} samples)"
    print(table(title, ("phase", "s", "% of call", "µs per prompt"), rows) + "\n")
    top_rows = [[label, secs, 100 * secs / sampled] for label, secs in top[:15]]
    print(table("Costliest frames by self time", ("frame", "s", "% of call"), top_rows) + "\n")
    return {
        "interval_s": PROFILE_INTERVAL,
        "samples": session.sample_count,
        "wall_s": sampled,
        "by_phase_s": by_phase,
        "top_frames_self_s": top[:30],
        "text": text,
    }


def print_phases(phases: Phases, times: int) -> None:
    n = phases.n
    total = phases.rows[0][1]

    def line(name: str, secs: float) -> list[Any]:
        return [name, secs, 100 * secs / total, 1e6 * secs / n]

    rows = [line(name, secs) for name, secs in phases.rows]
    extra = phases.extra
    rows.append(line("what-if: end-to-end with gc disabled", extra["end_to_end_gc_disabled"]))
    rows.append(line("what-if: pack with a linear pure-Python packer", extra["pack_linear_python"]))
    if extra["pack_hiredis"] is None:
        rows.append(["what-if: pack with hiredis.pack_command", "hiredis not installed", "", ""])
    else:
        rows.append(line("what-if: pack with hiredis.pack_command", extra["pack_hiredis"]))
    rows.append(line(f"budget at {MANY_PROMISE:,}/s", n / MANY_PROMISE))
    title = (
        f"Phases of schedule_many({n:,}) timed one by one (best of {times} interleaved "
        f"rounds); {extra['evalsha_calls']} EVALSHA of {extra['records_per_evalsha']:,} "
        f"records, {extra['payload_bytes'] / 1e6:.1f} MB sent"
    )
    print(table(title, ("phase", f"s per {n:,}", "% of end-to-end", "µs per prompt"), rows))


def profile(times: int, quick: bool) -> int:
    with redis_server() as server:
        scheduled_prompts.configure(redis_url=server.url, max_prompts_per_user=None)
        try:
            progress(f"pyinstrument around one schedule_many of {PROFILE_PROMPTS:,}")
            profiler, session = profile_once(server)
            progress(f"phases of schedule_many({PROFILE_PROMPTS:,}), {times} rounds")
            phases = time_phases(server, times)
            progress("validation of cron specs")
            cron = time_cron_validation(times)
            info = machine(client_for(server))
        finally:
            scheduled_prompts.configure()
    sampled = print_profile(profiler, session, phases.rows[0][1])
    print_phases(phases, times)
    print()
    cron_rows = [[name, 1e6 * secs, 1 / secs] for name, secs in cron]
    title = f"Cron specs ({CRON!r} in {CRON_ZONE}): validation per prompt (best of {times})"
    print(table(title, ("step", "µs per prompt", "prompts/s if alone"), cron_rows))
    path = write_results(
        "throughput-profile-quick" if quick else "throughput-profile",
        {
            "benchmark": "throughput --profile",
            "prompts": phases.n,
            "rounds": times,
            "statistic": "best of the interleaved rounds",
            "machine": info,
            "pyinstrument": sampled,
            "phases_s": dict(phases.rows),
            "extra": phases.extra,
            "cron_validation_s_per_prompt": dict(cron),
        },
    )
    progress(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Scheduling throughput of ours (schedule_prompt, schedule_many) and redbeat.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one schedule_many of 20,000 and time its phases (no throughput table)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="timed runs per row, or rounds of the phase timings (default 5; --profile --quick: 3)",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.profile:
        return profile(args.runs or (3 if args.quick else 5), args.quick)
    return throughput(QUICK if args.quick else FULL, args.runs or 5, args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
