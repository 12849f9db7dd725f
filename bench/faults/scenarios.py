"""One scenario per fault. Each runs two plain workers and a plain beat unless it says
otherwise (see ``harness.Scenario``: nothing restarts a process that gives up), and
injects its fault at the middle of the window."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, ClassVar

from redis import Redis
from redis.exceptions import RedisError

import scheduled_prompts as sp
from scheduled_prompts._time import utcnow
from scheduled_prompts.connection import scope
from scheduled_prompts.keys import shard_of

from .harness import Run, Scenario
from .measure import Fault
from .workload import once_specs

AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
SLOW_RUNNER = {"SP_TEST_RUNNER_SLEEP": "0.3"}


def _in_flight_pids(run: Run, fresh: float = 0.15) -> set[int]:
    """Pids of runner calls that started less than ``fresh`` seconds ago and have not
    returned: with a 0.3 s runner, time is left to cut such a call off. Waits for one
    until the workload's window ends (on a busy machine calls may bunch up), then takes
    any call in flight."""
    deadline = run.work.end.timestamp()
    while True:
        now = time.time()
        calls = [c for c in run.calls() if c.end is None]
        pids = {c.pid for c in calls if now - c.start < fresh}
        if pids:
            return pids
        if now > deadline:
            return {c.pid for c in calls}
        time.sleep(0.01)


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
        run.workers = [run.cluster.start("worker", "w1")]
        run.beats = [run.cluster.start("beat", "beat")]

    def inject(self, run: Run) -> None:
        # No Fault is recorded: a warm shutdown finishes its calls, so no repeat is allowed.
        (worker,) = run.workers
        worker.restart = True
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
        run.beats[0].restart = True

    def inject(self, run: Run) -> None:
        run.beats[0].kill9()
        run.note(f"beat down {run.beats[0].delay:.0f} s (+ its start-up)")


class TwoBeats(Scenario):
    name = "two-beats"
    summary = "two beats ticking at once for the whole run (horizon 2 s)"
    settings: ClassVar[dict[str, Any]] = {"horizon_seconds": 2}

    def start(self, run: Run) -> None:
        super().start(run)
        run.beats.append(run.cluster.start("beat", "beat-b"))

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


def _canaries(run: Run, count: int) -> list[sp.ScheduledPrompt]:
    """Prompts whose creation is acknowledged just before a Redis fault."""
    return [
        sp.schedule_prompt(**spec)  # type: ignore[arg-type]
        for spec in once_specs(count, run.work.end - timedelta(seconds=2), 2.0, "canary")
    ]


def _count_canaries(run: Run, canaries: list[sp.ScheduledPrompt]) -> list[sp.ScheduledPrompt]:
    """Adds the canaries that survived to the workload; returns those that did not."""
    lost = [p for p in canaries if sp.get_prompt(p.id) is None]
    run.work.add_once([p for p in canaries if p not in lost])
    run.extra["added_prompts"] = len(canaries)
    return lost


class RedisKill9(Scenario):
    name = "redis-kill9-aof"
    summary = (
        "kill -9 redis-server (AOF, appendfsync everysec), restarted 2 s later on the same "
        "port and data; plain worker and beat"
    )
    redis_args = AOF
    env = SLOW_RUNNER

    def inject(self, run: Run) -> None:
        canaries = _canaries(run, 10)
        acknowledged = time.time()
        redis = run.cluster.redis
        assert redis.process is not None
        redis.process.kill()
        killed = time.time()
        redis.process.wait()
        time.sleep(2.0)
        redis.start()
        run.faults.append(Fault("redis kill -9", killed, time.time()))
        lost = _count_canaries(run, canaries)
        run.extra["canaries_acknowledged"] = len(canaries)
        run.extra["canaries_survived"] = len(canaries) - len(lost)
        run.note(
            f"{len(canaries) - len(lost)}/{len(canaries)} prompts acknowledged in the "
            f"{killed - acknowledged + 0.25:.1f} s before the kill survived it"
        )


class RedisKill9Up(RedisKill9):
    name = "redis-kill9-up"
    summary = "as redis-kill9-aof, with worker and beat under `scheduled-prompts up`"

    def start(self, run: Run) -> None:
        run.up = run.cluster.up()

    def finish(self, run: Run) -> None:
        assert run.up is not None
        run.note(f"`up` restarted a child {run.up.restarts()} time(s)")


class RedisShutdown(Scenario):
    name = "redis-shutdown"
    summary = "SHUTDOWN (Redis saves and exits), restarted 2 s later on the same port and data"
    redis_args = AOF
    env = SLOW_RUNNER

    def inject(self, run: Run) -> None:
        redis = run.cluster.redis
        assert redis.process is not None
        began = time.time()
        with contextlib.suppress(RedisError):  # the server closes the connection as it exits
            Redis.from_url(redis.url).shutdown()
        redis.process.wait()
        time.sleep(2.0)
        redis.start()
        # A clean shutdown cuts no call short: no repeat is allowed.
        run.note(f"Redis down {time.time() - began:.1f} s")


class RedisPaused(Scenario):
    """Connections hang: nothing is refused, nothing answers."""

    env = SLOW_RUNNER

    def __init__(self, seconds: int, *, slow: bool = False) -> None:
        self.seconds = seconds
        self.name = f"redis-sigstop-{seconds}s"
        self.summary = f"redis-server SIGSTOPped for {seconds} s (connections hang), then SIGCONT"
        self.slow = slow

    def inject(self, run: Run) -> None:
        redis = run.cluster.redis
        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)
        stopped = time.time()
        time.sleep(self.seconds)
        os.kill(redis.process.pid, signal.SIGCONT)
        run.faults.append(Fault("redis unreachable", stopped, time.time()))
        run.extra["resumed_at"] = utcnow().isoformat()


class ClientKill(Scenario):
    name = "redis-client-kill"
    summary = "CLIENT KILL TYPE normal three times within 3 s (every connection cut, Redis up)"
    env = SLOW_RUNNER

    def inject(self, run: Run) -> None:
        client = Redis.from_url(run.cluster.redis.url)
        began = time.time()
        killed = []
        for i in range(3):
            if i:
                time.sleep(1.0)
            killed.append(int(client.client_kill_filter(_type="normal")))
        run.faults.append(Fault("client kill", began, time.time()))
        run.note(f"connections cut: {killed}")


RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


class RabbitRestart(Scenario):
    name = "rabbitmq-stop-app"
    summary = "RabbitMQ as broker (Redis the store): `rabbitmqctl stop_app`, `start_app` 3 s later"
    settings: ClassVar[dict[str, Any]] = {"horizon_seconds": 20, "broker_url": RABBITMQ}
    env = SLOW_RUNNER

    def unavailable(self) -> str | None:
        if shutil.which("rabbitmqctl") is None:
            return "rabbitmqctl is not installed"
        if not _answers("127.0.0.1", 5672):
            return "no RabbitMQ answers on 127.0.0.1:5672"
        return None

    def inject(self, run: Run) -> None:
        began = time.time()
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
        stopped = time.time()
        time.sleep(3.0)
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=60)
        run.faults.append(Fault("rabbitmq stop_app", began, time.time()))
        run.note(f"broker down {time.time() - stopped:.1f} s")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


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
        canaries = _canaries(run, 5)
        time.sleep(max(0.0, 1.0 - (time.time() - lost_from)))
        assert redis.process is not None
        redis.process.kill()
        killed = time.time()
        redis.process.wait()
        shutil.rmtree(aof)
        shutil.copytree(saved, aof)
        redis.start()
        run.faults.append(Fault("lost AOF second", lost_from, killed))
        lost = _count_canaries(run, canaries)
        run.extra["acknowledged_then_lost"] = [p.id for p in lost]
        run.note(
            f"{len(lost)}/{len(canaries)} prompts created in the lost second are gone "
            "(documented loss, not counted as missing)"
        )


class SentinelFailover(Scenario):
    """The primary dies while its replica is behind: what the primary acknowledged in
    that time exists nowhere else, and the failover promotes the replica without it."""

    sentinel = True
    env = SLOW_RUNNER
    #: How far behind the replica is when the primary dies.
    LAG = 0.5

    def __init__(self, min_replicas: int) -> None:
        self.min_replicas = min_replicas
        self.name = "sentinel-failover" + (f"-min-replicas-{min_replicas}" if min_replicas else "")
        self.summary = (
            f"behind Sentinel (a replica, three sentinels): the replica {self.LAG} s behind "
            "(link cut, process stopped), the primary kill -9ed, restarted once the sentinels "
            "promoted the "
            f"replica; SCHEDULED_PROMPTS_MIN_REPLICAS={min_replicas}"
        )
        self.settings = {"horizon_seconds": 20, "min_replicas": min_replicas}

    def inject(self, run: Run) -> None:
        group = run.cluster.sentinel
        assert group is not None
        primary = group.primary()
        replica = next(n for n in group.nodes if n is not primary)
        assert replica.process is not None
        # The replica falls behind: stopped, and its link cut by the primary (bytes already
        # sent would still reach it from its socket buffer), so it cannot reconnect.
        os.kill(replica.process.pid, signal.SIGSTOP)
        link = group.node_client(primary)
        link.client_kill_filter(_type="replica")
        link.close()
        behind = time.time()
        # Prompts created while the replica is behind, each its own caller (threads):
        # without MIN_REPLICAS they are acknowledged at once; with it they wait.
        specs = [
            {**spec, "prompt_id": f"canary-{run.cluster.settings['queue']}-{i}"}
            for i, spec in enumerate(
                once_specs(10, run.work.end - timedelta(seconds=2), 2.0, "canary")
            )
        ]
        with ThreadPoolExecutor(len(specs)) as pool:
            calls = [pool.submit(_create, spec) for spec in specs]
            time.sleep(max(0.0, self.LAG - (time.time() - behind)))
            old = primary.port
            killed_node = group.kill_primary()
            killed = time.time()
            os.kill(replica.process.pid, signal.SIGCONT)
            acknowledged = [c.result() for c in calls]
        group.wait_failover(old)
        promoted = time.time()
        group.restart(killed_node)
        run.faults.append(Fault("replica behind, primary kill -9", behind, promoted))
        settled = group.wait_settled()
        rejoined = time.time()
        back = f"old primary a replica again {rejoined - promoted:.1f} s later"
        if settled is killed_node:  # a sentinel failed over again, onto the restarted node
            back = (
                "a second failover made the old primary primary again, settled after "
                f"{rejoined - promoted:.1f} s"
            )
        acked = [p for p in acknowledged if p is not None]
        ids = [str(s["prompt_id"]) for s in specs]
        survived = [p for p in (sp.get_prompt(i) for i in ids) if p is not None]
        run.work.add_once(survived)
        run.extra["added_prompts"] = len(survived)
        run.extra["failover_seconds"] = round(promoted - killed, 2)
        run.extra["replica_back_seconds"] = round(rejoined - promoted, 2)
        kept = {p.id for p in survived}
        run.extra["acknowledged_then_lost"] = [p.id for p in acked if p.id not in kept]
        run.extra["refused"] = len(specs) - len(acked)
        run.note(
            f"failover {promoted - killed:.1f} s, {back}; of {len(specs)} prompts created "
            f"while the replica was behind: {len(acked)} acknowledged, "
            f"{len(run.extra['acknowledged_then_lost'])} of those lost, "
            f"{run.extra['refused']} refused (StoreUnavailable)"
        )


class ClusterWorkerKill9(WorkerKill9):
    name = "cluster-worker-kill9"
    summary = (
        "the store on a Redis Cluster (3 primaries, a replica each, 16 shards): kill -9 one "
        "of two workers while a runner call is in flight; restarted 1 s later"
    )
    redis_cluster = True


class ClusterPrimaryKill9(Scenario):
    """A primary of the store's cluster dies: its replica is promoted by the cluster
    itself (no Sentinel), the workers' cluster client finds the new primary, and the old
    one comes back as a replica."""

    name = "cluster-primary-kill9"
    summary = (
        "the store on a Redis Cluster (3 primaries, a replica each, AOF, 16 shards): kill -9 "
        "the primary of the busiest shard while runner calls are in flight; the cluster "
        "promotes its replica; the old primary restarted as a replica"
    )
    redis_cluster = True
    env = SLOW_RUNNER

    def inject(self, run: Run) -> None:
        group = run.cluster.store_cluster
        assert group is not None
        ctx = scope()
        homes = Counter(shard_of(f"user-{i % 10}", ctx.shards) for i in range(10))
        busiest = ctx.shard(homes.most_common(1)[0][0])
        _in_flight_pids(run)
        victim = group.owner(busiest.keys.due)
        victim_id = group.kill9(victim)
        killed = time.time()
        group.wait_failover(victim, victim_id)
        promoted = time.time()
        victim.start()
        group.wait_ready()
        run.faults.append(Fault("cluster primary kill -9", killed, promoted))
        run.extra["failover_seconds"] = round(promoted - killed, 2)
        run.note(
            f"killed primary :{victim.port} (shard {busiest.number}'s); replica promoted "
            f"{promoted - killed:.1f} s later; the old primary back as a replica "
            f"{time.time() - promoted:.1f} s after that"
        )


def _create(spec: dict[str, Any]) -> sp.ScheduledPrompt | None:
    """The prompt if its creation was acknowledged; None if the call failed."""
    try:
        return sp.schedule_prompt(**spec)  # type: ignore[arg-type]
    except sp.StoreUnavailable:
        return None


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
    RedisKill9Up(),
    RedisShutdown(),
    RedisLostSecond(),
    RedisPaused(15),
    RedisPaused(60, slow=True),
    ClientKill(),
    SentinelFailover(0),
    SentinelFailover(1),
    RabbitRestart(),
    FlakyRunner(),
    ClusterWorkerKill9(),
    ClusterPrimaryKill9(),
]
BY_NAME = {s.name: s for s in SCENARIOS}
