"""The delivery log: each runner step once, in the same script that records it, failures
kept apart, both streams bounded whatever the traffic."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis

import scheduled_prompts as sp
from scheduled_prompts import api, engine, history
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.claims import Claimed, Claims
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.errors import DeliveryError, PermanentDeliveryError
from scheduled_prompts.metrics import Observation
from scheduled_prompts.occurrences import Delivery


def scheduled(
    platform: str = "discord", text: str = "hello"
) -> tuple[sp.ScheduledPrompt, Delivery]:
    p = sp.schedule_prompt(text, user_id="u1", platform=platform, at=utcnow() + timedelta(hours=1))
    assert p.next_run_at is not None
    return p, Delivery(p.id, to_ms(p.next_run_at))


def recent(prompt_id: str | None = None, limit: int = 10) -> list[history.Entry]:
    return api.run(history.recent(scope(), prompt_id, limit))


def failures(limit: int = 50) -> list[history.Entry]:
    return api.run(history.failures(scope(), limit))


def test_a_delivery_is_logged_with_its_lateness_and_runner_time(
    r: redis.Redis, runner: Any
) -> None:
    runner()
    p, d = scheduled()
    assert p.next_run_at is not None
    late = p.next_run_at + timedelta(seconds=0.25)
    assert engine.deliver(get_redis(), scope(), d, now=late).outcome.value == "delivered"
    (entry,) = recent(p.id)
    assert (entry.prompt_id, entry.user_id, entry.platform) == (p.id, "u1", "discord")
    assert (entry.outcome, entry.occurrence, entry.trigger) == ("delivered", p.next_run_at, False)
    assert entry.lateness == pytest.approx(0.25)
    assert entry.runner_seconds is not None and entry.runner_seconds >= 0
    assert entry.error is None
    assert abs((entry.at - utcnow()).total_seconds()) < 60
    assert failures() == []
    # The same message again: nothing new in the log.
    engine.deliver(get_redis(), scope(), d, now=late)
    assert len(recent()) == 1


def test_retries_and_failures_go_to_both_logs_with_the_error_but_not_the_prompt(
    r: redis.Redis, runner: Any
) -> None:
    runner(DeliveryError("rate limited by the platform"))
    p, d = scheduled(text="my secret plan")
    assert p.next_run_at is not None
    engine.deliver(get_redis(), scope(), d, now=p.next_run_at)
    runner(PermanentDeliveryError("channel gone; text was: my secret plan"))
    engine.deliver(get_redis(), scope(), d, attempt=2, now=p.next_run_at + timedelta(seconds=3))
    steps = recent(p.id)
    assert [e.outcome for e in steps] == ["failed", "retried"]  # newest first
    assert "rate limited by the platform" in (steps[1].error or "")
    assert steps[1].lateness is None and steps[0].lateness == pytest.approx(3)
    assert [e.outcome for e in failures()] == ["failed", "retried"]
    assert all("my secret plan" not in (e.error or "") for e in steps)
    assert sp.get_prompt(p.id).last_error == steps[0].error  # type: ignore[union-attr]


def test_a_trigger_and_a_missed_occurrence_are_logged(r: redis.Redis, runner: Any) -> None:
    runner()
    p = sp.schedule_prompt(
        "late one", user_id="u1", platform="discord", at=utcnow() + timedelta(hours=1),
        misfire_grace_seconds=5,
    )  # fmt: skip
    assert p.next_run_at is not None
    missed = engine.deliver(
        get_redis(), scope(), Delivery(p.id, to_ms(p.next_run_at)),
        now=p.next_run_at + timedelta(seconds=60),
    )  # fmt: skip
    assert missed.outcome.value == "missed"
    q, _ = scheduled()
    key = sp.trigger_prompt(q.id)
    assert engine.deliver(get_redis(), scope(), Delivery.from_key(key)).outcome.value == "delivered"
    (skip,) = recent(p.id)
    assert skip.outcome == "skipped" and "misfire_grace_seconds" in (skip.error or "")
    (trig,) = recent(q.id)
    assert trig.trigger and trig.outcome == "delivered"


def test_a_replayed_commit_logs_once(r: redis.Redis) -> None:
    p, d = scheduled()
    at = p.next_run_at
    assert at is not None
    claims = Claims(get_redis(), scope())
    (claimed,) = claims.claim([d], at)
    assert isinstance(claimed, Claimed)

    def change(rec: sp.ScheduledPrompt) -> sp.ScheduledPrompt:
        return rec.replace(run_count=rec.run_count + 1, version=rec.version + 1, updated_at=at)

    step = Observation("delivered", "discord", "once", 0.01, 0.02, p.id, "u1", d.occurrence_ms)
    claims.commit([(claimed, change)], [step])
    claims.commit([(claimed, change)], [step])  # as after a reply lost to a connection error
    assert [e.outcome for e in recent(p.id)] == ["delivered"]


def test_both_logs_stay_bounded(r: redis.Redis, redis_url: str, runner: Any) -> None:
    sp.configure(redis_url=redis_url, delivery_log_length=100, failure_log_length=20)
    r = get_redis()
    runner(PermanentDeliveryError("no"))
    for _ in range(300):
        _, d = scheduled()
        engine.deliver(get_redis(), scope(), d, now=utcnow() + timedelta(hours=1))
    keys = scope().keys
    # MAXLEN ~ trims whole stream nodes (100 entries by default): never past cap + 100.
    assert 100 <= r.xlen(keys.log) <= 200
    assert 20 <= r.xlen(keys.failures) <= 120
    assert len(recent(limit=500)) == r.xlen(keys.log)


def test_a_length_of_zero_keeps_no_log(r: redis.Redis, redis_url: str, runner: Any) -> None:
    sp.configure(redis_url=redis_url, delivery_log_length=0, failure_log_length=0)
    r = get_redis()
    runner(DeliveryError("later"))
    p, d = scheduled()
    engine.deliver(get_redis(), scope(), d, now=p.next_run_at)
    assert r.exists(scope().keys.log, scope().keys.failures) == 0
    assert recent() == [] and failures() == []


def test_one_prompts_steps_are_found_behind_many_others(
    r: redis.Redis, runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "_PAGE", 7)
    runner()
    first, d = scheduled()
    engine.deliver(get_redis(), scope(), d, now=first.next_run_at)
    for _ in range(30):
        _, other = scheduled()
        engine.deliver(get_redis(), scope(), other, now=utcnow() + timedelta(hours=1))
    (entry,) = recent(first.id)
    assert entry.prompt_id == first.id
    assert recent("no-such-prompt") == []
