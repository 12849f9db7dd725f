"""The phases of one ``schedule_many`` timed one by one, on the path it runs: validation
(ids in one go, cyclic GC paused), ``store.create_op`` (CREATE), ``store.Stream``.
Method and figures: docs/performance.md, "Scheduling throughput" and "Methods"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import hiredis
import redis

from scheduled_prompts import api, ids, store, validation
from scheduled_prompts._time import utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.models import ScheduledPrompt, make_record
from scheduled_prompts.schedules import first_cron_run, parse_cron
from scheduled_prompts.settings import Settings, get_settings
from support.redis_server import RedisServer

from .common import client_for, table
from .profiling import Task, run_rounds, without_gc
from .throughput_rows import MANY_PROMISE, cron_specs, once_specs

#: The fields ``validation.build_prompt`` hands to ``make_record``.
_BUILT_FIELDS = (
    "id", "prompt", "user_id", "platform", "channel_id", "kind", "status", "created_at",
    "updated_at", "schedule_time", "cron_expression", "timezone", "next_run_at", "max_runs",
    "start_at", "end_at", "misfire_grace_seconds", "metadata",
)  # fmt: skip


def validate(
    specs: Sequence[Mapping[str, Any]], now: datetime, settings: Settings
) -> list[ScheduledPrompt]:
    """What ``schedule_many`` does before it writes, for specs without ``prompt_id``: the
    ids in one call, then ``build_from_spec`` per spec (it pauses the cyclic GC around
    this; the caller decides)."""
    fresh = iter(ids.new_prompt_ids(len(specs)))
    return [validation.build_from_spec(s, now, settings, next(fresh))[0] for s in specs]


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


def _validation_tasks(b: Bench, built: list[ScheduledPrompt]) -> list[Task]:
    specs, now, settings = b.specs, b.now, b.settings
    limit = settings.max_prompt_chars
    names = validation._MAX_NAME_CHARS
    fields = [{name: getattr(r, name) for name in _BUILT_FIELDS} for r in built]

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

    return [
        Task("validate", without_gc(lambda: validate(specs, now, settings))),
        Task("validate_gc_on", lambda: validate(specs, now, settings)),
        Task("ids", lambda: ids.new_prompt_ids(len(specs))),
        Task("checks", checks),
        Task("resolve", resolve),
        Task("construct", lambda: [make_record(f) for f in fields]),
        Task("to_json", lambda: [r.to_json() for r in built]),
    ]


def _create_ops(b: Bench, built: list[ScheduledPrompt]) -> list[store.Eval]:
    """The CREATE script calls ``schedule_many`` streams, one per batch."""
    batch = store.WRITE_LOT
    return [
        store.create_op(b.ctx.keys, built[i : i + batch], None) for i in range(0, len(built), batch)
    ]


def _redis_tasks(b: Bench, ops: list[store.Eval], conn: Any, extra: dict[str, Any]) -> list[Task]:
    """Packing (hiredis's, as Stream packs, and the what-ifs), the raw round trip,
    Stream.run."""
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

    return [
        Task("pack", lambda: [hiredis.pack_command(c) for c in commands]),
        # A connection of redis-py's own (never connected): its default packer.
        Task("pack_redis_py", lambda: redis.Connection().pack_commands(commands)),
        Task("pack_linear", lambda: [_linear_pack(c) for c in commands]),
        Task("trip", trip, before_trip, after_trip),
        Task("stream", lambda: store.Stream(iter(ops)).run(b.client), b.flush, b.check),
    ]


@dataclass
class Phases:
    """Seconds per phase of ``schedule_many`` for ``n`` prompts (best of the rounds)."""

    n: int
    rows: list[tuple[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def time_phases(server: RedisServer, n: int, times: int) -> Phases:
    """Each phase of ``schedule_many(n one-time specs)`` timed by itself."""
    specs = once_specs(n)
    settings = get_settings()
    now = utcnow()
    b = Bench(specs, settings, scope(), get_redis(), client_for(server), now)
    built = validate(specs, now, settings)
    ops = _create_ops(b, built)
    extra: dict[str, Any] = {}
    conn = b.client.connection_pool.get_connection()
    try:
        tasks = [
            Task("total", lambda: api.schedule_many(specs), b.flush, b.check),
            Task("total_no_gc", without_gc(lambda: api.schedule_many(specs)), b.flush, b.check),
            *_validation_tasks(b, built),
            Task("create_ops", lambda: _create_ops(b, built)),
            *_redis_tasks(b, ops, conn, extra),
        ]
        run_rounds(tasks, times)
    finally:
        b.client.connection_pool.release(conn)
    s = {t.name: t.best for t in tasks}
    valid, create_ops, stream = s["validate"], s["create_ops"], s["stream"]
    parts = s["ids"] + s["checks"] + s["resolve"] + s["construct"]
    rows = [
        ("end-to-end api.schedule_many", s["total"]),
        ("1. validation, as schedule_many runs it (cyclic GC paused)", valid),
        ("   1a. id generation (new_prompt_ids, one call)", s["ids"]),
        ("   1b. field checks (check_text x4, grace, metadata)", s["checks"]),
        ("   1c. schedule resolution (ScheduleRequest.of, resolve_schedule)", s["resolve"]),
        ("   1d. record construction (make_record)", s["construct"]),
        ("   1e. rest: glue, and 1a-1d dearer interleaved than alone", valid - parts),
        ("2. ScheduledPrompt.to_json", s["to_json"]),
        ("3. create_op arg building (excl. to_json)", create_ops - s["to_json"]),
        ("4. command packing (hiredis.pack_command, as store.Stream packs)", s["pack"]),
        ("5. Redis round trip: send, Redis work, read replies", s["trip"]),
        ("   5a. redis-server CPU (INFO cpu)", min(extra["server_cpu_s"])),
        ("   5b. of which EVALSHA execution (commandstats)", min(extra["evalsha_s"])),
        ("6. store.Stream beyond the raw trip (packs, sends each alone)", stream - s["trip"]),
        ("7. schedule_many loop, promote_now, driver", s["total"] - valid - create_ops - stream),
    ]
    extra.update(
        {
            "validation_gc_on": s["validate_gc_on"],
            "end_to_end_gc_disabled": s["total_no_gc"],
            "pack_linear_python": s["pack_linear"],
            "pack_redis_py": s["pack_redis_py"],
            "evalsha_calls": len(ops),
            "records_per_evalsha": store.WRITE_LOT,
            "store_stream_run": stream,
            "all_seconds": {t.name: t.seconds for t in tasks},
        }
    )
    return Phases(len(specs), rows, extra)


def time_cron_validation(times: int, n: int = 2_000) -> list[tuple[str, float]]:
    """Seconds per cron spec of the validation and of its two cron steps."""
    specs = cron_specs(n)
    settings = get_settings()
    now = utcnow()
    parsed = [parse_cron(s["cron"], s["timezone"]) for s in specs]
    start_at = specs[0]["start_at"]
    tasks = [
        Task("validate", without_gc(lambda: validate(specs, now, settings))),
        Task("parse", lambda: [parse_cron(s["cron"], s["timezone"]) for s in specs]),
        Task("first", lambda: [first_cron_run(c, now, start_at=start_at) for c in parsed]),
    ]
    run_rounds(tasks, times)
    valid, parse, first = (t.best / n for t in tasks)
    return [
        ("validation, cron spec (as schedule_many runs it)", valid),
        ("   schedules.parse_cron", parse),
        ("   schedules.first_cron_run (from start_at)", first),
        ("   rest", valid - parse - first),
    ]


def print_phases(phases: Phases, times: int) -> None:
    n = phases.n
    total = phases.rows[0][1]

    def line(name: str, secs: float) -> list[Any]:
        return [name, secs, 100 * secs / total, 1e6 * secs / n]

    rows = [line(name, secs) for name, secs in phases.rows]
    extra = phases.extra
    rows.append(line("what-if: validation with the cyclic GC running", extra["validation_gc_on"]))
    rows.append(line("what-if: end-to-end with gc disabled", extra["end_to_end_gc_disabled"]))
    rows.append(line("what-if: pack with a linear pure-Python packer", extra["pack_linear_python"]))
    rows.append(line("what-if: pack with redis-py's own packer", extra["pack_redis_py"]))
    rows.append(line(f"budget at {MANY_PROMISE:,}/s", n / MANY_PROMISE))
    title = (
        f"Phases of schedule_many({n:,}) timed one by one (best of {times} interleaved "
        f"rounds); {extra['evalsha_calls']} EVALSHA of {extra['records_per_evalsha']:,} "
        f"records, {extra['payload_bytes'] / 1e6:.1f} MB sent"
    )
    print(table(title, ("phase", f"s per {n:,}", "% of end-to-end", "µs per prompt"), rows))
