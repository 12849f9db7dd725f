"""One scenario per fault. Each runs two supervised workers and a supervised beat unless
it says otherwise (see ``harness.Scenario``), and injects its fault at the middle of the
window."""

from __future__ import annotations

import os
import shutil
import signal
import time
from datetime import timedelta
from typing import Any, ClassVar

import scheduled_prompts as sp
from scheduled_prompts._time import utcnow

from .harness import Run, Scenario
from .measure import Fault
from .workload import once_specs

AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
SLOW_RUNNER = {"SP_TEST_RUNNER_SLEEP": "0.3"}


def _in_flight_pids(run: Run, timeout: float = 5.0) -> set[int]:
    """Pids of runner calls running now (waits up to ``timeout`` for one)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = {c.pid for c in run.calls() if c.end is None}
        if pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.02)


class WorkerKill9(Scenario):
    name = "worker-kill9"
    summary = (
        "kill -9 one of two workers (its whole process group) while a runner call is in "
        "flight; restarted 1 s later"
    )
    env = SLOW_RUNNER

    restart = True

    def inject(self, run: Run) -> None:
        busy = _in_flight_pids(run)
        victim = next((w for w in run.workers if busy & w.current.pids()), run.workers[0])
        victim.restart = self.restart
        killed = victim.kill9()
        now = time.time()
        run.faults.append(Fault("worker kill -9", now, now, frozenset(killed)))
        cut = [c for c in run.calls() if c.end is None and c.pid in killed]
        run.note(f"killed {victim.name} with {len(cut)} runner call(s) in flight")


class WorkerKill9NoRestart(WorkerKill9):
    name = "worker-kill9-stays-down"
    summary = "kill -9 one of two workers mid-delivery and leave it down: tick re-drives"
    restart = False  # only the other worker, and tick's re-drive, remain
    slow = True


class WorkerRestart(Scenario):
    name = "worker-restart"
    summary = "the only worker warm-shut-down (SIGTERM) and restarted"
    env: ClassVar[dict[str, str]] = {"SP_TEST_RUNNER_SLEEP": "0.1"}

    def start(self, run: Run) -> None:
        run.workers = [run.cluster.supervise("worker", "w1")]
        run.beats = [run.cluster.supervise("beat", "beat")]

    def inject(self, run: Run) -> None:
        # No Fault is recorded: a warm shutdown finishes its calls, so no repeat is allowed.
        (worker,) = run.workers
        worker.terminate()
        began = time.monotonic()
        while not worker.exits and time.monotonic() - began < 60:
            time.sleep(0.05)
        run.note(f"warm shutdown took {time.monotonic() - began:.1f}s; restarted 1 s later")


class BeatKill9(Scenario):
    name = "beat-kill9"
    summary = "kill -9 beat, restarted after an outage (horizon 2 s: only ticks promote)"
    settings: ClassVar[dict[str, Any]] = {"horizon_seconds": 2}

    def start(self, run: Run) -> None:
        super().start(run)
        run.beats[0].delay = 8.0 if run.size.spread > 30 else 4.0

    def inject(self, run: Run) -> None:
        run.beats[0].kill9()
        run.note(f"beat down {run.beats[0].delay:.0f} s (+ its start-up)")


class TwoBeats(Scenario):
    name = "two-beats"
    summary = "two beats ticking at once for the whole run (horizon 2 s)"
    settings: ClassVar[dict[str, Any]] = {"horizon_seconds": 2}

    def start(self, run: Run) -> None:
        super().start(run)
        run.beats.append(run.cluster.supervise("beat", "beat-b"))

    def inject(self, run: Run) -> None:
        run.note("both beats ran throughout")


class ShortVisibility(Scenario):
    name = "visibility-timeout"
    summary = "broker visibility timeout 5 s with ETAs up to 20 s ahead: kombu redelivers"
    env: ClassVar[dict[str, str]] = {"SP_TEST_RUNNER_SLEEP": "0.2"}
    celeryconfig = (
        "# The fault suite's override: a visibility timeout far below the horizon, restored\n"
        "# every second, so every ETA message is handed out again several times.\n"
        "broker_transport_options = {\n"
        "    'visibility_timeout': 5,\n"
        "    'unacked_restore_interval': 1,\n"
        "    'unacked_restore_throttle': 1,\n"
        "}\n"
    )

    def inject(self, run: Run) -> None:
        run.note("redelivery runs throughout")

    def finish(self, run: Run) -> None:
        received = sum(
            p.text().count("] received") for p in run.cluster.processes if p.name[0] == "w"
        )
        run.extra["deliver_messages_received"] = received
        run.note(f"{received} task messages received for {run.work.expected()} occurrences")


class RedisKill9(Scenario):
    name = "redis-kill9-aof"
    summary = (
        "kill -9 redis-server (AOF, appendfsync everysec), restarted 2 s later on the same "
        "data; worker and beat run under `scheduled-prompts up`"
    )
    redis_args = AOF
    env = SLOW_RUNNER

    def start(self, run: Run) -> None:
        run.up = run.cluster.up()

    def inject(self, run: Run) -> None:
        # Canaries: prompts whose creation was acknowledged just before the crash.
        end = run.work.end
        canaries = [
            sp.schedule_prompt(**spec)  # type: ignore[arg-type]
            for spec in once_specs(10, end - timedelta(seconds=2), 2.0, "canary")
        ]
        acknowledged = time.time()
        redis = run.cluster.redis
        assert redis.process is not None
        redis.process.kill()
        killed = time.time()
        redis.process.wait()
        time.sleep(2.0)
        redis.start()
        run.faults.append(Fault("redis kill -9", killed, time.time()))
        survived = [p for p in canaries if sp.get_prompt(p.id) is not None]
        run.work.add_once(survived)
        run.extra["added_prompts"] = len(canaries)
        run.extra["canaries_acknowledged"] = len(canaries)
        run.extra["canaries_survived"] = len(survived)
        run.note(
            f"{len(survived)}/{len(canaries)} prompts acknowledged in the "
            f"{killed - acknowledged + 0.25:.1f} s before the kill survived it"
        )

    def finish(self, run: Run) -> None:
        assert run.up is not None
        run.note(f"`up` restarted a child {run.up.restarts()} time(s)")


class RedisLostSecond(Scenario):
    name = "redis-lost-second"
    summary = (
        "Redis crash losing its last unfsynced second (simulated: the AOF is rolled back "
        "1 s, what an OS crash under appendfsync everysec can lose)"
    )
    redis_args = AOF
    env = SLOW_RUNNER

    def inject(self, run: Run) -> None:
        redis = run.cluster.redis
        aof = run.cluster.redis_dir / "appendonlydir"
        saved = run.cluster.tmp / "aof-1s-before"
        shutil.copytree(aof, saved)
        lost_from = time.time()
        # Acknowledged writes inside the lost second: creations, and whatever deliveries
        # commit meanwhile.
        canaries = [
            sp.schedule_prompt(**spec)  # type: ignore[arg-type]
            for spec in once_specs(5, run.work.end - timedelta(seconds=2), 2.0, "canary")
        ]
        time.sleep(max(0.0, 1.0 - (time.time() - lost_from)))
        assert redis.process is not None
        redis.process.kill()
        killed = time.time()
        redis.process.wait()
        shutil.rmtree(aof)
        shutil.copytree(saved, aof)
        redis.start()
        run.faults.append(Fault("lost AOF second", lost_from, killed))
        lost = [p for p in canaries if sp.get_prompt(p.id) is None]
        run.work.add_once([p for p in canaries if p not in lost])
        run.extra["added_prompts"] = len(canaries)
        run.extra["acknowledged_then_lost"] = [p.id for p in lost]
        run.note(
            f"{len(lost)}/{len(canaries)} prompts created in the lost second are gone "
            "(documented loss, not counted as missing)"
        )


class RedisUnreachable(Scenario):
    name = "redis-unreachable-20s"
    summary = "redis-server SIGSTOPped for 20 s (connections hang), then SIGCONT"
    env = SLOW_RUNNER

    def inject(self, run: Run) -> None:
        redis = run.cluster.redis
        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)
        stopped = time.time()
        time.sleep(20)
        os.kill(redis.process.pid, signal.SIGCONT)
        run.faults.append(Fault("redis unreachable", stopped, time.time()))
        run.extra["resumed_at"] = utcnow().isoformat()


class FlakyRunner(Scenario):
    name = "flaky-runner"
    summary = "the runner fails the first attempt of ~20% of keys (by hash): retries deliver"
    settings: ClassVar[dict[str, Any]] = {
        "horizon_seconds": 20,
        "runner": "bench.faults.runners:FlakyRecordingRunner",
    }

    def inject(self, run: Run) -> None:
        run.note("failures run throughout")


SCENARIOS: list[Scenario] = [
    WorkerKill9(),
    WorkerKill9NoRestart(),
    WorkerRestart(),
    BeatKill9(),
    TwoBeats(),
    ShortVisibility(),
    RedisKill9(),
    RedisLostSecond(),
    RedisUnreachable(),
    FlakyRunner(),
]
BY_NAME = {s.name: s for s in SCENARIOS}
