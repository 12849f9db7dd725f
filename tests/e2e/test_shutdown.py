"""A warm shutdown waits for the runner calls in progress, not for whole batches: a batch
stops between calls, hands the rest back, and the next worker delivers them once."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import scheduled_prompts as sp
from scheduled_prompts._time import to_ms, utcnow
from support.cluster import Cluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_warm_shutdown_hands_back_the_rest_of_a_batch(cluster: Cluster) -> None:
    # One pool process, runner calls of 2 s: a batch of 12 would keep a warm shutdown
    # waiting for 24 s if it ran to the end.
    env = {**cluster.env, "SP_TEST_RUNNER_SLEEP": "2"}
    first = cluster.worker("w1", concurrency=1, env=env)
    at = utcnow().replace(microsecond=0) + timedelta(seconds=2)
    prompts = sp.schedule_many(
        [{"prompt": f"p{i}", "user_id": "u", "platform": "e2e", "at": at} for i in range(12)]
    )
    keys = {f"{p.id}:{to_ms(at)}" for p in prompts}
    cluster.wait_until(lambda: len(cluster.calls("start")) >= 1, 60, "the first runner call")
    first.popen.send_signal(signal.SIGTERM)
    assert first.popen.wait(60) == 0
    started = {c["key"] for c in cluster.calls("start")}
    # The call in progress finished; no further call started after the shutdown began.
    assert {c["key"] for c in cluster.calls("end")} == started
    assert 1 <= len(started) <= 2, started  # the first call, at most one more in the race
    assert "deliver_batch" in first.text()

    cluster.worker("w2", concurrency=2)
    cluster.wait_for_keys(keys, timeout=90)
    assert not cluster.duplicates()
    assert all(sp.get_prompt(p.id).status is sp.Status.EXECUTED for p in prompts)  # type: ignore[union-attr]
