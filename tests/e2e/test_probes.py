"""``scheduled-prompts doctor --probe liveness|readiness`` against a real worker: live
while its consumer takes pulses (even with the pool busy), not live when it stops taking
them, live again after a Redis restart; readiness follows Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import scheduled_prompts as sp
from support.cluster import Cluster

pytestmark = pytest.mark.timeout(180)

SCRIPT = Path(sys.executable).parent / "scheduled-prompts"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, pulse_seconds=0.5, pulse_dir=str(tmp_path / "pulse"))
    try:
        yield c
    finally:
        c.close()


def probe(cluster: Cluster, kind: str, *extra: str) -> tuple[int, str]:
    done = subprocess.run(
        [str(SCRIPT), "doctor", "--probe", kind, *extra],
        check=False,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout  # one line, for a health-check log
    return done.returncode, lines[0]


def wait_probe(cluster: Cluster, kind: str, status: int, *extra: str) -> str:
    """Probe until it exits with ``status`` (generous deadline: the machine may be busy)."""
    deadline = time.monotonic() + 60
    while True:
        code, line = probe(cluster, kind, *extra)
        if code == status:
            return line
        assert time.monotonic() < deadline, f"{kind} still {code}: {line}"
        time.sleep(0.2)


def test_no_worker_is_not_live_but_the_store_makes_it_ready(cluster: Cluster) -> None:
    code, line = probe(cluster, "liveness")
    assert (code, line) == (1, "not live: no worker runs here (no pulse file of a running worker)")
    code, line = probe(cluster, "readiness")
    assert (code, line) == (0, "ready: no worker here")


def test_liveness_follows_the_consumer_taking_pulses(cluster: Cluster) -> None:
    worker = cluster.worker("pw")
    line = wait_probe(cluster, "liveness", 0, "--missed", "4")
    assert line.startswith("live: pw@")
    assert wait_probe(cluster, "readiness", 0).startswith("ready: pw@")

    # The main process stops (its event loop with it): no pulse is taken any more.
    os.kill(worker.popen.pid, signal.SIGSTOP)
    try:
        line = wait_probe(cluster, "liveness", 1, "--missed", "4")
        assert line.startswith("not live: pw@")
        assert "its consumer is not taking messages" in line
        assert "(limit 4 x 0.5s)" in line
    finally:
        os.kill(worker.popen.pid, signal.SIGCONT)
    wait_probe(cluster, "liveness", 0, "--missed", "4")


def test_a_busy_pool_does_not_hold_pulses_back(cluster: Cluster) -> None:
    # Both pool processes sit in runner calls for far longer than the liveness limit.
    env = {**cluster.env, "SP_TEST_RUNNER_SLEEP": "8"}
    cluster.worker("pw", concurrency=2, env=env)
    prompts = [
        sp.schedule_prompt(f"slow {i}", user_id="u", platform="p", delay=0.2) for i in range(2)
    ]
    cluster.wait_until(lambda: len(cluster.calls("start")) == 2, 60, "two runner calls started")
    keys = {c["key"] for c in cluster.calls("start")}
    assert {k.partition(":")[0] for k in keys} == {p.id for p in prompts}
    # Every probe while both calls run says live: 8 s of runner against a 2 s limit.
    checked = 0
    while not cluster.calls("end"):
        code, line = probe(cluster, "liveness", "--missed", "4")
        assert code == 0, line
        checked += 1
    assert checked >= 1


def test_the_same_worker_is_live_again_after_a_redis_restart(cluster: Cluster) -> None:
    worker = cluster.worker("pw")
    wait_probe(cluster, "liveness", 0, "--missed", "4")
    cluster.redis.stop()
    line = wait_probe(cluster, "readiness", 1)
    assert line.startswith("not ready: Redis unreachable at redis://127.0.0.1:")
    wait_probe(cluster, "liveness", 1, "--missed", "4")
    cluster.redis.start()
    wait_probe(cluster, "liveness", 0, "--missed", "4")
    assert wait_probe(cluster, "readiness", 0).startswith("ready: pw@")
    assert worker.popen.poll() is None  # the same process, never restarted
