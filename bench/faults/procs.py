"""Processes for the fault suite: the end-to-end ``Cluster`` with a persistent Redis, a
Celery config override, watched workers and beats, and ``scheduled-prompts up``.

Workers and beats run plain, as ``celery -A scheduled_prompts worker`` does for a user
without a supervisor: a process that exits stays down, and the exit is counted. Only a
process the scenario itself stopped (``kill -9``, a warm shutdown) is started again, when
the scenario asks for it: that is an operator's restart, part of the fault.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.cluster import Cluster, Process
from support.redis_cluster import RedisCluster
from support.redis_server import RedisServer
from support.sentinel import SentinelGroup

UP = Path(sys.executable).parent / "scheduled-prompts"
HAZARD = "Unrecoverable error"


class Proc(Process):
    """:class:`Process` started in a chosen folder (``cwd`` decides which ``celeryconfig``
    Celery imports: ``python -m celery`` puts the working folder first on ``sys.path``)."""

    def pids(self) -> set[int]:
        """The processes of its group (a worker and its pool children)."""
        return {pid for pid, (_, group) in _proc_table().items() if group == self.popen.pid}


@dataclass
class Exit:
    name: str
    at: float
    status: int | None
    hazard: bool  # the kombu AttributeError after a broker restart
    expected: bool  # the scenario stopped it (kill -9, warm shutdown)


@dataclass
class Watched:
    """One worker or beat process, watched for exits.

    Plain by default: an exit the scenario did not cause is recorded and the process
    stays down. After an exit the scenario caused (:meth:`kill9`, :meth:`terminate`), it
    is started again ``delay`` seconds later when ``restart`` is set.
    """

    name: str
    factory: Callable[[int], Proc]
    delay: float = 1.0
    restart: bool = False
    current: Proc = field(init=False)
    incarnations: list[Proc] = field(default_factory=list)
    exits: list[Exit] = field(default_factory=list)
    _expecting: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.current = self._spawn()
        self._thread = threading.Thread(target=self._watch, name=self.name, daemon=True)
        self._thread.start()

    @property
    def unexpected_exits(self) -> list[Exit]:
        return [e for e in self.exits if not e.expected]

    def _spawn(self) -> Proc:
        proc = self.factory(len(self.incarnations) + 1)
        self.incarnations.append(proc)
        return proc

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                status = self.current.popen.poll()
                if status is None:
                    continue
                hazard = HAZARD in self.current.text()
                expected, self._expecting = self._expecting, False
                self.exits.append(Exit(self.name, time.time(), status, hazard, expected))
            if not (expected and self.restart) or self._stop.wait(self.delay):
                return
            with self._lock:
                if not self._stop.is_set():
                    self.current = self._spawn()

    def kill9(self) -> set[int]:
        """SIGKILL the process group; returns the pids that were killed."""
        with self._lock:
            pids = self.current.pids()
            self._expecting = True
            os.killpg(self.current.popen.pid, signal.SIGKILL)
            return pids

    def terminate(self) -> None:
        """SIGTERM the main process: Celery's warm shutdown."""
        with self._lock:
            self._expecting = True
            os.kill(self.current.popen.pid, signal.SIGTERM)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for proc in self.incarnations:
            proc.stop()


def celery_args(kind: str, name: str, tmp: Path, concurrency: int = 2) -> list[str]:
    base = [sys.executable, "-m", "celery", "-A", "scheduled_prompts", kind, "--loglevel=INFO"]
    if kind == "worker":
        # Otherwise Celery's defaults (mingle, gossip, heartbeats on), as users run it.
        return [*base, f"--concurrency={concurrency}", "-n", f"{name}@%h"]
    return [*base, "-s", str(tmp / f"{name}-schedule")]


class FaultCluster(Cluster):
    """The end-to-end cluster, with a Redis that can be restarted on the same port and
    data, an optional ``celeryconfig`` override, and watched worker and beat processes.

    Its Redis keeps its data in ``tmp/redis`` (with ``redis_args``, e.g. AOF).
    """

    def __init__(
        self,
        tmp: Path,
        *,
        redis_args: tuple[str, ...] = (),
        celeryconfig: str | None = None,
        env: dict[str, str] | None = None,
        sentinel: bool = False,
        redis_cluster: bool = False,
        **settings: Any,
    ) -> None:
        """``sentinel``: the store and broker are a primary, a replica and three
        sentinels (AOF on both nodes), reached through the Sentinel URL.
        ``redis_cluster``: the store is a Redis Cluster of three primaries with a replica
        each (AOF on every node), the plain Redis the broker."""
        redis_dir = tmp / "redis"
        redis_dir.mkdir(parents=True)
        self.sentinel: SentinelGroup | None = None
        if sentinel:
            self.sentinel = SentinelGroup(persistent=True).start()
            redis = self.sentinel.nodes[0]
            settings = {"redis_url": self.sentinel.url(), **settings}
        else:
            redis = RedisServer(*redis_args, directory=str(redis_dir)).start()
        self.store_cluster: RedisCluster | None = None
        if redis_cluster:
            self.store_cluster = RedisCluster(
                primaries=3, replicas=1, extra=("--appendonly", "yes")
            ).start()
            settings = {"redis_url": self.store_cluster.url, "broker_url": redis.url, **settings}
        super().__init__(
            tmp, redis=redis, name="faults", env=env, celeryconfig=celeryconfig, **settings
        )
        self.redis_dir = redis_dir
        self.watched: list[Watched] = []

    def spawn(self, name: str, args: list[str]) -> Proc:
        proc = Proc(name, args, self.env, self.tmp / f"{name}.log", self.cwd)
        self.processes.append(proc)
        return proc

    def start(self, kind: str, name: str, *, concurrency: int = 2) -> Watched:
        """A plain worker or beat (see :class:`Watched`); waits until it is up."""
        args = celery_args(kind, name, self.tmp, concurrency)
        proc = Watched(name, lambda n: self.spawn(f"{name}.{n}", args))
        self.watched.append(proc)
        proc.current.wait_for(" ready." if kind == "worker" else "beat: Starting", timeout=60)
        return proc

    def up(self) -> Up:
        """``scheduled-prompts up`` against this cluster's Redis (it supervises worker and
        beat itself); returns once its worker is ready."""
        args = [str(UP), "up", "--concurrency=4", "--loglevel=INFO", f"--data-dir={self.tmp}/up"]
        proc = Up("up", args, self.env, self.tmp / "up.log", self.cwd)
        self.processes.append(proc)
        proc.wait_for(" ready.", timeout=60)
        return proc

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.text()}" for p in self.processes)

    def close(self) -> None:
        for proc in self.watched:
            proc._stop.set()
        for proc in self.watched:
            proc.stop()
        if self.redis.process is not None:
            self.redis.process.send_signal(signal.SIGCONT)  # in case a scenario left it stopped
        super().close()
        if self.sentinel is not None:
            self.sentinel.stop()
        if self.store_cluster is not None:
            self.store_cluster.cleanup()


class Up(Proc):
    """``scheduled-prompts up``: its worker and beat run in sessions of their own."""

    def children(self) -> list[int]:
        return [pid for pid, (parent, _) in _proc_table().items() if parent == self.popen.pid]

    def restarts(self) -> int:
        return self.text().count("[up] restarting")

    def stop(self) -> None:
        if self.popen.poll() is None:
            children = self.children()
            self.popen.send_signal(signal.SIGTERM)  # up stops its children in order
            try:
                self.popen.wait(45)
            except subprocess.TimeoutExpired:
                for pid in {*children, *self.children()}:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)  # each child leads its own group
                self.popen.kill()
                self.popen.wait()
        self._out.close()


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live process, from /proc (Linux)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        if fields and fields[0] != "Z":  # a zombie is already dead
            table[int(name)] = (int(fields[1]), int(fields[2]))
    return table
