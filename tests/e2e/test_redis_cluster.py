"""End to end on a Redis Cluster store: real ``celery worker`` and ``beat`` processes, a
3-primary cluster started on loopback, RabbitMQ as broker where one answers (else a plain
Redis), and a plain ``celery -A scheduled_prompts worker`` refusing a cluster broker.

As in the other end-to-end tests, every wait is a poll for an event with a generous cap;
what is checked is what was delivered, never how late.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import kombu
import pytest

import scheduled_prompts as sp
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.connection import get_redis, scope
from support.cluster import REPO, Cluster
from support.redis_cluster import RedisCluster
from support.redis_server import RedisServer

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("rabbitmq")]

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def on_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Workers and beat whose store is a fresh 3-primary cluster; the broker RabbitMQ
    with a quorum queue when it answers, else the harness's plain Redis. The test's own
    process schedules with the same settings (a quorum queue is declared by senders
    too)."""
    with RedisCluster(primaries=3) as store:
        broker = RedisServer().start()
        rabbit = _rabbitmq_answers()
        made = Cluster(
            tmp_path,
            redis=broker,
            redis_url=store.url,
            broker_url=RABBITMQ if rabbit else broker.url,
            **({"queue_type": "quorum"} if rabbit else {}),
        )
        try:
            yield made
        finally:
            made.close()
            if rabbit:  # the machine's RabbitMQ is shared: leave no queue behind
                with kombu.Connection(RABBITMQ) as connection:
                    connection.default_channel.queue_delete(made.settings["queue"])


def test_worker_and_beat_deliver_every_shards_prompts_once(on_cluster: Cluster) -> None:
    on_cluster.worker()
    on_cluster.beat()
    at = utcnow().replace(microsecond=0) + timedelta(seconds=4)
    # Due together, over 25 users: many shards, batches per shard.
    together = sp.schedule_many(
        [{"prompt": f"p{i}", "user_id": f"u{i % 25}", "platform": "e2e", "at": at}
         for i in range(300)]
    )  # fmt: skip
    # Spread out: promoted by beat's ticks from every shard.
    later = [
        sp.schedule_prompt(f"later {i}", user_id=f"v{i}", platform="e2e", delay=6 + i * 0.2)
        for i in range(20)
    ]
    keys = {f"{p.id}:{to_ms(p.next_run_at)}" for p in [*together, *later] if p.next_run_at}
    on_cluster.wait_for_keys(keys, timeout=120)
    assert not on_cluster.duplicates()
    assert {c["key"] for c in on_cluster.calls()} == keys
    statuses = {sp.get_prompt(p.id).status for p in [*together, *later]}  # type: ignore[union-attr]
    assert statuses == {sp.Status.EXECUTED}
    homes = {scope().of_user(p.user_id).number for p in together}
    assert len(homes) > 3
    # Beat's ticks reached the store: shard 0 holds the tick time.
    assert get_redis().get(scope().shard(0).keys.beat) is not None


def test_a_worker_refuses_a_cluster_as_its_broker(tmp_path: Path) -> None:
    env = {
        "PATH": str(Path(sys.executable).parent),
        "PYTHONPATH": str(REPO),
        "SCHEDULED_PROMPTS_REDIS_URL": "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/",
    }
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "scheduled_prompts", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "a Redis Cluster cannot be the Celery broker" in output, output[-3000:]
    assert "set SCHEDULED_PROMPTS_BROKER_URL to RabbitMQ (amqp://...)" in output
