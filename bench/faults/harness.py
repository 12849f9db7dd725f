"""Running one scenario: start the processes, schedule the workload, inject the fault at
the middle of the window, wait until everything is delivered and the store is quiet, then
measure from the recording.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from redis.exceptions import RedisError

from scheduled_prompts import Status, shards
from scheduled_prompts._time import to_ms
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.models import ScheduledPrompt
from scheduled_prompts.plans import run as run_plan
from support.recording_runner import read_records

from ..common import sleep_until
from . import measure, workload
from .measure import Fault
from .procs import HAZARD, FaultCluster, Up, Watched
from .workload import Size, Workload


@dataclass
class Run:
    """What a scenario's steps share."""

    cluster: FaultCluster
    size: Size
    work: Workload = field(init=False)
    workers: list[Watched] = field(default_factory=list)
    beats: list[Watched] = field(default_factory=list)
    up: Up | None = None
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def records(self) -> list[dict[str, Any]]:
        return read_records(str(self.cluster.records))

    def calls(self) -> list[measure.Call]:
        return measure.pair_calls(self.records())

    def note(self, text: str) -> None:
        self.notes.append(text)


class Scenario:
    """One fault. Subclasses set the class attributes and override the steps."""

    name = ""
    summary = ""
    settings: ClassVar[dict[str, Any]] = {"horizon_seconds": 20}
    redis_args: tuple[str, ...] = ()
    #: Store and broker behind Sentinel (a primary, a replica, three sentinels).
    sentinel = False
    #: The store on a Redis Cluster (three primaries, a replica each), a plain broker.
    redis_cluster = False
    celeryconfig: str | None = None
    env: ClassVar[dict[str, str]] = {}
    #: Too slow for the default test run: the test skips unless SP_FAULTS=1.
    slow = False

    def unavailable(self) -> str | None:
        """Why this scenario cannot run on this machine (None: it can)."""
        return None

    def start(self, run: Run) -> None:
        run.workers = [run.cluster.start("worker", "w1"), run.cluster.start("worker", "w2")]
        run.beats = [run.cluster.start("beat", "beat")]

    def inject(self, run: Run) -> None:
        raise NotImplementedError

    def finish(self, run: Run) -> None:
        """Notes after the run (processes still up)."""


def store_state(work: Workload) -> dict[str, Any]:
    """One-time prompts not ``executed``, and in-flight entries that are not a live cron
    prompt's next occurrence (left behind: a re-drive would publish them again)."""
    client, ctx = get_redis(), scope()
    # Every shard is asked for every id (by id alone: the shard is not known).
    rows = [(i, shard) for i in work.prompt_ids for shard in ctx.every_shard()]
    raws = run_plan(shards.read(rows), client, _no_publish)
    records = {
        i: ScheduledPrompt.from_json(raw) for (i, _), raw in zip(rows, raws, strict=True) if raw
    }
    once_ids = {k.rpartition(":")[0] for k in work.once}
    not_executed = sorted(
        f"{i}={records[i].status.value if i in records else 'absent'}"
        for i in once_ids
        if i not in records or records[i].status is not Status.EXECUTED
    )
    live = {
        f"{i}:{to_ms(p.next_run_at)}"
        for i, p in records.items()
        if i in work.cron and p.next_run_at is not None
    }
    inflight = [str(k) for s in ctx.every_shard() for k in client.zrange(s.keys.inflight, 0, -1)]
    return {
        "not_executed": not_executed,
        "leftover_inflight": [k for k in inflight if k not in live],
        "cron_run_counts": sorted(records[i].run_count for i in work.cron if i in records),
    }


def _no_publish(_: object) -> None:
    raise AssertionError("reading the store publishes nothing")


def _delivered_all(run: Run) -> bool:
    report = measure.analyse(run.work, run.records(), run.faults)
    return bool(report["missing"] == 0)


def wait_settled(run: Run) -> tuple[bool, dict[str, Any]]:
    """Until every expected occurrence completed and the store is quiet, or the deadline."""
    deadline = run.work.end.timestamp() + run.size.settle
    state: dict[str, Any] = {}
    while time.time() < deadline:
        if _delivered_all(run):
            try:
                state = store_state(run.work)
            except RedisError as exc:
                state = {"error": str(exc)}
            if not (state.get("error") or state["not_executed"] or state["leftover_inflight"]):
                return True, state
        time.sleep(0.5)
    try:
        state = store_state(run.work)
    except RedisError as exc:
        state = {"error": str(exc)}
    return False, state


def execute(scenario: Scenario, size: Size, *, keep: bool = False) -> dict[str, Any]:
    """Run ``scenario`` once; returns its measurements (``logs`` names the kept folder)."""
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f"sp-faults-{scenario.name}-"))
    cluster = FaultCluster(
        tmp,
        redis_args=scenario.redis_args,
        celeryconfig=scenario.celeryconfig,
        env=scenario.env,
        sentinel=scenario.sentinel,
        redis_cluster=scenario.redis_cluster,
        **scenario.settings,
    )
    run = Run(cluster, size)
    result: dict[str, Any] = {"scenario": scenario.name, "summary": scenario.summary}
    passed = False
    try:
        scenario.start(run)
        run.work = workload.create(size)
        sleep_until(run.work.fault_at.timestamp())
        scenario.inject(run)
        settled, state = wait_settled(run)
        time.sleep(1.0)  # a late duplicate would show up here
        scenario.finish(run)
        result |= {"prompts": size.prompts + run.extra.get("added_prompts", 0)}
        result |= measure.analyse(run.work, run.records(), run.faults)
        # Exits the scenario did not cause: a plain worker or beat that gave up.
        exits = [e for proc in run.workers + run.beats for e in proc.unexpected_exits]
        result |= {
            "settled": settled,
            "store": state,
            "faults": [
                {"kind": f.kind, "at": round(f.at, 3), "until": round(f.until, 3)}
                for f in run.faults
            ],
            "process_exits": len(exits) + _up_count(run, "exited with status"),
            "hazard_exits": sum(e.hazard for e in exits) + _up_count(run, HAZARD),
            **run.extra,
        }
        result["notes"] = run.notes
        passed = settled and result["missing"] == 0 and not result["unexplained_repeats"]
        return result
    except Exception as exc:
        raise RuntimeError(f"{scenario.name} broke: {exc!r} (logs kept in {tmp})") from exc
    finally:
        result["seconds"] = round(time.monotonic() - began, 1)
        cluster.close()
        if passed and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            result["logs"] = str(tmp)


def _up_count(run: Run, needle: str) -> int:
    return run.up.text().count(needle) if run.up else 0
