"""End to end: real ``celery worker`` and ``beat`` processes, a real redis-server, a
recording runner, and prompts scheduled through the public API.

These tests check what is delivered (each key once, nothing cancelled or moved, nothing
lost), never how late: lateness is a timing promise, measured by ``bench/lateness.py``
on an idle machine, while this suite must pass on a loaded one. Every wait is a poll for
an event (a runner call, a log line) with a generous cap.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import scheduled_prompts as sp
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.keys import Keys
from support.cluster import Cluster, Process

pytestmark = pytest.mark.timeout(180)
K = Keys("sp")


def keys_of(prompts: list[sp.ScheduledPrompt]) -> set[str]:
    return {f"{p.id}:{to_ms(p.next_run_at)}" for p in prompts if p.next_run_at}


def schedule_burst(n: int, first: float, spread: float) -> list[sp.ScheduledPrompt]:
    return [
        sp.schedule_prompt(
            f"prompt {i}", user_id=f"u{i % 4}", platform="e2e", delay=first + spread * i / n
        )
        for i in range(n)
    ]


def test_one_time_prompts_fire_once_each(cluster: Cluster) -> None:
    cluster.worker()
    cluster.beat()
    prompts = schedule_burst(20, first=2.0, spread=2.0)
    cluster.wait_for_keys(keys_of(prompts), timeout=90)
    calls = cluster.calls()
    assert not cluster.duplicates()
    assert {c["key"] for c in calls} == keys_of(prompts)
    assert all(sp.get_prompt(p.id).status is sp.Status.EXECUTED for p in prompts)  # type: ignore[union-attr]


def test_prompts_due_at_the_same_instant_go_as_batches_and_fire_once_each(
    cluster: Cluster,
) -> None:
    cluster.worker()
    at = utcnow().replace(microsecond=0) + timedelta(seconds=3)
    prompts = sp.schedule_many(
        [{"prompt": f"p{i}", "user_id": f"u{i % 7}", "platform": "e2e", "at": at}
         for i in range(500)]
    )  # fmt: skip
    cluster.wait_for_keys(keys_of(prompts), timeout=90)
    assert not cluster.duplicates()
    # 500 due together: three batch tasks (200, 200, 100), not 500 deliver tasks.
    log = cluster.processes[0].text()
    assert log.count("scheduled_prompts.deliver_batch[") >= 3
    assert "Task scheduled_prompts.deliver[" not in log


def test_cancel_after_eta_enqueued_never_delivers(cluster: Cluster) -> None:
    cluster.worker()
    doomed = sp.schedule_prompt("never", user_id="u", platform="e2e", delay=2)
    control = sp.schedule_prompt("control", user_id="u", platform="e2e", delay=2.5)
    r = sp.connection.get_redis()  # type: ignore[attr-defined]
    # The ETA task is already queued: the occurrence is in flight.
    assert r.zscore(K.inflight, f"{doomed.id}:{to_ms(doomed.next_run_at)}") is not None  # type: ignore[arg-type]
    sp.cancel_prompt(doomed.id)
    cluster.wait_for_keys(keys_of([control]), timeout=60)
    # The doomed prompt's own task ran too (and found nothing to deliver).
    worker = cluster.processes[0]
    cluster.wait_until(lambda: skipped_tasks(worker) >= 1, 60, "the cancelled prompt's task")
    assert doomed.id not in {c["prompt_id"] for c in cluster.calls()}
    assert sp.get_prompt(doomed.id).status is sp.Status.CANCELLED  # type: ignore[union-attr]


def test_paused_and_rescheduled_prompts_do_not_fire_at_their_old_time(cluster: Cluster) -> None:
    cluster.worker()
    paused = sp.schedule_prompt("paused", user_id="u", platform="e2e", delay=2)
    moved = sp.schedule_prompt("moved", user_id="u", platform="e2e", delay=2)
    sp.pause_prompt(paused.id)
    moved_again = sp.update_prompt(moved.id, delay=4)
    cluster.wait_for_keys(keys_of([moved_again]), timeout=60)
    # Both tasks of the old time ran (and found nothing to deliver).
    worker = cluster.processes[0]
    cluster.wait_until(lambda: skipped_tasks(worker) >= 2, 60, "the tasks of the old time")
    keys = [c["key"] for c in cluster.calls()]
    assert keys == [f"{moved.id}:{to_ms(moved_again.next_run_at)}"]  # type: ignore[arg-type]


def test_kill9_worker_mid_delivery_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    # Runner calls of the first worker last 60 s: the kill (right after two started)
    # cuts them off however slowly this machine runs.
    slow = {**cluster.env, "SP_TEST_RUNNER_SLEEP": "60"}
    worker = cluster.worker("w1", concurrency=2, env=slow)
    cluster.beat()
    prompts = schedule_burst(8, first=1.0, spread=0.5)
    cluster.wait_until(lambda: len(cluster.calls()) >= 2, 60, "deliveries in flight")
    worker.kill9()
    killed_at = time.time()
    in_flight = {c["key"] for c in cluster.calls()} - {c["key"] for c in cluster.calls("end")}
    assert in_flight, "the kill should interrupt at least one runner call"
    cluster.worker("w2", concurrency=2)
    cluster.wait_for_keys(keys_of(prompts), timeout=120)
    assert {c["key"] for c in cluster.calls("end")} == keys_of(prompts)
    # A key may repeat only when its first call was cut off by the kill.
    repeated = set(cluster.duplicates())
    assert repeated <= in_flight
    started_before = {c["key"] for c in cluster.calls() if c["at"] < killed_at}
    assert repeated <= started_before
    for p in prompts:
        assert sp.get_prompt(p.id).status is sp.Status.EXECUTED  # type: ignore[union-attr]


@pytest.fixture
def short_horizon(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, horizon_seconds=2)
    yield c
    c.close()


def test_two_beats_at_once_do_not_duplicate(short_horizon: Cluster) -> None:
    cluster = short_horizon
    cluster.worker()
    cluster.beat("beat-a")
    cluster.beat("beat-b")
    # Beyond the 2 s horizon: only ticks (from both beats) hand these to Celery. The
    # first is 10 s ahead, so no tick reaches it while the 30 are being written.
    prompts = schedule_burst(30, first=10.0, spread=4.0)
    r = sp.connection.get_redis()  # type: ignore[attr-defined]
    assert r.zcard(K.due) == 30
    cluster.wait_for_keys(keys_of(prompts), timeout=90)
    assert not cluster.duplicates()
    assert len(cluster.calls()) == 30


def test_cron_prompt_fires_on_its_minute(cluster: Cluster) -> None:
    cluster.worker()
    cluster.beat()
    p = sp.schedule_prompt("each minute", user_id="u", platform="e2e", cron="* * * * *")
    assert p.next_run_at is not None and p.next_run_at.second == 0
    cluster.wait_for_keys(keys_of([p]), timeout=120)
    (call,) = cluster.calls()
    assert call["occurrence"].endswith(":00.000Z")
    after = sp.get_prompt(p.id)
    assert after is not None and after.run_count == 1 and after.status is sp.Status.ACTIVE
    assert (
        after.next_run_at is not None and (after.next_run_at - p.next_run_at).total_seconds() == 60
    )


def skipped_tasks(worker: Process) -> int:
    """How many ``deliver`` tasks the worker finished finding nothing to deliver."""
    return len(
        re.findall(
            r"Task scheduled_prompts\.deliver\[[^]]+\] succeeded in [^:]*: 'skipped'", worker.text()
        )
    )


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _rabbitmq_answers(), reason="no RabbitMQ answers on 127.0.0.1:5672")
@pytest.mark.xdist_group("rabbitmq")  # never beside the fault scenario that stops it
def test_rabbitmq_broker_delivers(tmp_path: Path) -> None:
    from kombu import Connection

    broker = "amqp://guest:guest@127.0.0.1:5672//"
    cluster = Cluster(tmp_path, broker_url=broker)
    try:
        cluster.worker()
        prompts = schedule_burst(5, first=2.0, spread=1.0)
        cluster.wait_for_keys(keys_of(prompts), timeout=60)
        assert not cluster.duplicates()
        assert "amqp://guest:**@127.0.0.1:5672//" in cluster.processes[0].text()
    finally:
        cluster.close()
        with Connection(broker) as conn:
            conn.default_channel.queue_delete(cluster.settings["queue"])
