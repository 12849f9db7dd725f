"""Real ``celery worker`` and ``beat`` processes against a test redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import scheduled_prompts
from support.recording_runner import read_records
from support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]


class Process:
    """A child in its own process group (so ``kill -9`` reaches its pool children)."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
    ) -> None:
        self.name = name
        self.log = log
        self._out = log.open("ab")
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no {needle!r} in {timeout}s:\n{self.text()[-3000:]}"
                )
            time.sleep(0.05)

    def kill9(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._out.close()


class Cluster:
    """One redis-server (store and broker), a recording runner, workers and beats."""

    def __init__(
        self,
        tmp: Path,
        *,
        redis: RedisServer | None = None,
        name: str = "e2e",
        pythonpath: str = str(REPO),
        env: dict[str, str] | None = None,
        celeryconfig: str | None = None,
        **settings: Any,
    ) -> None:
        """``redis``: a started server (default: a new one without persistence);
        ``name`` prefixes the queue; ``env`` is added to the processes' environment;
        ``celeryconfig``: the text of a ``celeryconfig`` module the processes import
        instead of the repository's (they run in a folder of their own)."""
        self.tmp = tmp
        self.cwd = REPO
        if celeryconfig is not None:
            self.cwd = tmp / "conf"
            self.cwd.mkdir(parents=True, exist_ok=True)
            (self.cwd / "celeryconfig.py").write_text(celeryconfig)
            pythonpath = f"{self.cwd}{os.pathsep}{pythonpath}"
        self.redis = redis or RedisServer().start()
        self.records = tmp / "records.jsonl"
        self.settings = {
            "redis_url": self.redis.url,
            "queue": f"{name}-{uuid.uuid4().hex[:8]}",
            "tick_seconds": 1,
            "lease_seconds": 5,
            "runner": "support.recording_runner:RecordingRunner",
            **settings,
        }
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SCHEDULED_PROMPTS_")},
            **{f"SCHEDULED_PROMPTS_{k.upper()}": str(v) for k, v in self.settings.items()},
            "SP_TEST_RECORD_FILE": str(self.records),
            "PYTHONPATH": pythonpath,
            **(env or {}),
        }
        self.processes: list[Process] = []
        scheduled_prompts.configure(**self.settings)

    def _start(self, name: str, args: list[str], env: dict[str, str] | None) -> Process:
        proc = Process(name, args, env or self.env, self.tmp / f"{name}.log", self.cwd)
        self.processes.append(proc)
        return proc

    def worker(
        self, name: str = "w1", *, concurrency: int = 2, env: dict[str, str] | None = None
    ) -> Process:
        proc = self._start(
            name,
            [sys.executable, "-m", "celery", "-A", "scheduled_prompts", "worker",
             "--loglevel=INFO", f"--concurrency={concurrency}", "-n", f"{name}@%h",
             "--without-mingle", "--without-gossip"],
            env,
        )  # fmt: skip
        proc.wait_for(" ready.")
        return proc

    def beat(self, name: str = "beat") -> Process:
        proc = self._start(
            name,
            [sys.executable, "-m", "celery", "-A", "scheduled_prompts", "beat",
             "--loglevel=INFO", "-s", str(self.tmp / f"{name}-schedule")],
            None,
        )  # fmt: skip
        proc.wait_for("beat: Starting")
        return proc

    def calls(self, event: str = "start") -> list[dict[str, Any]]:
        return [r for r in read_records(str(self.records)) if r["event"] == event]

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.text()[-2500:]}" for p in self.processes)
                raise TimeoutError(
                    f"{what} not reached in {timeout}s; calls={self.calls()}\n{logs}"
                )
            time.sleep(0.1)

    def wait_for_keys(self, keys: set[str], timeout: float) -> None:
        """Until the runner returned for every key and each delivery was committed (the
        runner returns before the commit lands: a record read in between is not moved
        on yet)."""
        self.wait_until(
            lambda: keys <= {c["key"] for c in self.calls("end")} and self.committed(keys),
            timeout,
            "deliveries",
        )

    def committed(self, keys: set[str]) -> bool:
        """Whether none of ``keys`` is still in flight in the store (in any shard)."""
        ordered = sorted(keys)
        client = scheduled_prompts.connection.get_redis()
        for shard in scheduled_prompts.connection.scope().every_shard():
            if any(score is not None for score in client.zmscore(shard.keys.inflight, ordered)):
                return False
        return True

    def duplicates(self) -> dict[str, int]:
        counts = Counter(c["key"] for c in self.calls())
        return {k: n for k, n in counts.items() if n > 1}

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        scheduled_prompts.configure()
        self.redis.cleanup()
