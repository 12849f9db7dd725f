"""Per-platform rate and concurrency limits, enforced by the claim on Redis's clock: over a
limit an occurrence waits (never dropped, never a failure), in the order it was claimed,
and other platforms go on."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
import redis

import scheduled_prompts as sp
from scheduled_prompts import api, engine, exporter, metrics
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.claims import Claimed, Claims
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.limits import Rate, parse_concurrency, parse_rates
from scheduled_prompts.occurrences import Delivery
from scheduled_prompts.outcomes import Outcome
from scheduled_prompts.settings import settings_from_env
from support.recording_runner import MemoryRunner


def limited(redis_url: str, rates: str | None = None, concurrency: str | None = None) -> None:
    sp.configure(redis_url=redis_url, rate_limits=rates, concurrency_limits=concurrency)


def due_together(n: int, platform: str, at_seconds: float = 3600) -> list[Delivery]:
    at = utcnow() + timedelta(seconds=at_seconds)
    made = sp.schedule_many(
        [{"prompt": f"p{i}", "user_id": f"u{i}", "platform": platform, "at": at} for i in range(n)]
    )
    return [Delivery(p.id, to_ms(at)) for p in made]


def elapse(client: redis.Redis, platform: str, ms: int) -> None:
    """As if ``ms`` passed for a rate limit: its two timestamps moved back (a slot held
    is moved back by the caller)."""
    key = scope().keys.rate(platform)
    for k in (key, key + ":admitted"):
        client.set(k, float(client.get(k) or 0) - ms)


# --- settings -------------------------------------------------------------------------


def test_rates_and_caps_are_read_with_their_units_and_bursts() -> None:
    assert parse_rates("discord=50/s, telegram=20/m:5 ,slack=100/h") == {
        "discord": Rate(50, 1.0),
        "telegram": Rate(20, 60.0, 5),
        "slack": Rate(100, 3600.0),
    }
    assert parse_rates("") == {} and parse_rates(None) == {}
    assert parse_concurrency("discord=4,web=1") == {"discord": 4, "web": 1}
    s = settings_from_env({"SCHEDULED_PROMPTS_RATE_LIMITS": "telegram=20/m:5"})
    assert s.limits.rates["telegram"].interval_ms == 3000
    assert str(s.limits.rates["telegram"]) == "20/m:5"


@pytest.mark.parametrize(
    ("var", "raw", "says"),
    [
        ("RATE_LIMITS", "discord=50", "is not platform=N/s, N/m or N/h"),
        ("RATE_LIMITS", "discord=50/d", "is not platform=N/s, N/m or N/h"),
        ("RATE_LIMITS", "discord=0/s", "must be >= 1"),
        ("RATE_LIMITS", "discord=5/s:0", "must be >= 1"),
        ("RATE_LIMITS", "=5/s", "is not platform=N/s"),
        ("RATE_LIMITS", "discord=5/s,discord=1/m", "given twice"),
        ("RATE_LIMITS", "discord=-5/s", "is not platform=N/s"),
        ("CONCURRENCY_LIMITS", "discord=0", "N a whole number >= 1"),
        ("CONCURRENCY_LIMITS", "discord=two", "N a whole number >= 1"),
        ("CONCURRENCY_LIMITS", "discord", "is not platform=N"),
    ],
)
def test_malformed_limits_fail_at_start_naming_the_setting_and_the_form(
    var: str, raw: str, says: str
) -> None:
    with pytest.raises(ValueError, match=f"SCHEDULED_PROMPTS_{var}: .*{says}"):
        settings_from_env({f"SCHEDULED_PROMPTS_{var}": raw})
    with pytest.raises(ValueError, match=says):
        settings_from_env({}, **{var.lower(): raw})


# --- rate ----------------------------------------------------------------------------


def test_over_the_rate_occurrences_wait_in_order_and_other_platforms_go_on(
    redis_url: str, memory_runner: MemoryRunner
) -> None:
    limited(redis_url, rates="discord=5/s")
    slow = due_together(6, "discord")
    free = due_together(4, "telegram")
    mixed = [d for pair in zip(slow, free, strict=False) for d in pair] + slow[4:]
    results = engine.deliver_many(get_redis(), scope(), mixed)
    by_key = {d.key: r for d, r in zip(mixed, results, strict=True)}
    assert all(by_key[d.key].outcome is Outcome.DELIVERED for d in free)
    assert by_key[slow[0].key].outcome is Outcome.DELIVERED
    waiting = [by_key[d.key] for d in slow[1:]]
    assert all(r.outcome is Outcome.LIMITED for r in waiting)
    # One slot every 200 ms, in the order claimed, each held by its occurrence.
    slots = [r.slot_ms for r in waiting]
    assert all(s is not None for s in slots)
    gaps = [b - a for a, b in itertools.pairwise(slots)]  # type: ignore[operator]
    assert all(199 <= g <= 201 for g in gaps), gaps
    waits = [r.retry_in for r in waiting]
    assert waits == sorted(waits) and 0 < waits[0] <= 0.201
    # Waiting is neither a failure nor a delivery, and the record is untouched.
    assert [c["prompt_id"] for c in memory_runner.calls].count(slow[1].prompt_id) == 0
    record = sp.get_prompt(slow[1].prompt_id)
    assert record is not None and record.status is sp.Status.SCHEDULED
    assert record.failure_count == 0 and record.last_error is None
    counted = metrics.decode(get_redis().hgetall(scope().keys.metrics))
    assert counted[("limited", "discord", "rate")] == 5
    assert ("deliveries", "failed", "discord") not in counted
    shown = {
        (f.name, tuple(s.labels.values()), s.value)
        for f in exporter.families(api.run(metrics.snapshot(scope(), utcnow())))
        for s in f.samples
        if f.name == "scheduled_prompts_limited"
    }
    assert shown == {("scheduled_prompts_limited", ("discord", "rate"), 5.0)}


def test_an_occurrence_comes_back_with_its_slot_and_takes_no_other(
    redis_url: str, memory_runner: MemoryRunner
) -> None:
    limited(redis_url, rates="discord=1/m")
    first, second = due_together(2, "discord")
    client, keys = get_redis(), scope().keys
    assert engine.deliver(client, scope(), first).outcome is Outcome.DELIVERED
    held = engine.deliver(client, scope(), second)
    assert held.outcome is Outcome.LIMITED and held.slot_ms is not None
    assert 59 <= held.retry_in <= 60
    tat = client.get(keys.rate("discord"))
    # Too early (a message ahead of its time): waits again for the same slot.
    again = engine.deliver(client, scope(), second, slot_ms=held.slot_ms)
    assert (again.outcome, again.slot_ms) == (Outcome.LIMITED, held.slot_ms)
    assert client.get(keys.rate("discord")) == tat  # no second reservation
    # A minute later, at its slot: delivered, without a new reservation.
    elapse(client, "discord", 60_000)
    tat = client.get(keys.rate("discord"))
    done = engine.deliver(client, scope(), second, slot_ms=held.slot_ms - 60_000)
    assert done.outcome is Outcome.DELIVERED
    assert client.get(keys.rate("discord")) == tat
    assert len(memory_runner.calls) == 2


def test_a_burst_goes_at_once_then_the_rate_spaces_the_rest(
    redis_url: str, memory_runner: MemoryRunner
) -> None:
    limited(redis_url, rates="discord=5/s:3")
    results = engine.deliver_many(get_redis(), scope(), due_together(6, "discord"))
    outcomes = [r.outcome for r in results]
    assert outcomes == [Outcome.DELIVERED] * 3 + [Outcome.LIMITED] * 3
    assert [round(r.retry_in, 1) for r in results[3:]] == [0.2, 0.4, 0.6]


def test_waiting_pushes_back_the_redrive_deadline_and_is_not_a_misfire(
    redis_url: str, memory_runner: MemoryRunner
) -> None:
    limited(redis_url, rates="discord=1/h")
    at = utcnow() + timedelta(hours=1)
    made = [
        sp.schedule_prompt(f"p{i}", user_id="u", platform="discord", at=at, misfire_grace_seconds=5)
        for i in range(2)
    ]
    first, second = (Delivery(p.id, to_ms(at)) for p in made)
    client, keys = get_redis(), scope().keys
    client.zadd(keys.inflight, {second.key: to_ms(at) + 60_000})
    assert engine.deliver(client, scope(), first, now=at).outcome is Outcome.DELIVERED
    held = engine.deliver(client, scope(), second, now=at)
    assert held.outcome is Outcome.LIMITED and held.limited_since_ms == to_ms(at)
    deadline = client.zscore(keys.inflight, second.key)
    assert deadline is not None and deadline >= to_ms(at) + held.retry_in * 1000
    # An hour later it gets its slot: delivered, though far past its misfire grace.
    later = at + timedelta(hours=1)
    elapse(client, "discord", 3_600_000)
    assert held.slot_ms is not None
    done = engine.deliver(
        client, scope(), second, now=later, slot_ms=held.slot_ms - 3_600_000,
        limited_since_ms=held.limited_since_ms,
    )  # fmt: skip
    assert done.outcome is Outcome.DELIVERED
    payload = memory_runner.calls[-1]
    assert payload["lateness_seconds"] == pytest.approx(3600)


def test_occurrences_that_come_back_late_together_are_still_spaced_by_the_rate(
    redis_url: str, memory_runner: MemoryRunner
) -> None:
    limited(redis_url, rates="discord=1/m")
    client = get_redis()
    first, *rest = due_together(4, "discord")
    assert engine.deliver(client, scope(), first).outcome is Outcome.DELIVERED
    held = [engine.deliver_many(client, scope(), [d])[0] for d in rest]
    assert [r.outcome for r in held] == [Outcome.LIMITED] * 3
    # Three minutes later all three come back at once (a worker was busy): one goes, the
    # next two wait their turn, keeping their slots.
    elapse(client, "discord", 180_000)
    back = [
        engine.deliver(client, scope(), d, slot_ms=r.slot_ms - 180_000)  # type: ignore[operator]
        for d, r in zip(rest, held, strict=True)
    ]
    assert [r.outcome for r in back] == [Outcome.DELIVERED, Outcome.LIMITED, Outcome.LIMITED]
    assert [r.slot_ms for r in back[1:]] == [r.slot_ms - 180_000 for r in held[1:]]  # type: ignore[operator]
    assert 59 <= back[1].retry_in <= 60 and 59 <= back[2].retry_in <= 60


def test_a_platform_without_limits_never_touches_a_limit_key(
    redis_url: str, memory_runner: MemoryRunner
) -> None:
    limited(redis_url, rates="discord=1/s", concurrency="discord=1")
    engine.deliver_many(get_redis(), scope(), due_together(5, "telegram"))
    assert len(memory_runner.calls) == 5
    assert not list(get_redis().scan_iter(match="sp:rate:*"))
    assert not list(get_redis().scan_iter(match="sp:running:*"))


# --- concurrency -----------------------------------------------------------------------


def test_at_most_n_leases_at_once_and_a_commit_frees_a_slot(
    redis_url: str, memory_runner: MemoryRunner
) -> None:
    limited(redis_url, concurrency="discord=2")
    client, ctx = get_redis(), scope()
    deliveries = due_together(3, "discord")
    claims = Claims(client, ctx)
    taken = claims.claim(deliveries, utcnow())
    assert [type(t).__name__ for t in taken] == ["Claimed", "Claimed", "Result"]
    third = taken[2]
    assert not isinstance(third, Claimed) and third.outcome is Outcome.LIMITED
    assert third.slot_ms is None and 0 < third.retry_in <= 1
    assert client.zcard(ctx.keys.running("discord")) == 2
    # The first finishes: its slot is free for the third.
    first = taken[0]
    assert isinstance(first, Claimed)
    claims.release(first.delivery, None)
    assert engine.deliver(client, ctx, deliveries[2]).outcome is Outcome.DELIVERED
    counted = metrics.decode(client.hgetall(ctx.keys.metrics))
    assert counted[("limited", "discord", "concurrency")] == 1


def test_a_deliverer_that_died_frees_its_slot_when_its_lease_expires(
    redis_url: str, memory_runner: MemoryRunner
) -> None:
    limited(redis_url, concurrency="discord=1")
    client, ctx = get_redis(), scope()
    dead, waiting = due_together(2, "discord")
    (held,) = Claims(client, ctx).claim([dead], utcnow())  # then the worker is killed
    assert isinstance(held, Claimed)
    assert engine.deliver(client, ctx, waiting).outcome is Outcome.LIMITED
    client.pexpire(ctx.keys.lease(dead.prompt_id), 1)  # its lease runs out
    while client.exists(ctx.keys.lease(dead.prompt_id)):
        pass
    assert engine.deliver(client, ctx, waiting).outcome is Outcome.DELIVERED
    assert [c["prompt_id"] for c in memory_runner.calls] == [waiting.prompt_id]
