"""Burst: ``python -m bench.burst [--quick] [--workers 1,2,4] [--profile]``.
N prompts due at the same second, one worker: ours, celery-redbeat, plain ETA tasks.
Method and figures: docs/performance.md, "Burst dispatch" and "Methods"."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

import scheduled_prompts
from bench.common import machine, median, progress, redis_server, sleep_until, table, write_results
from support.cluster import Cluster, Process
from support.recording_runner import read_records

MAX_INTERVAL = 5  # redbeat's beat max interval in these runs (seconds)


# --------------------------------------------------------------------------- records


class RecordTail:
    """Counts the lines of a growing record file that contain ``needle``, reading only
    what was appended since the last call (the file is parsed once, at the end)."""

    def __init__(self, path: Path, needle: bytes = b"") -> None:
        self.path = path
        self.needle = needle
        self.offset = 0
        self.count = 0
        self.partial = b""

    def poll(self) -> int:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return self.count
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        self.count += sum(1 for line in lines if self.needle in line)
        return self.count


def wait_for_count(tail: RecordTail, expected: int, *, deadline: float, stall: float = 30.0) -> int:
    """Poll until ``expected`` lines, ``deadline`` (wall clock) or ``stall`` seconds
    without a new line once the first arrived; returns the count reached."""
    last_count, last_change = -1, time.time()
    while True:
        count = tail.poll()
        now = time.time()
        if count >= expected:
            return count
        if count != last_count:
            last_count, last_change = count, now
        if now > deadline or (count > 0 and now - last_change > stall):
            return count
        time.sleep(0.05)


# --------------------------------------------------------------------------- processes


@contextmanager
def cluster(**settings: Any) -> Iterator[Cluster]:
    """A :class:`Cluster` (own redis-server, recording runner) in a temporary folder,
    with the production tick and lease unless told otherwise; always closed."""
    with tempfile.TemporaryDirectory(prefix="sp-bench-") as tmp:
        defaults: dict[str, Any] = {"tick_seconds": 60, "lease_seconds": 60}
        c = Cluster(Path(tmp), **{**defaults, **settings})
        try:
            yield c
        finally:
            c.close()


def peer_env(c: Cluster) -> dict[str, str]:
    """Environment of the peers' processes: same broker, own queue and record file."""
    return {
        **c.env,
        "BENCH_PEER_QUEUE": f"{c.settings['queue']}-peer",
        "BENCH_PEER_RECORD_FILE": str(c.tmp / "peer-records.jsonl"),
        "BENCH_REDBEAT_MAX_INTERVAL": str(MAX_INTERVAL),
    }


def start_peer_worker(c: Cluster, concurrency: int) -> Process:
    env = peer_env(c)
    proc = Process(
        "peer-worker",
        [sys.executable, "-m", "celery", "-A", "bench.peers", "worker", "--loglevel=INFO",
         f"--concurrency={concurrency}", "-n", "peer@%h", "--without-mingle",
         "--without-gossip"],
        env,
        c.tmp / "peer-worker.log",
    )  # fmt: skip
    c.processes.append(proc)
    proc.wait_for(" ready.")
    return proc


def start_redbeat(c: Cluster) -> Process:
    env = peer_env(c)
    proc = Process(
        "redbeat",
        [sys.executable, "-m", "celery", "-A", "bench.peers", "beat", "--loglevel=INFO",
         "-S", "redbeat.RedBeatScheduler", f"--max-interval={MAX_INTERVAL:.0f}",
         "-s", str(c.tmp / "redbeat-schedule")],
        env,
        c.tmp / "redbeat.log",
    )  # fmt: skip
    c.processes.append(proc)
    proc.wait_for("beat: Starting")
    return proc


def configure_peers_for(c: Cluster) -> Any:
    """The :mod:`bench.peers` module, pointed at this cluster's broker (in this process)."""
    from bench import peers  # noqa: PLC0415 - builds a Celery app: only when needed

    env = peer_env(c)
    peers.configure_peers(
        broker_url=c.redis.url,
        queue=env["BENCH_PEER_QUEUE"],
        max_interval=MAX_INTERVAL,
        record_file=env["BENCH_PEER_RECORD_FILE"],
    )
    return peers


# --------------------------------------------------------------------------- one run


@dataclass
class BurstRun:
    """One burst: N occurrences due at T, measured from T (seconds, wall clock)."""

    system: str
    variant: str
    n: int
    concurrency: int
    t: float  # T, epoch seconds
    schedule_s: float  # writing + publishing (ours), saving entries (redbeat), sending (ETA)
    lead_left_s: float  # T - end of scheduling; negative: scheduling ended after T
    backlog_at_t: int  # messages still in the broker queue at T (not fetched by the worker)
    delivered: int = 0
    duplicates: int = 0
    early: int = 0  # calls before T (should be 0)
    first_s: float = math.nan
    last_s: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.delivered / self.last_s if self.last_s > 0 else math.nan

    def finish(self, times: Sequence[float], keys: Sequence[str]) -> BurstRun:
        self.delivered = len(set(keys))
        self.duplicates = sum(n - 1 for n in Counter(keys).values() if n > 1)
        if times:
            self.first_s = min(times) - self.t
            self.last_s = max(times) - self.t
            self.early = sum(1 for x in times if x < self.t)
        if self.lead_left_s < 0:
            self.notes.append(f"scheduling ended {-self.lead_left_s:.2f}s after T")
        if self.backlog_at_t:
            self.notes.append(f"{self.backlog_at_t} message(s) not yet fetched at T")
        if self.delivered < self.n:
            self.notes.append(f"only {self.delivered}/{self.n} delivered")
        if self.duplicates:
            self.notes.append(f"{self.duplicates} repeated call(s)")
        if self.early:
            self.notes.append(f"{self.early} call(s) before T")
        return self

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rate": self.rate}


#: Seconds of lead per 1,000 prompts, on top of 5 s, by system: enough on this 2-core
#: machine for the scheduling (and the worker fetching the ETA messages) to end before T.
#: One ETA message per occurrence costs ~1.5 ms to publish alone and more while the
#: worker takes them in; redbeat saves one entry per round trip and beat must have read
#: them all (after at most its max interval) before T.
LEAD_PER_K = {"per-occurrence": 6.0, "batched": 1.0, "redbeat": 2.5, "eta": 5.0}


def default_lead(system: str, n: int) -> float:
    extra = MAX_INTERVAL if system == "redbeat" else 0.0
    return round(5.0 + extra + LEAD_PER_K[system] * n / 1000, 1)


def pick_t(lead: float) -> float:
    """T: the first whole second at least ``lead`` seconds from now."""
    return float(math.ceil(time.time() + lead))


#: SPEC: a burst of 10,000 due at the same second delivered within this (seconds) ...
SPEC_WITHIN = 2.0
#: ... and issue 18's aim for it.
ISSUE18_WITHIN = 1.0


def wait_deadline(t: float, n: int) -> float:
    return t + max(60.0, n / 50)


def run_ours(n: int, concurrency: int, batch_size: int | None, lead: float) -> BurstRun:
    """Ours: ``schedule_many`` of N prompts due at T (promoted and published at once,
    since T is within the horizon), one worker with the recording runner."""
    variant = "per-occurrence tasks" if batch_size == 1 else "batched"
    # The batch size goes to the cluster's settings: both this process (publishing) and
    # the worker (a deliver task takes its siblings along only with batches) see it.
    sized = {} if batch_size is None else {"deliver_batch_size": batch_size}
    with cluster(**sized) as c:
        c.worker("w1", concurrency=concurrency)
        client = redis.Redis.from_url(c.redis.url)
        t = pick_t(lead)
        at = datetime.fromtimestamp(t, UTC)
        specs = [
            {"prompt": f"burst {i}", "user_id": f"u{i % 100}", "platform": "bench", "at": at}
            for i in range(n)
        ]
        start = time.time()
        scheduled_prompts.schedule_many(specs)
        end = time.time()
        sleep_until(t)
        backlog = int(client.llen(c.settings["queue"]))
        tail = RecordTail(c.records, b'"start"')
        wait_for_count(tail, n, deadline=wait_deadline(t, n))
        calls = c.calls("start")
        run = BurstRun("ours", variant, n, concurrency, t, end - start, t - end, backlog)
        run.finish([r["at"] for r in calls], [r["key"] for r in calls])
        client.close()
        return run


def run_redbeat(n: int, concurrency: int, lead: float) -> BurstRun:
    """celery-redbeat: N one-shot entries (``rrule`` at T, ``count=1``) saved while beat
    runs; beat sends each at T, the worker runs the no-op task."""
    from redbeat.schedulers import RedBeatSchedulerEntry  # noqa: PLC0415
    from redbeat.schedules import rrule  # noqa: PLC0415

    with cluster() as c:
        peers = configure_peers_for(c)
        start_peer_worker(c, concurrency)
        start_redbeat(c)
        client = redis.Redis.from_url(c.redis.url)
        t = pick_t(lead)
        at = datetime.fromtimestamp(t, UTC)
        start = time.time()
        for i in range(n):
            RedBeatSchedulerEntry(
                f"burst-{i}",
                peers.NOOP,
                rrule("SECONDLY", dtstart=at, count=1),
                args=[f"burst-{i}", t],
                app=peers.app,
            ).save()
        end = time.time()
        return _peer_run(c, client, ("celery-redbeat", "beat + worker"), n=n,
                         concurrency=concurrency, t=t, sent=(start, end))  # fmt: skip


def run_eta(n: int, concurrency: int, lead: float) -> BurstRun:
    """Plain Celery: N ``apply_async(eta=T)`` of the no-op task over one producer."""
    with cluster() as c:
        peers = configure_peers_for(c)
        start_peer_worker(c, concurrency)
        client = redis.Redis.from_url(c.redis.url)
        t = pick_t(lead)
        at = datetime.fromtimestamp(t, UTC)
        start = time.time()
        with peers.app.producer_or_acquire() as producer:
            for i in range(n):
                peers.noop.apply_async(args=(f"eta-{i}", t), eta=at, producer=producer)
        end = time.time()
        return _peer_run(c, client, ("celery ETA", "apply_async(eta=T)"), n=n,
                         concurrency=concurrency, t=t, sent=(start, end))  # fmt: skip


def _peer_run(
    c: Cluster,
    client: redis.Redis,
    label: tuple[str, str],
    *,
    n: int,
    concurrency: int,
    t: float,
    sent: tuple[float, float],
) -> BurstRun:
    """Wait past T for the peer's N no-op task records and measure them."""
    start, end = sent
    sleep_until(t)
    backlog = int(client.llen(peer_env(c)["BENCH_PEER_QUEUE"]))
    path = Path(peer_env(c)["BENCH_PEER_RECORD_FILE"])
    wait_for_count(RecordTail(path), n, deadline=wait_deadline(t, n))
    records = read_records(str(path))
    run = BurstRun(*label, n, concurrency, t, end - start, t - end, backlog)
    run.finish([r["at"] for r in records], [r["key"] for r in records])
    client.close()
    return run


def repeat(label: str, runs: int, fn: Callable[[], BurstRun]) -> list[BurstRun]:
    """``runs`` runs of ``fn``; a run that raised is logged and left out."""
    out = []
    for i in range(runs):
        progress(f"{label}: run {i + 1}/{runs}")
        try:
            run = fn()
        except Exception as exc:  # one broken run must not lose the others' figures
            progress(f"  FAILED: {type(exc).__name__}: {str(exc)[:2000]}")
            continue
        progress(
            f"  delivered {run.delivered}/{run.n}, last call {run.last_s:.3f}s after T, "
            f"scheduling {run.schedule_s:.2f}s, lead left {run.lead_left_s:.2f}s, "
            f"backlog at T {run.backlog_at_t}"
        )
        out.append(run)
    return out


def summary(label: str, runs: Sequence[BurstRun]) -> dict[str, Any]:
    """The median of each figure over the runs (figure by figure)."""
    if not runs:
        nan = math.nan
        return {"system": label, "variant": "", "n": 0, "concurrency": 0, "runs": 0,
                "schedule_s": nan, "lead_left_s": nan, "backlog_at_t": 0, "first_ms": nan,
                "last_s": nan, "rate": nan, "delivered": 0, "duplicates": 0, "early": 0,
                "notes": ["every run failed"]}  # fmt: skip
    first = runs[0]

    def med(attr: str) -> float:
        return median([float(getattr(r, attr)) for r in runs])

    notes = sorted({note for r in runs for note in r.notes})
    return {
        "system": first.system,
        "variant": first.variant,
        "n": first.n,
        "concurrency": first.concurrency,
        "runs": len(runs),
        "schedule_s": med("schedule_s"),
        "lead_left_s": med("lead_left_s"),
        "backlog_at_t": med("backlog_at_t"),
        "first_ms": med("first_s") * 1000,
        "last_s": med("last_s"),
        "rate": med("rate"),
        "delivered": min(r.delivered for r in runs),
        "duplicates": max(r.duplicates for r in runs),
        "early": max(r.early for r in runs),
        "notes": notes,
    }


HEADERS = (
    "system", "variant", "N", "pool", "runs", "schedule+publish s", "lead left s",
    "backlog at T", "first call ms", "last call s", "deliveries/s", "delivered", "notes",
)  # fmt: skip


def row(s: dict[str, Any]) -> list[Any]:
    return [
        s["system"], s["variant"], s["n"], s["concurrency"], s["runs"], s["schedule_s"],
        s["lead_left_s"], int(s["backlog_at_t"]), s["first_ms"], s["last_s"], s["rate"],
        s["delivered"], "; ".join(s["notes"]) or "",
    ]  # fmt: skip


# --------------------------------------------------------------------------- profile

#: Functions whose time the profile reports (outermost frames, so none counts twice).
BUCKETS = {
    "execute_command": "Redis round trips (CLAIM, COMMIT, lease scripts)",
    "call_runner": "runner call (recording runner: one file append)",
    "from_json": "record parse (ScheduledPrompt.from_json)",
    "to_json": "record serialise (to_json)",
    "build_payload": "payload (build_payload)",
}


class _Collect:
    """A ``publish`` that collects the deliveries ``tick`` would hand to Celery."""

    def __init__(self) -> None:
        self.deliveries: list[Any] = []

    def __call__(self, batch: Sequence[Any]) -> None:
        self.deliveries.extend(batch)


def _outermost(frame: Any, names: set[str], acc: dict[str, float]) -> None:
    """Sum the time of the outermost frames whose function is in ``names``."""
    if frame.function in names:
        acc[frame.function] = acc.get(frame.function, 0.0) + frame.time
        return
    for child in frame.children:
        _outermost(child, names, acc)


@dataclass
class _Profiled:
    wall_s: float
    buckets: dict[str, float]  # seconds of wall time, by BUCKETS label
    text: str


def _profiled(fn: Callable[[], Any]) -> _Profiled:
    """Run ``fn`` under pyinstrument; its wall time and the time of each bucket (the
    profiler's sampled times scaled to its wall time, profiler overhead included)."""
    from pyinstrument import Profiler  # noqa: PLC0415

    profiler = Profiler(interval=0.0002)
    start = time.perf_counter()
    profiler.start()
    fn()
    session = profiler.stop()
    wall = time.perf_counter() - start
    root = session.root_frame()
    acc: dict[str, float] = {}
    total = 0.0
    if root is not None:
        _outermost(root, set(BUCKETS), acc)
        total = float(root.time)
    scale = wall / total if total else 0.0
    buckets = {BUCKETS[name]: acc.get(name, 0.0) * scale for name in BUCKETS}
    buckets["other Python (engine, redis-py, claims)"] = wall - sum(buckets.values())
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    return _Profiled(wall, buckets, text)


def prepare_due(n: int, tag: str) -> tuple[list[Any], float, float]:
    """N prompts written (not promoted: set ``horizon_seconds=0``), then promoted by
    ``engine.tick`` without Celery. Returns the deliveries and the seconds of both steps."""
    from scheduled_prompts import engine  # noqa: PLC0415
    from scheduled_prompts.connection import get_redis, scope  # noqa: PLC0415

    at = datetime.now(UTC) + timedelta(seconds=1)
    specs = [
        {"prompt": f"{tag} {i}", "user_id": f"u{i % 100}", "platform": "bench", "at": at}
        for i in range(n)
    ]
    t0 = time.perf_counter()
    scheduled_prompts.schedule_many(specs)
    t1 = time.perf_counter()
    sleep_until(at.timestamp() + 0.01)
    collect = _Collect()
    t2 = time.perf_counter()
    engine.tick(get_redis(), scope(), collect, now=at)
    t3 = time.perf_counter()
    return collect.deliveries, t1 - t0, t3 - t2


def _publish_cost(n: int, base: dict[str, Any]) -> list[dict[str, Any]]:
    """``tasks.publish`` of N deliveries due at the same ms, an hour ahead, on a real
    broker connection, per-occurrence and with the default batch size; dropped after."""
    from scheduled_prompts import tasks as sp_tasks  # noqa: PLC0415
    from scheduled_prompts.connection import get_redis  # noqa: PLC0415
    from scheduled_prompts.occurrences import Delivery  # noqa: PLC0415

    due = int((time.time() + 3600) * 1000)
    fake = [Delivery(f"publish{i:06d}", due) for i in range(n)]
    phases = []
    for size in (1, None):
        scheduled_prompts.configure(**base, **({} if size is None else {"deliver_batch_size": 1}))
        client = get_redis()
        sp_tasks.publish(fake[:10])  # warm the producer pool and connection
        client.delete(base["queue"])
        t0 = time.perf_counter()
        sp_tasks.publish(fake)
        dt = time.perf_counter() - t0
        messages = int(client.llen(base["queue"]))
        client.delete(base["queue"])
        what = " batch size 1," if size == 1 else " default batch,"
        phases.append(
            {"phase": f"tasks.publish:{what} {messages:,} message(s)", "ms": dt * 1e6 / n}
        )
    scheduled_prompts.configure(**base)
    return phases


def profile(n: int) -> dict[str, Any]:
    """Where the time of ours goes, in this process (no Celery worker), per 1,000
    occurrences: write, promote, publish, then ``engine.deliver`` one by one and the
    batched engine function (``deliver_many``) under pyinstrument."""
    from scheduled_prompts import engine, set_bot_runner  # noqa: PLC0415
    from scheduled_prompts.connection import get_redis, scope  # noqa: PLC0415
    from support.recording_runner import RecordingRunner  # noqa: PLC0415

    per_k = 1e6 / n  # seconds for N -> ms per 1,000
    phases: list[dict[str, Any]] = []
    texts: dict[str, str] = {}
    outcomes: dict[str, dict[str, int]] = {}
    with redis_server() as srv, tempfile.TemporaryDirectory(prefix="sp-prof-") as tmp:
        os.environ["SP_TEST_RECORD_FILE"] = str(Path(tmp) / "records.jsonl")
        base = {"redis_url": srv.url, "queue": "bench-profile", "horizon_seconds": 0}
        scheduled_prompts.configure(**base)
        set_bot_runner(RecordingRunner())
        try:
            prepare_due(min(n, 500), "warm-up")  # scripts loaded, connections made
            _, write_s, promote_s = prepare_due(n, "write")
            phases.append({"phase": "schedule_many: write N records", "ms": write_s * per_k})
            phases.append({"phase": "tick: PROMOTE N to in-flight", "ms": promote_s * per_k})
            phases.extend(_publish_cost(n, base))
            client, ctx = get_redis(), scope()
            size = ctx.settings.deliver_batch_size

            def one_by_one(ds: list[Any]) -> Counter[str]:
                return Counter(engine.deliver(client, ctx, d).outcome.value for d in ds)

            def in_batches(ds: list[Any]) -> Counter[str]:
                got: Counter[str] = Counter()
                for i in range(0, len(ds), size):
                    batch = ds[i : i + size]
                    got.update(r.outcome.value for r in engine.deliver_many(client, ctx, batch))
                return got

            variants = [
                ("engine.deliver x N", one_by_one),
                (f"engine.deliver_many, {size} a call", in_batches),
            ]
            for label, fn in variants:
                # Timed without the profiler; the profiler (on a second, equal set) gives
                # the shares, applied to the unprofiled time.
                ds = prepare_due(n, "timed")[0]
                t0 = time.perf_counter()
                outcomes[label] = dict(fn(ds))
                wall = time.perf_counter() - t0
                ds = prepare_due(n, "profiled")[0]
                prof = _profiled(lambda ds=ds, fn=fn: fn(ds))  # type: ignore[misc]
                texts[label] = prof.text
                phases.append({"phase": label, "ms": wall * per_k})
                for bucket, secs in prof.buckets.items():
                    share = secs / prof.wall_s if prof.wall_s else 0.0
                    phases.append({"phase": f"  {bucket}", "ms": share * wall * per_k})
        finally:
            set_bot_runner(None)
            scheduled_prompts.configure()
            os.environ.pop("SP_TEST_RECORD_FILE", None)
    return {"n": n, "phases": phases, "outcomes": outcomes, "profile_text": texts}


# --------------------------------------------------------------------------- main


def _workers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def bursts(
    args: argparse.Namespace, n: int, runs: int, leads: dict[str, float], results: dict[str, Any]
) -> list[str]:
    """Every system's bursts and the scaling rows; fills ``results``, returns the tables."""
    conc = args.concurrency
    out: list[str] = []
    systems: list[tuple[str, Callable[[], BurstRun]]] = [
        ("ours per-occurrence", lambda: run_ours(n, conc, 1, leads["per-occurrence"])),
        ("ours batched", lambda: run_ours(n, conc, None, leads["batched"])),
        ("celery-redbeat", lambda: run_redbeat(n, conc, leads["redbeat"])),
    ]
    if not args.no_eta:
        systems.append(("celery ETA", lambda: run_eta(n, conc, leads["eta"])))
    all_runs: dict[str, list[BurstRun]] = {}
    for label, fn in systems:
        all_runs[label] = repeat(label, runs, fn)
    rows = [summary(label, r) for label, r in all_runs.items()]
    scaling = []
    for workers in args.workers:
        label = f"ours batched, pool {workers}"
        if workers == conc:  # the main batched row already measured it
            scaling.append(summary(label, all_runs["ours batched"]))
            continue
        fn = functools.partial(run_ours, n, workers, None, leads["batched"])
        all_runs[label] = repeat(label, runs, fn)
        scaling.append(summary(label, all_runs[label]))
    batched = rows[1]
    results["rows"] = rows
    results["scaling"] = scaling
    results["runs"] = {k: [r.as_dict() for r in v] for k, v in all_runs.items()}
    # SPEC: 10,000 due in the same second all delivered within 2 s by one worker; issue
    # 18 asks for 1.0 s.
    for key, within in (("promise_within_2s", SPEC_WITHIN), ("issue18_within_1s", ISSUE18_WITHIN)):
        results[key] = {
            "n": n, "within_s": within, "last_call_s": batched["last_s"],
            "met": n >= 10_000 and batched["delivered"] == n and batched["last_s"] <= within,
        }  # fmt: skip
    out.append(table(f"Burst: {n:,} due at the same second, one worker", HEADERS,
                     [row(s) for s in rows]))  # fmt: skip
    out.append(table(f"Scaling: ours batched, {n:,} due at once, one worker", HEADERS,
                     [row(s) for s in scaling]))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 prompts, 1 run each")
    parser.add_argument("-n", type=int, default=None, help="prompts per burst")
    parser.add_argument("--runs", type=int, default=None, help="runs per system")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="pool processes of the worker (main rows)"
    )
    parser.add_argument(
        "--workers", type=_workers, default=[1, 2, 4], help="pool sizes for the scaling rows"
    )
    parser.add_argument("--lead", type=float, default=None, help="seconds from start to T")
    parser.add_argument("--profile", action="store_true", help="also profile ours in-process")
    parser.add_argument("--no-burst", action="store_true", help="skip the burst runs")
    parser.add_argument("--no-eta", action="store_true", help="skip the plain ETA row")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()

    n = args.n or (2_000 if args.quick else 10_000)
    runs = args.runs or (1 if args.quick else 3)
    leads = {k: args.lead or default_lead(k, n) for k in LEAD_PER_K}
    conc = args.concurrency
    results: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "n": n, "runs": runs, "concurrency": conc, "lead_s": leads, "quick": args.quick,
            "redbeat_max_interval_s": MAX_INTERVAL, "clock": "time.time() (wall clock)",
            "runner": "support.recording_runner:RecordingRunner",
        },
    }  # fmt: skip
    out: list[str] = []
    if not args.no_burst:
        out.extend(bursts(args, n, runs, leads, results))
    if args.profile:
        progress(f"profile: {n} occurrences in-process")
        prof = profile(n)
        results["profile"] = prof
        for label, text in prof["profile_text"].items():
            print(f"--- {label}\n{text}", file=sys.stderr)
        out.append(table("Profile: ours in-process, ms per 1,000 occurrences",
                         ("phase", "ms / 1,000"),
                         [[p["phase"], p["ms"]] for p in prof["phases"]]))  # fmt: skip
    # Other work on this machine shows here: the figures are only as quiet as it was.
    results["load_average"] = {"start": load_start, "end": os.getloadavg()}
    name = "burst-quick" if args.quick else "burst"
    path = write_results(name, results)
    print("\n\n".join(out))
    progress(f"wrote {path}")
    for key, who in (("promise_within_2s", "SPEC"), ("issue18_within_1s", "issue 18")):
        if key in results:
            p = results[key]
            verdict = "met" if p["met"] else "NOT met"
            progress(
                f"{who}: {n:,} within {p['within_s']:g} s (batched, one worker): "
                f"last call {p['last_call_s']:.2f}s after T -> {verdict}"
            )
    short = [s for s in results.get("rows", []) + results.get("scaling", []) if s["delivered"] < n]
    for s in short:
        progress(f"{s['system']} {s['variant']}: only {s['delivered']}/{n} delivered")
    return 1 if short else 0


if __name__ == "__main__":
    raise SystemExit(main())
