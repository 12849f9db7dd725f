"""The benchmarks stay in step with the package: every module imports, and the peers'
Celery app is configured from the package's own Celery settings (the benchmarks
themselves run with ``make bench``, not in the suite)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench
import bench.faults
from bench import peers


def _modules() -> list[str]:
    found = []
    for package in (bench, bench.faults):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if not info.ispkg and info.name != "bench.__main__":
                found.append(info.name)
    return sorted(found)


@pytest.mark.parametrize("name", _modules())
def test_every_benchmark_module_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} says what it measures"


def test_the_peers_app_takes_the_broker_and_settings_of_ours(redis_url: str) -> None:
    peers.configure_peers(queue="bench-peers-check")
    assert peers.app.conf.broker_url == redis_url
    assert peers.app.conf.task_default_queue == "bench-peers-check"
    assert peers.app.conf.task_acks_late is True
    assert peers.app.conf.beat_schedule == {}
