"""Delivery metrics counted in Redis by the steps that decide them: each outcome once,
replayed steps not again, histograms with their bucket and sum."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

import scheduled_prompts as sp
from scheduled_prompts import engine, metrics
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.claims import Claimed, Claims
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.errors import DeliveryError, PermanentDeliveryError
from scheduled_prompts.occurrences import Delivery


def counts(client: redis.Redis) -> dict[tuple[str, ...], float]:
    return metrics.decode(client.hgetall(scope().keys.metrics))


def due(at: datetime, platform: str = "discord", cron: str | None = None) -> Delivery:
    if cron is None:
        p = sp.schedule_prompt("hello", user_id="u", platform=platform, at=at)
    else:
        p = sp.schedule_prompt("hello", user_id="u", platform=platform, cron=cron)
    assert p.next_run_at is not None
    return Delivery(p.id, to_ms(p.next_run_at))


def test_a_delivery_counts_its_outcome_lateness_and_runner_time_once(
    redis_url: str, runner: Any
) -> None:
    r = runner()
    at = utcnow() + timedelta(seconds=30)
    d = due(at)
    result = engine.deliver(get_redis(), scope(), d, now=at + timedelta(seconds=0.3))
    assert result.outcome.value == "delivered" and len(r.calls) == 1
    got = counts(get_redis())
    assert got[("deliveries", "delivered", "discord")] == 1
    assert got[("lateness", "once", "discord", "0.5")] == 1  # 0.3 s: the 0.5 s bucket
    assert got[("lateness_sum", "once", "discord")] == pytest.approx(0.3)
    runner_buckets = [k for k in got if k[0] == "runner"]
    assert sum(got[k] for k in runner_buckets) == 1
    assert got[("runner_sum", "discord")] >= 0
    # The same message again (a broker redelivery): no second call, counted as such.
    again = engine.deliver(get_redis(), scope(), d, now=at + timedelta(seconds=1))
    assert again.outcome.value == "skipped" and len(r.calls) == 1
    got = counts(get_redis())
    assert got[("deliveries", "delivered", "discord")] == 1
    assert got[("deliveries", "redelivered", "discord")] == 1


def test_a_commit_replayed_after_a_lost_reply_counts_nothing_twice(redis_url: str) -> None:
    at = utcnow() + timedelta(seconds=30)
    d = due(at)
    client, ctx = get_redis(), scope()
    claims = Claims(client, ctx)
    (claimed,) = claims.claim([d], at)
    assert isinstance(claimed, Claimed)

    def change(r: sp.ScheduledPrompt) -> sp.ScheduledPrompt:
        return r.replace(run_count=r.run_count + 1, version=r.version + 1, updated_at=at)

    seen = metrics.Observation("delivered", "discord", "once", lateness=0.02, runner_seconds=0.1)
    claims.commit([(claimed, change)], [seen])
    claims.commit([(claimed, change)], [seen])  # as after a reply lost to a connection error
    got = counts(client)
    assert got[("deliveries", "delivered", "discord")] == 1
    assert got[("lateness", "once", "discord", "0.025")] == 1
    assert got[("runner", "discord", "0.1")] == 1


def test_retries_and_failures_are_counted_per_attempt_and_once(redis_url: str, runner: Any) -> None:
    runner(DeliveryError("try later"))
    at = utcnow() + timedelta(seconds=30)
    d = due(at, platform="telegram")
    first = engine.deliver(get_redis(), scope(), d, now=at)
    assert first.outcome.value == "retry"
    second = engine.deliver(get_redis(), scope(), d, attempt=2, now=at + timedelta(seconds=3))
    assert second.outcome.value == "retry"
    runner(PermanentDeliveryError("gone for good"))
    last = engine.deliver(get_redis(), scope(), d, attempt=3, now=at + timedelta(seconds=9))
    assert last.outcome.value == "failed"
    got = counts(get_redis())
    assert got[("deliveries", "retried", "telegram")] == 2
    assert got[("deliveries", "failed", "telegram")] == 1
    assert ("deliveries", "delivered", "telegram") not in got
    # Three runner calls timed; only the final outcome has a lateness.
    assert sum(v for k, v in got.items() if k[0] == "runner") == 3
    assert sum(v for k, v in got.items() if k[0] == "lateness") == 1


def test_an_occurrence_no_longer_due_is_skipped_once_however_many_messages(
    redis_url: str, runner: Any
) -> None:
    r = runner()
    at = utcnow() + timedelta(seconds=30)
    d = due(at, platform="slack")
    # In flight (as a tick would leave it), then cancelled before its time.
    get_redis().zadd(scope().keys.inflight, {d.key: to_ms(at) + 60_000})
    sp.cancel_prompt(d.prompt_id)
    for _ in range(3):
        assert engine.deliver(get_redis(), scope(), d, now=at).outcome.value == "skipped"
    assert r.calls == []
    got = counts(get_redis())
    assert got[("deliveries", "skipped", "slack")] == 1


def test_a_tick_records_its_duration_and_when_it_ran(redis_url: str) -> None:
    now = utcnow()
    engine.tick(get_redis(), scope(), lambda batch: None, now=now)
    engine.tick(get_redis(), scope(), lambda batch: None, now=now + timedelta(seconds=1))
    got = counts(get_redis())
    assert sum(v for k, v in got.items() if k[0] == "tick") == 2
    assert got[("tick_sum",)] > 0
    assert int(get_redis().get(scope().keys.beat)) == to_ms(now + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, "0.005"), (0.005, "0.005"), (0.0051, "0.01"), (899.0, "900.0"), (901.0, "+Inf")],
)
def test_a_value_falls_in_the_smallest_bucket_at_or_above_it(value: float, expected: str) -> None:
    assert metrics.bucket(value, metrics.LATENESS_BUCKETS) == expected


def test_fields_written_by_lua_and_python_for_one_series_are_read_as_one() -> None:
    raw = {
        metrics.field("deliveries", "skipped", "a/b"): "2",
        '["deliveries","skipped","a\\/b"]': "3",  # cjson escapes "/"
        "not json": "9",
    }
    assert metrics.decode(raw) == {("deliveries", "skipped", "a/b"): 5.0}
