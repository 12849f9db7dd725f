"""The fault-injection suite in quick mode (60 prompts over ~15 s per scenario): real
worker, beat and redis-server processes, a recording runner, one fault each. Workers and
beats run plain, without a supervisor: none may exit because of the fault.

Every expected occurrence must be delivered, and a runner call may repeat (same
idempotency key) only when the call before it was cut off by a kill of its worker or of
Redis before its commit landed (``bench.faults.measure``). Scenarios marked slow run
only with ``SP_FAULTS=1``; ``python -m bench.faults.run`` runs the full-size suite.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from bench.faults.harness import Scenario, execute
from bench.faults.scenarios import SCENARIOS
from bench.faults.workload import QUICK

pytestmark = pytest.mark.timeout(300)

ALL = os.environ.get("SP_FAULTS") == "1"


def _marks(s: Scenario) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.skipif(s.slow and not ALL, reason="slow: set SP_FAULTS=1")]
    if s.name.startswith("rabbitmq"):
        # The machine's RabbitMQ is shared: its stop must not hit another test using it.
        marks.append(pytest.mark.xdist_group("rabbitmq"))
    return marks


def _params() -> list[Any]:
    return [pytest.param(s, id=s.name, marks=_marks(s)) for s in SCENARIOS]


@pytest.mark.parametrize("scenario", _params())
def test_every_occurrence_delivered_and_repeats_only_after_a_kill(scenario: Scenario) -> None:
    reason = scenario.unavailable()
    if reason is not None:
        pytest.skip(reason)
    r = execute(scenario, QUICK)
    shown = json.dumps(r, indent=1)[:6000]
    assert r["process_exits"] == 0, shown  # plain workers and beats: none gave up
    assert r["missing"] == 0, shown
    assert not r["unexplained_repeats"], shown
    assert not r["unexpected_keys"], shown
    assert r["settled"], shown  # every one-time prompt executed, nothing left in flight
    # The fault really happened where it was meant to.
    if scenario.name.startswith("worker-kill9"):
        assert r["interrupted_calls"] >= 1, shown
    if scenario.name == "visibility-timeout":
        assert r["deliver_messages_received"] > r["expected"], shown
    if scenario.name == "flaky-runner":
        assert r["runner_failures"] >= 1, shown
    if scenario.name == "redis-lost-second":
        assert r["acknowledged_then_lost"], shown
    if scenario.name == "sentinel-failover":
        # The replica was behind: what the primary alone acknowledged is gone.
        assert r["acknowledged_then_lost"], shown
    if scenario.name == "sentinel-failover-min-replicas-1":
        # Nothing is acknowledged without the replica: the callers were told instead.
        assert r["acknowledged_then_lost"] == [], shown
        assert r["refused"] >= 1, shown
