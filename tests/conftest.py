from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from hypothesis import HealthCheck, settings

import scheduled_prompts
from scheduled_prompts.connection import get_redis
from support.recording_runner import MemoryRunner
from support.redis_cluster import RedisCluster
from support.redis_server import RedisServer

# No wall-clock limits in property tests: the suite must pass on a loaded machine, where
# one example can take longer than Hypothesis' 200 ms deadline, or generating data
# longer than its "too slow" health check allows, with nothing wrong (pytest-timeout
# still bounds every test).
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server started for this test session (never the machine's own)."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """Settings pointed at the suite's server, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()  # ours alone: the suite started this server
    client.close()
    scheduled_prompts.configure(redis_url=redis_server.url)
    yield redis_server.url
    scheduled_prompts.configure()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-primary Redis Cluster started for this test session (tests using it share the
    xdist group "cluster", so one process starts it)."""
    with RedisCluster(primaries=3) as made:
        yield made


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster, redis_server: RedisServer) -> Iterator[str]:
    """Settings pointed at the suite's cluster (the store, emptied) and its plain server
    (the broker, emptied): a cluster cannot be the broker."""
    redis_cluster.flush()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    scheduled_prompts.configure(redis_url=redis_cluster.url, broker_url=redis_server.url)
    yield redis_cluster.url
    scheduled_prompts.configure()


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    """The store's own client (decoded strings), on the emptied test server."""
    return get_redis()


def key_count(client: redis.Redis) -> int:
    return int(client.dbsize())


@pytest.fixture
def runner(redis_url: str) -> Iterator[Callable[..., MemoryRunner]]:
    """``runner(error=None)`` installs an in-process runner for every platform (raising
    ``error`` on each call, if given) and returns it; none is left installed after."""

    def install(error: Exception | None = None) -> MemoryRunner:
        installed = MemoryRunner(error)
        scheduled_prompts.set_bot_runner(installed)
        return installed

    yield install
    scheduled_prompts.set_bot_runner(None)


@pytest.fixture
def memory_runner(runner: Callable[..., MemoryRunner]) -> MemoryRunner:
    """An in-process runner installed for every platform (its calls kept), on the emptied
    test server."""
    return runner()
