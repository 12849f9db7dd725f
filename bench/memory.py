"""Memory: ``python -m bench.memory [--quick]``.
Redis bytes per stored prompt (ours, seed, redbeat) and worker RSS against stored prompts.
Method and figures: docs/performance.md, "Memory" and "Methods"."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

import scheduled_prompts
from bench import baseline
from bench.common import (
    client_for,
    machine,
    progress,
    redis_server,
    table,
    used_memory,
    write_results,
)
from bench.redbeat_peer import redbeat_app
from bench.tick import RedBeatLoader, Workload, load_ours, load_seed
from scheduled_prompts import api, history
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.connection import scope
from scheduled_prompts.ids import new_prompt_ids
from scheduled_prompts.metrics import Observation
from support.cluster import REPO, Process
from support.recording_runner import read_records

BYTES_N = 100_000
QUICK_BYTES_N = 10_000
RSS_SIZES = (1_000, 1_000_000)
QUICK_RSS_SIZES = (1_000, 100_000)
RECORD_SAMPLE = 2_000
PROMISE_BYTES = 1_024
TICKS = 5
SOON = 10  # prompts due a few seconds after the worker starts: it must deliver them
READINGS = 3


# --- part 1: Redis bytes per prompt ----------------------------------------------------


def usage(client: redis.Redis, keys: list[str]) -> int:
    """Sum of ``MEMORY USAGE key SAMPLES 0`` (exact, every element counted)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(int(v or 0) for v in pipe.execute())


def sampled_usage(client: redis.Redis, keys: list[str], count: int) -> float:
    """``count`` times the mean ``MEMORY USAGE`` of ``keys`` (a random sample)."""
    return usage(client, keys) / len(keys) * count


def ours_breakdown(client: redis.Redis, n: int, delta: int) -> list[dict[str, Any]]:
    keys = scope().keys
    ids = [i.decode() for i in client.zrandmember(keys.ids, RECORD_SAMPLE)]
    users = [keys.user(f"user-{u:05d}") for u in range(min(n, 5_000))]
    parts = [
        ("records (string)", n, sampled_usage(client, [keys.prompt(i) for i in ids], n)),
        (f"{keys.ids} (zset)", 1, usage(client, [keys.ids])),
        (f"{keys.due} (zset)", 1, usage(client, [keys.due])),
        (f"{keys.prefix}:user:* (zsets)", len(users), usage(client, users)),
        (f"{keys.open_counts} (hash)", 1, usage(client, [keys.open_counts])),
        (f"{keys.counts} (hash)", 1, usage(client, [keys.counts])),
        (f"{keys.log} (stream, full)", 1, usage(client, [keys.log])),
        (f"{keys.failures} (stream, full)", 1, usage(client, [keys.failures])),
    ]
    counted = sum(p[2] for p in parts)
    parts.append(("other (keyspace tables, scripts)", 0, delta - counted))
    return [
        {"part": name, "keys": count, "bytes": round(size), "bytes_per_prompt": size / n,
         "share": size / delta}
        for name, count, size in parts
    ]  # fmt: skip


def redbeat_breakdown(
    client: redis.Redis, loader: RedBeatLoader, n: int, delta: int
) -> list[dict[str, Any]]:
    sample = [k.decode() for k in client.zrandmember(loader.schedule_key, RECORD_SAMPLE)]
    parts = [
        ("entry hashes", n, sampled_usage(client, sample, n)),
        (f"{loader.schedule_key} (zset)", 1, usage(client, [loader.schedule_key])),
    ]
    parts.append(("other", 0, delta - sum(p[2] for p in parts)))
    return [{"part": p, "keys": c, "bytes": round(s), "bytes_per_prompt": s / n}
            for p, c, s in parts]  # fmt: skip


def measure_bytes(server_url: str, client: redis.Redis, n: int) -> list[dict[str, Any]]:
    wl = Workload(utcnow(), n)
    rows: list[dict[str, Any]] = []
    loader = RedBeatLoader(redbeat_app(server_url), wl.base)
    systems = (
        ("ours (delivery log full)", lambda: (load_ours(wl), fill_logs(client))),
        ("seed (one JSON key per record)", lambda: load_seed(client, wl)),
        ("celery-redbeat entries", lambda: loader.load(client, wl)),
    )
    for name, load in systems:
        client.flushall()
        client.script_flush()
        before = used_memory(client)
        load()
        delta = used_memory(client) - before
        row: dict[str, Any] = {"system": name, "stored": n, "used_memory_delta": delta,
                               "bytes_per_prompt": delta / n}  # fmt: skip
        if name.startswith("ours"):
            row["breakdown"] = ours_breakdown(client, n, delta)
        elif name.startswith("celery-redbeat"):
            row["breakdown"] = redbeat_breakdown(client, loader, n, delta)
        else:
            sample = [baseline.key(r) for r in _seed_ids(client)]
            row["record_bytes"] = sampled_usage(client, sample, 1)
        rows.append(row)
        progress(f"{name}: {delta / n:,.0f} bytes per prompt")
    client.flushall()
    return rows


def fill_logs(client: redis.Redis) -> None:
    """The delivery logs at their default lengths, as after a long run: entries as the
    commit writes them (failures with a 200-character error)."""
    settings, keys = scheduled_prompts.get_settings(), scope().keys
    for key, length, error in (
        (keys.log, settings.delivery_log_length, None),
        (keys.failures, settings.failure_log_length, "DeliveryError: " + "x" * 185),
    ):
        pipe = client.pipeline(transaction=False)
        for i in range(length):
            step = Observation(
                "failed" if error else "delivered", "discord", "once", 0.012, 0.35,
                new_prompt_ids(1)[0], f"user-{i % 5000:05d}", to_ms(utcnow()), error=error,
            )  # fmt: skip
            entry, _ = history.encode(step)
            pipe.xadd(key, {"e": entry}, maxlen=length, approximate=True)
        pipe.execute()


def _seed_ids(client: redis.Redis) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for _ in range(RECORD_SAMPLE):
        pipe.randomkey()
    return [k.decode().removeprefix(baseline.PREFIX) for k in pipe.execute() if k]


def render_bytes(rows: list[dict[str, Any]]) -> str:
    n = rows[0]["stored"]
    head = table(
        f"Redis memory per stored prompt (200-char prompt, {n:,} stored)",
        ["system", "used_memory growth MB", "bytes / prompt"],
        [[r["system"], r["used_memory_delta"] / 2**20, r["bytes_per_prompt"]] for r in rows],
    )
    ours = rows[0]
    parts = table(
        "Ours, by key type (MEMORY USAGE; records sampled)",
        ["part", "keys", "MB", "bytes / prompt", "share"],
        [[p["part"], p["keys"], p["bytes"] / 2**20, p["bytes_per_prompt"],
          f"{100 * p['share']:.0f}%"] for p in ours["breakdown"]],
    )  # fmt: skip
    verdict = "met" if ours["bytes_per_prompt"] <= PROMISE_BYTES else "NOT met"
    return f"{head}\n\n{parts}\n\npromise <= 1 KB per stored prompt: {verdict}"


# --- part 2: worker RSS ----------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (read from ``/proc/*/stat``)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the parent pid is the 2nd field after ')'.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        out += kids
        todo += kids
    return out


def worker_env(url: str, queue: str, records: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULED_PROMPTS_")}
    env.update(
        SCHEDULED_PROMPTS_REDIS_URL=url,
        SCHEDULED_PROMPTS_QUEUE=queue,
        SCHEDULED_PROMPTS_TICK_SECONDS="1",
        SCHEDULED_PROMPTS_RUNNER="support.recording_runner:RecordingRunner",
        SP_TEST_RECORD_FILE=str(records),
        PYTHONPATH=str(REPO),
    )
    return env


def wait_for_work(client: redis.Redis, records: Path, worker: Process, timeout: float) -> int:
    """Wait for ``TICKS`` ticks (distinct ``P:beat`` values) and ``SOON`` deliveries."""
    beat_key = scope().keys.beat
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout
    while True:
        value = client.get(beat_key)
        if value is not None:
            seen.add(value)
        done = sum(1 for r in read_records(str(records)) if r["event"] == "end")
        if len(seen) > TICKS and done >= SOON:
            return done
        if worker.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"worker: {len(seen)} ticks, {done} deliveries in {timeout}s:\n"
                + worker.text()[-3000:]
            )
        time.sleep(0.2)


def measure_rss(stored: int, tmp: Path) -> dict[str, Any]:
    with redis_server() as server:
        client = client_for(server)
        queue = f"bench-memory-{uuid.uuid4().hex[:8]}"
        scheduled_prompts.configure(redis_url=server.url, queue=queue)
        try:
            load_ours(Workload(utcnow(), stored))
            records = tmp / f"records-{stored}.jsonl"
            env = worker_env(server.url, queue, records)
            api.schedule_many(
                [{"prompt": f"soon {i}", "user_id": "user-soon", "platform": "bench",
                  "delay": 4} for i in range(SOON)]
            )  # fmt: skip
            worker = Process(
                f"worker-{stored}",
                [sys.executable, "-m", "celery", "-A", "scheduled_prompts", "worker",
                 "--loglevel=INFO", "--concurrency=2", "-n", f"bench-{stored}@%h",
                 "--without-mingle", "--without-gossip"],
                env, tmp / f"worker-{stored}.log",
            )  # fmt: skip
            beat = Process(
                f"beat-{stored}",
                [sys.executable, "-m", "celery", "-A", "scheduled_prompts", "beat",
                 "--loglevel=INFO", "-s", str(tmp / f"beat-{stored}-schedule")],
                env, tmp / f"beat-{stored}.log",
            )  # fmt: skip
            try:
                worker.wait_for(" ready.", timeout=60)
                delivered = wait_for_work(client, records, worker, timeout=60)
                readings = []
                for _ in range(READINGS):
                    time.sleep(1)
                    pool = children(worker.popen.pid)
                    readings.append({"main_kb": rss_kb(worker.popen.pid),
                                     "children_kb": sum(rss_kb(p) for p in pool),
                                     "children": len(pool)})  # fmt: skip
            finally:
                beat.stop()
                worker.stop()
        finally:
            scheduled_prompts.configure()
    last = readings[-1]
    progress(
        f"{stored:,} stored: worker RSS {(last['main_kb'] + last['children_kb']) / 1024:.0f} MB"
    )
    return {"stored": stored, "delivered": delivered, "readings": readings, **last,
            "total_kb": last["main_kb"] + last["children_kb"]}  # fmt: skip


def render_rss(rows: list[dict[str, Any]]) -> str:
    return table(
        "Worker RSS vs stored prompts (celery worker --concurrency=2, after 5 ticks)",
        ["stored", "main MB", "pool children MB", "total MB", "delivered"],
        [[r["stored"], r["main_kb"] / 1024, r["children_kb"] / 1024, r["total_kb"] / 1024,
          r["delivered"]] for r in rows],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k prompts; RSS at 1k and 100k")
    parser.add_argument("--bytes-only", action="store_true", help="part 1 only (no RSS)")
    args = parser.parse_args(argv)
    n = QUICK_BYTES_N if args.quick else BYTES_N
    with redis_server() as server:
        client = client_for(server)
        scheduled_prompts.configure(redis_url=server.url, queue="bench-memory")
        try:
            progress(f"Redis bytes per prompt, {n:,} stored")
            bytes_rows = measure_bytes(server.url, client, n)
            info = machine(client)
        finally:
            scheduled_prompts.configure()
    print(render_bytes(bytes_rows))
    rss_rows: list[dict[str, Any]] = []
    sizes = () if args.bytes_only else QUICK_RSS_SIZES if args.quick else RSS_SIZES
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for stored in sizes:
            progress(f"worker RSS with {stored:,} stored")
            rss_rows.append(measure_rss(stored, Path(tmp)))
    if rss_rows:
        print()
        print(render_rss(rss_rows))
    name = "memory-quick" if args.quick else "memory"
    path = write_results(
        name + "-bytes" if args.bytes_only else name,
        {"machine": info, "bytes": bytes_rows, "worker_rss": rss_rows},
    )
    progress(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
