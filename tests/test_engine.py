"""The firing engine as plain functions, against a real redis-server: no Celery worker.

``tick`` and ``hydrate`` publish to a recording list; ``deliver`` calls a recording
runner. Time is passed explicitly (``now=``), so no test sleeps across a boundary.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, ClassVar

import pytest
import redis

import scheduled_prompts as sp
from scheduled_prompts import engine, hydration
from scheduled_prompts._time import from_ms, to_iso, to_ms, utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.engine import Outcome
from scheduled_prompts.keys import Keys
from scheduled_prompts.occurrences import Delivery
from scheduled_prompts.plans import run
from scheduled_prompts.store import Scope
from support.redis_server import RedisServer

K = Keys("sp")
LEASE = 60.0
REDRIVE = timedelta(seconds=LEASE + 30)  # lease + the re-drive slack


# --- helpers --------------------------------------------------------------------------


class Recorder:
    """A runner that keeps every payload; raises the queued errors first, one per call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        self.calls.append(copy.deepcopy(payload))
        if self.errors:
            raise self.errors.pop(0)


class PathRunner:
    """Loaded by import path through SCHEDULED_PROMPTS_RUNNER (instantiated by the loader)."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        PathRunner.calls.append(payload)


class AsyncRecorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def handle_webhook(self, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        self.calls.append(payload)


class Env:
    """The store client and context the engine is called with, after ``configure``."""

    def __init__(self, redis_url: str) -> None:
        self.url = redis_url
        self.client: redis.Redis = get_redis()
        self.ctx: Scope = scope()
        self.published: list[Delivery] = []

    def configure(self, **settings: Any) -> Env:
        sp.configure(redis_url=self.url, **settings)
        self.client = get_redis()
        self.ctx = scope()
        return self

    def tick(self, now: datetime) -> list[Delivery]:
        before = len(self.published)
        engine.tick(self.client, self.ctx, self.published.extend, now=now)
        return self.published[before:]

    def deliver(self, delivery: Delivery, now: datetime, attempt: int = 1) -> engine.Result:
        return engine.deliver(self.client, self.ctx, delivery, attempt=attempt, now=now)

    def hydrate(self, now: datetime, **kw: Any) -> tuple[int, list[Delivery]]:
        out: list[Delivery] = []
        count = run(hydration.hydrate(self.ctx, now, **kw), self.client, out.extend)
        return count, out

    def raw(self, prompt: sp.ScheduledPrompt) -> str | None:
        return self.client.get(K.prompt(prompt.id))  # type: ignore[return-value]

    def inflight(self) -> set[str]:
        return set(self.client.zrange(K.inflight, 0, -1))  # type: ignore[arg-type]


@pytest.fixture
def env(redis_url: str) -> Env:
    return Env(redis_url).configure(lease_seconds=LEASE)


@pytest.fixture
def runner() -> Iterator[Recorder]:
    recorder = Recorder()
    sp.set_bot_runner(recorder)
    yield recorder
    sp.set_bot_runner(None)


def once(prompt: str = "call Ana", user: str = "u1", **kw: Any) -> sp.ScheduledPrompt:
    if "at" not in kw:
        kw.setdefault("delay", 600)
    kw.setdefault("platform", "telegram")
    return sp.schedule_prompt(prompt, user_id=user, **kw)


def cron(expr: str = "*/5 * * * *", user: str = "u1", **kw: Any) -> sp.ScheduledPrompt:
    kw.setdefault("platform", "slack")
    return sp.schedule_prompt("summarise my inbox", user_id=user, cron=expr, **kw)


def occurrence(prompt: sp.ScheduledPrompt) -> Delivery:
    assert prompt.next_run_at is not None
    return Delivery(prompt.id, to_ms(prompt.next_run_at))


def get(prompt: sp.ScheduledPrompt) -> sp.ScheduledPrompt:
    found = sp.get_prompt(prompt.id)
    assert found is not None
    return found


def later(seconds: float = 3600) -> datetime:
    """A whole-second instant ``seconds`` from now (beyond the horizon by default)."""
    return utcnow().replace(microsecond=0) + timedelta(seconds=seconds)


# --- tick -----------------------------------------------------------------------------


def test_tick_promotes_exactly_what_is_due_within_horizon_once(env: Env) -> None:
    base = later()
    a = once(at=base)
    b = once(at=base + timedelta(seconds=100))
    far = once(at=base + timedelta(seconds=1000))
    assert env.client.zcard(K.due) == 3 and env.inflight() == set()

    first = env.tick(now=base - timedelta(seconds=250))  # horizon ends at base + 50 s
    assert [d.key for d in first] == [f"{a.id}:{to_ms(base)}"]
    assert env.inflight() == {first[0].key}
    assert env.tick(now=base - timedelta(seconds=250)) == []  # a second tick: nothing new

    second = env.tick(now=base)  # horizon ends at base + 300 s
    assert [d.key for d in second] == [f"{b.id}:{to_ms(b.next_run_at)}"]
    assert second[0].eta == b.next_run_at and not second[0].trigger
    assert env.client.zrange(K.due, 0, -1) == [far.id]
    assert env.client.zscore(K.due, far.id) == to_ms(far.next_run_at)
    assert env.tick(now=base) == []


def test_tick_touches_only_what_is_due_not_stored_far_future_prompts(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    sp.schedule_many(
        {"prompt": f"far {i}", "user_id": "bulk", "platform": "x", "delay": 86_400 + i}
        for i in range(2000)
    )
    due = [once(delay=600 + i) for i in range(3)]
    # A first tick, a day early (nothing due), loads the tick's scripts: the one counted
    # below sends each once, never the NOSCRIPT fallback as well.
    assert env.tick(now=utcnow() - timedelta(days=1)) == []
    commands: list[tuple[Any, ...]] = []
    original = redis.Redis.execute_command

    def spy(self: redis.Redis, *args: Any, **kw: Any) -> Any:
        commands.append(args)
        return original(self, *args, **kw)

    monkeypatch.setattr(redis.Redis, "execute_command", spy)
    published = env.tick(now=utcnow() + timedelta(seconds=400))
    monkeypatch.undo()
    assert sorted(d.prompt_id for d in published) == sorted(p.id for p in due)
    assert env.client.zcard(K.due) == 2000
    # The promote, re-drive and ticked scripts: no record read, no scan of the store.
    assert len(commands) <= 4, [c[:2] for c in commands]
    flat = " ".join(str(a) for c in commands for a in c)
    assert "sp:prompt:" not in flat
    assert not {str(c[0]).upper() for c in commands} & {"SCAN", "KEYS", "MGET", "GET"}


def test_tick_redrives_inflight_occurrence_past_its_deadline_once(env: Env) -> None:
    p = once(delay=600)
    t = p.next_run_at
    (promoted,) = env.tick(now=t - timedelta(seconds=200))
    assert env.client.zscore(K.inflight, promoted.key) == to_ms(t + REDRIVE)

    assert env.tick(now=t + REDRIVE - timedelta(milliseconds=1)) == []  # not yet overdue
    now = t + REDRIVE + timedelta(seconds=1)
    redriven = env.tick(now=now)
    assert [d.key for d in redriven] == [promoted.key]
    assert env.client.zscore(K.inflight, promoted.key) == to_ms(now + REDRIVE)
    assert env.tick(now=now) == []  # the deadline moved: not re-driven again
    assert env.tick(now=now + timedelta(seconds=30)) == []
    assert [d.key for d in env.tick(now=now + REDRIVE + timedelta(seconds=1))] == [promoted.key]


def test_tick_writes_beat_heartbeat(env: Env) -> None:
    now = later(10)
    assert env.client.get(K.beat) is None
    result = engine.tick(env.client, env.ctx, env.published.extend, now=now)
    assert result == {"promoted": 0, "redriven": 0}
    assert env.client.get("sp:beat") == str(to_ms(now))


# --- deliver: the happy path ----------------------------------------------------------


def test_deliver_calls_runner_once_with_full_payload_and_executes_once(
    env: Env, runner: Recorder
) -> None:
    p = once("call Ana", channel_id="chat-7", metadata={"lang": "pt", "n": [1, 2]})
    t = p.next_run_at
    d = occurrence(p)
    now = t + timedelta(seconds=2, milliseconds=500)
    result = env.deliver(d, now=now, attempt=1)
    assert result.outcome is Outcome.DELIVERED
    assert len(runner.calls) == 1
    payload = runner.calls[0]
    expected = {
        "type": "scheduled_prompt",
        "prompt_id": p.id,
        "idempotency_key": f"{p.id}:{to_ms(t)}",
        "occurrence": to_iso(t),
        "fired_at": to_iso(now),
        "lateness_seconds": 2.5,
        "attempt": 1,
        "run_number": 1,
        "kind": "once",
        "prompt": "call Ana",
        "user_id": "u1",
        "platform": "telegram",
        "channel_id": "chat-7",
        "metadata": {"lang": "pt", "n": [1, 2]},
    }
    assert {k: payload.get(k, "<missing>") for k in expected} == expected
    assert payload["occurrence"].endswith("Z") and payload["fired_at"].endswith("Z")
    assert datetime.fromisoformat(payload["occurrence"]) == t
    assert json.loads(json.dumps(payload)) == payload  # JSON-safe

    done = get(p)
    assert done.status is sp.Status.EXECUTED and done.next_run_at is None
    assert (done.run_count, done.last_execution, done.version) == (1, now, p.version + 1)
    assert result.record == done
    assert env.client.zscore(K.due, p.id) is None
    assert d.key not in env.inflight()
    assert env.client.zscore(K.finished, p.id) == to_ms(now)
    assert env.client.hget(K.open_counts, "u1") is None
    assert not env.client.exists(K.lease(d.prompt_id))

    again = env.deliver(d, now=now + timedelta(seconds=1))
    assert again.outcome is Outcome.SKIPPED
    assert len(runner.calls) == 1
    assert get(p) == done


def test_deliver_cron_advances_next_run_and_returns_to_due_index(
    env: Env, runner: Recorder
) -> None:
    p = cron("*/5 * * * *")
    t = p.next_run_at
    d = occurrence(p)
    now = t + timedelta(seconds=1)
    assert env.deliver(d, now=now).outcome is Outcome.DELIVERED
    q = get(p)
    assert q.status is sp.Status.ACTIVE
    assert q.next_run_at == t + timedelta(minutes=5)
    assert (q.run_count, q.last_execution) == (1, now)
    assert runner.calls[0]["kind"] == "cron" and runner.calls[0]["run_number"] == 1
    assert env.client.zscore(K.due, p.id) == to_ms(q.next_run_at)
    assert d.key not in env.inflight()
    assert env.deliver(d, now=now).outcome is Outcome.SKIPPED  # a duplicate message
    # The next occurrence is delivered in its turn, numbered 2.
    n = q.next_run_at
    assert env.deliver(occurrence(q), now=n).outcome is Outcome.DELIVERED
    assert runner.calls[1]["run_number"] == 2
    assert get(p).next_run_at == n + timedelta(minutes=5)
    assert len(runner.calls) == 2


def test_update_prompt_text_while_in_flight_delivers_new_text(env: Env, runner: Recorder) -> None:
    p = once("old text", delay=60)  # within the horizon: already in flight
    d = occurrence(p)
    assert d.key in env.inflight()
    sp.update_prompt(p.id, prompt="new text")
    assert env.deliver(d, now=p.next_run_at).outcome is Outcome.DELIVERED
    assert [c["prompt"] for c in runner.calls] == ["new text"]


# --- deliver: the record changed after promotion --------------------------------------


@pytest.mark.parametrize("change", ["cancel", "pause", "reschedule"])
def test_change_between_promotion_and_delivery_skips_without_calling_runner(
    env: Env, runner: Recorder, change: str
) -> None:
    p = once(delay=60)
    d = occurrence(p)
    assert d.key in env.inflight()  # promoted at once: due within the horizon
    if change == "cancel":
        sp.cancel_prompt(p.id)
    elif change == "pause":
        sp.pause_prompt(p.id)
    else:
        sp.update_prompt(p.id, delay=7200)
    before = env.raw(p)
    result = env.deliver(d, now=p.next_run_at)
    assert result.outcome is Outcome.SKIPPED
    assert runner.calls == []
    assert env.raw(p) == before
    assert d.key not in env.inflight()
    if change == "reschedule":
        assert env.client.zscore(K.due, p.id) == to_ms(get(p).next_run_at)


def test_second_deliverer_racing_held_lease_gets_busy_with_retry_delay(
    env: Env,
) -> None:
    p = once(delay=60)
    d = occurrence(p)
    now = p.next_run_at
    inner: list[engine.Result] = []
    calls: list[dict[str, Any]] = []

    class Racing:
        def handle_webhook(self, payload: dict[str, Any]) -> None:
            calls.append(payload)
            # Another worker got the same message while this one holds the lease.
            inner.append(env.deliver(d, now=now))

    sp.set_bot_runner(Racing())
    try:
        outer = env.deliver(d, now=now)
    finally:
        sp.set_bot_runner(None)
    assert outer.outcome is Outcome.DELIVERED
    assert len(calls) == 1
    (busy,) = inner
    assert busy.outcome is Outcome.BUSY
    assert 0.5 < busy.retry_in <= LEASE + 0.5
    assert get(p).status is sp.Status.EXECUTED


def test_lease_held_by_another_worker_returns_busy_and_changes_nothing(
    env: Env, runner: Recorder
) -> None:
    p = once(delay=60)
    d = occurrence(p)
    env.client.set(K.lease(d.prompt_id), "someone-else", px=20_000)
    before = env.raw(p)
    result = env.deliver(d, now=p.next_run_at)
    assert result.outcome is Outcome.BUSY
    assert 0.2 <= result.retry_in <= 2.0  # looks again soon, not after the whole lease
    assert runner.calls == []
    assert env.raw(p) == before
    assert env.client.get(K.lease(d.prompt_id)) == "someone-else"


# --- deliver: bounds, coalescing, misfire ---------------------------------------------


def test_cron_max_runs_reached_becomes_executed(env: Env, runner: Recorder) -> None:
    p = cron("*/5 * * * *", max_runs=2)
    t1 = p.next_run_at
    assert env.deliver(occurrence(p), now=t1).outcome is Outcome.DELIVERED
    q = get(p)
    assert q.status is sp.Status.ACTIVE and q.next_run_at == t1 + timedelta(minutes=5)
    assert env.deliver(occurrence(q), now=q.next_run_at).outcome is Outcome.DELIVERED
    done = get(p)
    assert done.status is sp.Status.EXECUTED and done.next_run_at is None
    assert done.run_count == 2 and len(runner.calls) == 2
    assert env.client.zscore(K.due, p.id) is None
    assert env.client.zscore(K.finished, p.id) is not None
    assert env.client.hget(K.open_counts, "u1") is None


def test_cron_end_at_reached_becomes_executed(env: Env, runner: Recorder) -> None:
    start = later(86_400).replace(minute=0, second=0)
    p = cron("*/5 * * * *", start_at=start, end_at=start + timedelta(minutes=7))
    assert p.next_run_at == start
    assert env.deliver(occurrence(p), now=start).outcome is Outcome.DELIVERED
    q = get(p)
    assert q.next_run_at == start + timedelta(minutes=5)
    assert env.deliver(occurrence(q), now=q.next_run_at).outcome is Outcome.DELIVERED
    done = get(p)
    assert done.status is sp.Status.EXECUTED and done.next_run_at is None
    assert done.run_count == 2 and len(runner.calls) == 2
    assert env.client.zscore(K.due, p.id) is None


def test_cron_hour_behind_is_coalesced_into_one_delivery_of_latest_missed(
    env: Env, runner: Recorder
) -> None:
    p = cron("*/5 * * * *")
    t = p.next_run_at
    d = occurrence(p)
    now = t + timedelta(hours=1, minutes=2, seconds=3)
    assert env.deliver(d, now=now).outcome is Outcome.DELIVERED
    assert len(runner.calls) == 1
    fired = datetime.fromisoformat(runner.calls[0]["occurrence"])
    assert now - timedelta(minutes=5) < fired <= now
    assert fired == t + timedelta(hours=1)
    assert runner.calls[0]["idempotency_key"] == f"{p.id}:{to_ms(fired)}"
    assert runner.calls[0]["lateness_seconds"] == 123.0
    q = get(p)
    assert q.next_run_at == t + timedelta(hours=1, minutes=5)
    assert q.next_run_at > now and q.run_count == 1
    # No burst: the old message again is stale, and a tick now hands over one occurrence.
    assert env.deliver(d, now=now).outcome is Outcome.SKIPPED
    assert [x.key for x in env.tick(now=now)] == [f"{p.id}:{to_ms(q.next_run_at)}"]
    assert len(runner.calls) == 1


def test_once_within_misfire_grace_is_delivered(env: Env, runner: Recorder) -> None:
    p = once(misfire_grace_seconds=30)
    result = env.deliver(occurrence(p), now=p.next_run_at + timedelta(seconds=29))
    assert result.outcome is Outcome.DELIVERED and len(runner.calls) == 1


def test_once_past_misfire_grace_is_missed_and_failed(env: Env, runner: Recorder) -> None:
    p = once(delay=60, misfire_grace_seconds=30)
    d = occurrence(p)
    result = env.deliver(d, now=p.next_run_at + timedelta(seconds=45))
    assert result.outcome is Outcome.MISSED
    assert runner.calls == []
    q = get(p)
    assert q.status is sp.Status.FAILED and q.next_run_at is None
    assert q.last_error is not None and "misfire_grace_seconds" in q.last_error
    assert result.error == q.last_error
    assert (q.failure_count, q.run_count) == (1, 0)
    assert env.client.zscore(K.due, p.id) is None and d.key not in env.inflight()


def test_cron_past_misfire_grace_is_missed_and_moves_to_next_occurrence(
    env: Env, runner: Recorder
) -> None:
    p = cron("*/5 * * * *", misfire_grace_seconds=30)
    t = p.next_run_at
    now = t + timedelta(hours=1, minutes=2)  # latest missed occurrence: 120 s ago
    result = env.deliver(occurrence(p), now=now)
    assert result.outcome is Outcome.MISSED
    assert runner.calls == []
    q = get(p)
    assert q.status is sp.Status.ACTIVE
    assert q.next_run_at == t + timedelta(hours=1, minutes=5)
    assert q.last_error is not None and "misfire_grace_seconds" in q.last_error
    assert (q.failure_count, q.run_count) == (1, 0)
    assert env.client.zscore(K.due, p.id) == to_ms(q.next_run_at)


# --- deliver: runner failures ---------------------------------------------------------


def test_runner_error_retries_with_exponential_backoff_then_fails_once_prompt(
    env: Env, runner: Recorder
) -> None:
    env.configure(lease_seconds=LEASE, max_retries=3)
    p = once(delay=60)
    d = occurrence(p)
    before = env.raw(p)
    runner.errors = [RuntimeError(f"bot down {i}") for i in range(4)]
    now = p.next_run_at
    for attempt, delay in ((1, 2.0), (2, 4.0), (3, 8.0)):
        result = env.deliver(d, now=now, attempt=attempt)
        assert result.outcome is Outcome.RETRY, attempt
        assert result.retry_in == delay
        assert result.error == f"RuntimeError: bot down {attempt - 1}"
        assert env.raw(p) == before  # the record waits for the retry
        assert not env.client.exists(K.lease(d.prompt_id))  # released: the retry can claim
        deadline = env.client.zscore(K.inflight, d.key)
        assert deadline == to_ms(now + timedelta(seconds=delay) + REDRIVE)
        now += timedelta(seconds=delay)
    assert [c["attempt"] for c in runner.calls] == [1, 2, 3]
    assert {c["idempotency_key"] for c in runner.calls} == {d.key}

    result = env.deliver(d, now=now, attempt=4)
    assert result.outcome is Outcome.FAILED
    assert len(runner.calls) == 4
    q = get(p)
    assert q.status is sp.Status.FAILED and q.next_run_at is None
    assert q.last_error == "RuntimeError: bot down 3"
    assert (q.failure_count, q.run_count) == (1, 0)
    assert d.key not in env.inflight() and env.client.zscore(K.due, p.id) is None
    assert env.deliver(d, now=now, attempt=5).outcome is Outcome.SKIPPED
    assert len(runner.calls) == 4


def test_runner_error_after_max_retries_moves_cron_to_next_occurrence(
    env: Env, runner: Recorder
) -> None:
    env.configure(lease_seconds=LEASE, max_retries=1)
    p = cron("*/5 * * * *")
    t = p.next_run_at
    runner.errors = [sp.DeliveryError("HTTP 503"), sp.DeliveryError("HTTP 503 again")]
    assert env.deliver(occurrence(p), now=t, attempt=1).outcome is Outcome.RETRY
    result = env.deliver(occurrence(p), now=t + timedelta(seconds=2), attempt=2)
    assert result.outcome is Outcome.FAILED
    q = get(p)
    assert q.status is sp.Status.ACTIVE and q.next_run_at == t + timedelta(minutes=5)
    assert q.last_error is not None and "HTTP 503 again" in q.last_error
    assert (q.failure_count, q.run_count) == (1, 0)
    assert env.client.zscore(K.due, p.id) == to_ms(q.next_run_at)


def test_permanent_delivery_error_fails_at_once(env: Env, runner: Recorder) -> None:
    p = once(delay=60)
    runner.errors = [sp.PermanentDeliveryError("HTTP 410 gone")]
    result = env.deliver(occurrence(p), now=p.next_run_at, attempt=1)
    assert result.outcome is Outcome.FAILED
    assert len(runner.calls) == 1
    q = get(p)
    assert q.status is sp.Status.FAILED
    assert q.last_error is not None and "HTTP 410 gone" in q.last_error
    assert q.failure_count == 1


def test_no_runner_leaves_occurrence_pending_and_names_the_setting(env: Env) -> None:
    assert env.ctx.settings.runner is None
    p = once(delay=60)
    d = occurrence(p)
    before = env.raw(p)
    result = env.deliver(d, now=p.next_run_at)
    assert result.outcome is Outcome.NO_RUNNER
    assert result.error is not None and "SCHEDULED_PROMPTS_RUNNER" in result.error
    assert env.raw(p) == before
    assert d.key in env.inflight()  # not lost: tick re-drives it
    assert not env.client.exists(K.lease(d.prompt_id))
    # Once a runner is there, the same occurrence is delivered.
    recorder = Recorder()
    sp.set_bot_runner(recorder)
    try:
        assert env.deliver(d, now=p.next_run_at).outcome is Outcome.DELIVERED
    finally:
        sp.set_bot_runner(None)
    assert len(recorder.calls) == 1 and get(p).status is sp.Status.EXECUTED


@pytest.mark.parametrize("path", ["os:sep", ".relative_module:Runner"])
def test_runner_setting_naming_a_non_runner_is_no_runner_not_a_crash(env: Env, path: str) -> None:
    env.configure(lease_seconds=LEASE, runner=path)
    p = once(delay=60)
    d = occurrence(p)
    before = env.raw(p)
    result = env.deliver(d, now=p.next_run_at)
    assert result.outcome is Outcome.NO_RUNNER
    assert result.error is not None and "SCHEDULED_PROMPTS_RUNNER" in result.error
    assert env.raw(p) == before and d.key in env.inflight()


def test_async_runner_is_awaited(env: Env) -> None:
    recorder = AsyncRecorder()
    sp.set_bot_runner(recorder)
    try:
        p = once(delay=60)
        assert env.deliver(occurrence(p), now=p.next_run_at).outcome is Outcome.DELIVERED
    finally:
        sp.set_bot_runner(None)
    assert [c["prompt_id"] for c in recorder.calls] == [p.id]
    assert get(p).status is sp.Status.EXECUTED


def test_runner_loaded_from_import_path_setting(env: Env) -> None:
    PathRunner.calls.clear()
    env.configure(lease_seconds=LEASE, runner="tests.test_engine:PathRunner")
    p = once(delay=60)
    assert env.deliver(occurrence(p), now=p.next_run_at).outcome is Outcome.DELIVERED
    assert [c["prompt_id"] for c in PathRunner.calls] == [p.id]
    PathRunner.calls.clear()


def test_platform_runner_wins_over_default_in_delivery(env: Env, runner: Recorder) -> None:
    slack = Recorder()
    sp.set_bot_runner(slack, platform="slack")
    try:
        c = cron()
        o = once(delay=60)
        assert env.deliver(occurrence(c), now=c.next_run_at).outcome is Outcome.DELIVERED
        assert env.deliver(occurrence(o), now=o.next_run_at).outcome is Outcome.DELIVERED
    finally:
        sp.set_bot_runner(None, platform="slack")
    assert [x["prompt_id"] for x in slack.calls] == [c.id]
    assert [x["prompt_id"] for x in runner.calls] == [o.id]


# --- trigger_prompt -------------------------------------------------------------------


def test_trigger_delivers_once_without_moving_the_schedule(env: Env, runner: Recorder) -> None:
    p = cron("*/5 * * * *", max_runs=1)
    before_ms = to_ms(utcnow())
    key = sp.trigger_prompt(p.id)
    after_ms = to_ms(utcnow())
    match = re.fullmatch(rf"{re.escape(p.id)}:trigger:(\d+)", key)
    assert match is not None and before_ms <= int(match.group(1)) <= after_ms
    assert key in env.inflight()

    d = Delivery.from_key(key)
    assert d.trigger and d.key == key
    now = from_ms(d.occurrence_ms) + timedelta(milliseconds=20)
    assert env.deliver(d, now=now).outcome is Outcome.DELIVERED
    assert len(runner.calls) == 1
    assert runner.calls[0]["idempotency_key"] == key
    assert runner.calls[0]["run_number"] == 1
    q = get(p)
    assert q.status is sp.Status.ACTIVE
    assert q.next_run_at == p.next_run_at  # the schedule did not move
    assert (q.run_count, q.trigger_count, q.scheduled_runs) == (1, 1, 0)
    assert key not in env.inflight()

    assert env.deliver(d, now=now).outcome is Outcome.SKIPPED  # a duplicate message
    assert len(runner.calls) == 1
    # max_runs=1 was not consumed by the trigger: the scheduled occurrence still fires.
    assert env.deliver(occurrence(q), now=q.next_run_at).outcome is Outcome.DELIVERED
    done = get(p)
    assert done.status is sp.Status.EXECUTED and done.run_count == 2
    assert len(runner.calls) == 2 and runner.calls[1]["run_number"] == 2


def test_trigger_refused_on_terminal_prompt(env: Env) -> None:
    p = sp.cancel_prompt(once().id)
    with pytest.raises(sp.ConflictingPrompt, match="cancelled"):
        sp.trigger_prompt(p.id)
    assert env.inflight() == set()


def test_trigger_allowed_on_paused_prompt_which_stays_paused(env: Env, runner: Recorder) -> None:
    p = cron()
    sp.pause_prompt(p.id)
    key = sp.trigger_prompt(p.id)
    d = Delivery.from_key(key)
    assert env.deliver(d, now=from_ms(d.occurrence_ms)).outcome is Outcome.DELIVERED
    assert len(runner.calls) == 1
    q = get(p)
    assert q.status is sp.Status.PAUSED and q.next_run_at is None
    assert q.run_count == 1 and env.client.zscore(K.due, p.id) is None


def test_trigger_enforces_ownership(env: Env) -> None:
    p = once(user="ana")
    with pytest.raises(sp.PromptNotFound, match=p.id):
        sp.trigger_prompt(p.id, user_id="mallory")
    with pytest.raises(sp.PromptNotFound):
        sp.trigger_prompt("no-such-id")
    assert env.inflight() == set()
    assert sp.trigger_prompt(p.id, user_id="ana").startswith(f"{p.id}:trigger:")


def test_triggers_do_not_count_against_max_runs_when_updating_it(
    env: Env, runner: Recorder
) -> None:
    p = cron("*/5 * * * *", max_runs=5)
    for _ in range(2):
        d = Delivery.from_key(sp.trigger_prompt(p.id))
        assert env.deliver(d, now=from_ms(d.occurrence_ms)).outcome is Outcome.DELIVERED
        env.client.delete(K.done(d.key))
    assert get(p).scheduled_runs == 0
    # No scheduled run was made yet, so a limit of 2 scheduled runs is valid.
    q = sp.update_prompt(p.id, max_runs=2)
    assert q.max_runs == 2 and q.status is sp.Status.ACTIVE


# --- hydrate --------------------------------------------------------------------------


def test_hydrate_republishes_inflight_and_promotes_due_within_horizon(env: Env) -> None:
    inflight = once(delay=60)  # promoted when written
    soon = once(delay=600)
    far = once(delay=86_400)
    assert env.inflight() == {occurrence(inflight).key}
    count, published = env.hydrate(now=utcnow() + timedelta(seconds=400))
    assert count == 2
    assert [d.key for d in published] == [occurrence(inflight).key, occurrence(soon).key]
    assert env.inflight() == {occurrence(inflight).key, occurrence(soon).key}
    assert env.client.zrange(K.due, 0, -1) == [far.id]
    assert not env.client.exists(K.hydrate_lock)


def test_hydrate_duplicates_collapse_to_one_runner_call(env: Env, runner: Recorder) -> None:
    p = once(delay=60)
    _, first = env.hydrate(now=utcnow())
    _, second = env.hydrate(now=utcnow())
    outcomes = [env.deliver(d, now=p.next_run_at).outcome for d in first + second]
    assert outcomes == [Outcome.DELIVERED, Outcome.SKIPPED]
    assert len(runner.calls) == 1


def test_hydrate_honours_active_platforms(env: Env) -> None:
    tg = [once(delay=60, platform="telegram"), once(delay=600, platform="telegram")]
    sl = [once(delay=60, platform="slack"), once(delay=600, platform="slack")]
    count, published = env.hydrate(
        now=utcnow() + timedelta(seconds=400), active_platforms=["slack"]
    )
    assert count == 2
    assert {d.prompt_id for d in published} == {p.id for p in sl}
    assert env.client.zrange(K.due, 0, -1) == [tg[1].id]  # left for a telegram worker


def test_hydrate_honours_active_platforms_setting(env: Env) -> None:
    env.configure(lease_seconds=LEASE, active_platforms=("slack",))
    once(delay=60, platform="telegram")
    s = once(delay=60, platform="slack")
    count, published = env.hydrate(now=utcnow())
    assert (count, [d.prompt_id for d in published]) == (1, [s.id])


def test_hydrate_honours_limit(env: Env) -> None:
    for _ in range(3):
        once(delay=60)
    for _ in range(3):
        once(delay=600)
    count, published = env.hydrate(now=utcnow() + timedelta(seconds=400), limit=4)
    assert count == 4 and len(published) == 4
    assert env.client.zcard(K.due) == 2


def test_hydrate_with_lock_held_by_another_worker_does_nothing(env: Env) -> None:
    once(delay=60)
    once(delay=600)
    env.client.set("sp:lock:hydrate", "other-worker", px=60_000)
    count, published = env.hydrate(now=utcnow() + timedelta(seconds=400))
    assert (count, published) == (0, [])
    assert env.client.get("sp:lock:hydrate") == "other-worker"
    assert env.client.zcard(K.due) == 1


def test_hydrate_promotes_every_due_prompt_when_one_is_also_in_flight(
    env: Env, runner: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hydration, "_CHUNK", 2)  # page boundaries with few prompts
    x = once(delay=60)  # in flight
    d = Delivery.from_key(sp.trigger_prompt(x.id))
    assert env.deliver(d, now=from_ms(d.occurrence_ms)).outcome is Outcome.DELIVERED
    others = [once(delay=600 + i) for i in range(3)]
    count, published = env.hydrate(now=utcnow() + timedelta(seconds=400))
    # Every due prompt left the due index for the in-flight set, and was published.
    assert env.client.zrange(K.due, 0, -1) == []
    expected = {occurrence(p).key for p in [x, *others]}
    assert env.inflight() == expected
    assert {p.key for p in published} == expected and count == 4


def test_hydrate_releases_its_lock(env: Env) -> None:
    once(delay=60)
    env.hydrate(now=utcnow())
    assert env.client.exists("sp:lock:hydrate") == 0
    assert env.hydrate(now=utcnow())[0] == 1  # the next run is not locked out


# --- idempotency keys read back from the in-flight set --------------------------------


def test_prompt_id_ending_in_trigger_is_refused_so_keys_stay_unambiguous(
    env: Env, runner: Recorder
) -> None:
    # "{id}:trigger:{ms}" is a trigger's key; an id ending in ":trigger" would read back
    # as a trigger of another prompt when re-driven or hydrated.
    once("bob's own prompt", user="bob", prompt_id="abc", delay=3600)
    before = env.client.dbsize()
    with pytest.raises(sp.InvalidSchedule, match="must not end with ':trigger'"):
        once("mallory's prompt", user="mallory", prompt_id="abc:trigger", delay=60)
    assert env.client.dbsize() == before
    p = once("an id with trigger inside", user="mallory", prompt_id="abc:trigger:x", delay=60)
    assert Delivery.from_key(occurrence(p).key) == occurrence(p)


def test_cancel_waits_for_a_delivery_in_progress_and_no_delivery_follows_it(
    env: Env, request: pytest.FixtureRequest
) -> None:
    p = sp.schedule_prompt("every minute", user_id="u1", platform="tg", cron="* * * * *")
    d = occurrence(p)
    started, release = threading.Event(), threading.Event()
    calls: list[dict[str, Any]] = []

    class Slow:
        def handle_webhook(self, payload: dict[str, Any]) -> None:
            started.set()
            assert release.wait(60)  # the test releases it; 60 s only bounds a failure
            calls.append(payload)

    sp.set_bot_runner(Slow())
    request.addfinalizer(lambda: sp.set_bot_runner(None))
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(env.deliver(d, now=p.next_run_at)))
    worker.start()
    assert started.wait(10)
    cancelled: list[sp.ScheduledPrompt] = []
    canceller = threading.Thread(target=lambda: cancelled.append(sp.cancel_prompt(p.id)))
    canceller.start()
    canceller.join(0.3)
    assert canceller.is_alive(), "cancel must wait while the delivery holds the lease"
    release.set()
    worker.join(10)
    canceller.join(10)
    assert results[0].outcome is Outcome.DELIVERED and len(calls) == 1
    # The cancel landed after the commit: the prompt is cancelled with its one run counted,
    # and the next occurrence (already computed by the commit) is never delivered.
    assert cancelled[0].status is sp.Status.CANCELLED and cancelled[0].run_count == 1
    assert p.next_run_at is not None
    following = p.next_run_at + timedelta(minutes=1)
    later = env.deliver(Delivery(p.id, to_ms(following)), now=following)
    assert later.outcome is Outcome.SKIPPED and len(calls) == 1


@pytest.mark.parametrize(
    "stored", ["{not json", '{"schema": 99, "id": "x", "status": "scheduled"}', "[1, 2]"]
)
def test_unreadable_record_is_skipped_with_its_key_logged_and_not_redriven(
    env: Env, runner: Recorder, caplog: pytest.LogCaptureFixture, stored: str
) -> None:
    p = once(delay=60)
    d = occurrence(p)
    env.client.set(K.prompt(p.id), stored)
    with caplog.at_level(logging.WARNING, "scheduled_prompts"):
        result = env.deliver(d, now=p.next_run_at)
        redriven = env.tick(now=p.next_run_at + REDRIVE + timedelta(seconds=1))
    assert result.outcome is Outcome.SKIPPED and runner.calls == []
    assert K.prompt(p.id) in caplog.text
    assert d.key not in env.inflight() and redriven == []
    assert env.client.get(K.prompt(p.id)) == stored  # left for a version that reads it
    assert not env.client.exists(K.lease(p.id))


def test_commit_waits_out_a_redis_outage_shorter_than_the_lease(tmp_path: Any) -> None:
    """Redis goes away while the runner runs and is back 1.5 s later: the delivery commits
    late instead of leaving the occurrence to be delivered a second time."""

    server = RedisServer("--appendonly", "yes", directory=str(tmp_path)).start()
    calls: list[dict[str, Any]] = []
    try:
        sp.configure(redis_url=server.url, lease_seconds=20, redis_timeout_seconds=1)
        p = sp.schedule_prompt("survive", user_id="u1", platform="tg", delay=600)
        d = occurrence(p)

        class Outage:
            def handle_webhook(self, payload: dict[str, Any]) -> None:
                calls.append(payload)
                server.stop()  # SIGTERM: redis-server writes its AOF and exits
                threading.Timer(1.5, server.start).start()

        sp.set_bot_runner(Outage())
        client, ctx = get_redis(), scope()
        result = engine.deliver(client, ctx, d, now=p.next_run_at)
        assert result.outcome is Outcome.DELIVERED and len(calls) == 1
        stored = sp.get_prompt(p.id)
        assert stored is not None and stored.status is sp.Status.EXECUTED
        assert d.key not in set(client.zrange(K.inflight, 0, -1))
        again = engine.deliver(client, ctx, d, now=p.next_run_at)
        assert again.outcome is Outcome.SKIPPED and len(calls) == 1
    finally:
        sp.set_bot_runner(None)
        sp.configure()
        server.cleanup()
