"""The Celery tasks: ``deliver``'s retry branches, run eagerly (``Task.apply``) against
the real engine and a real redis-server; and beat's entry for ``cleanup``.

``apply()`` runs a retry at once, in the same call, with the arguments the task gave
``self.retry``; Celery's ``task_retry`` signal carries that ``Retry`` (its countdown in
``when``, its next call in ``sig``), so each test sees every retry the task asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery.exceptions import Retry
from celery.signals import task_retry
from redis.exceptions import RedisError

import scheduled_prompts as sp
from scheduled_prompts import engine, tasks
from scheduled_prompts._time import from_iso, to_ms
from scheduled_prompts.celery_app import celery_config
from scheduled_prompts.connection import get_redis
from scheduled_prompts.errors import StoreUnavailable
from scheduled_prompts.keys import Keys
from scheduled_prompts.settings import settings_from_env
from support.redis_server import free_port

K = Keys("sp")


class Flaky:
    """A runner that keeps every payload and fails its first ``failures`` calls."""

    def __init__(self, failures: int, on_failure: Callable[[], None] | None = None) -> None:
        self.failures = failures
        self.on_failure = on_failure
        self.calls: list[dict[str, Any]] = []

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        self.calls.append(payload)
        if len(self.calls) <= self.failures:
            if self.on_failure is not None:
                self.on_failure()
            raise sp.DeliveryError(f"bot down (call {len(self.calls)})")


class Retries:
    """Every ``Retry`` a task raised, in order; ``then`` runs as each one is raised."""

    def __init__(self) -> None:
        self.seen: list[Retry] = []
        self.then: Callable[[Retry], None] | None = None

    def __call__(self, sender: Any = None, reason: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) != tasks.DELIVER:
            return
        assert isinstance(reason, Retry)
        self.seen.append(reason)
        if self.then is not None:
            self.then(reason)

    @property
    def countdowns(self) -> list[float]:
        return [float(r.when) for r in self.seen]  # type: ignore[arg-type]

    @property
    def attempts(self) -> list[int]:
        """The ``attempt`` each retry asked for (1 when it does not say)."""
        return [int(r.sig.kwargs.get("attempt", 1)) for r in self.seen]  # type: ignore[union-attr]


@pytest.fixture
def retries(redis_url: str) -> Iterator[Retries]:
    sp.configure(redis_url=redis_url, queue="test-tasks")
    spy = Retries()
    task_retry.connect(spy, weak=False)
    try:
        yield spy
    finally:
        task_retry.disconnect(spy)
        sp.set_bot_runner(None)
        sp.configure()


def one_time() -> tuple[sp.ScheduledPrompt, int]:
    """A one-time prompt due in ten minutes, and its occurrence (ms)."""
    p = sp.schedule_prompt("call Ana", user_id="u1", platform="tg", delay=600)
    assert p.next_run_at is not None
    return p, to_ms(p.next_run_at)


def get(prompt: sp.ScheduledPrompt) -> sp.ScheduledPrompt:
    found = sp.get_prompt(prompt.id)
    assert found is not None
    return found


def test_failing_runner_is_retried_with_growing_attempt_and_backoff_and_the_same_key(
    redis_url: str, retries: Retries
) -> None:
    sp.configure(redis_url=redis_url, queue="test-tasks", max_retries=5)
    p, ms = one_time()
    runner = Flaky(failures=2)
    sp.set_bot_runner(runner)
    assert tasks.deliver.apply(args=(p.id, ms)).get() == "delivered"
    assert [c["attempt"] for c in runner.calls] == [1, 2, 3]
    assert [c["idempotency_key"] for c in runner.calls] == [f"{p.id}:{ms}"] * 3
    assert retries.attempts == [2, 3]
    assert retries.countdowns == [engine.backoff(1), engine.backoff(2)] == [2.0, 4.0]
    # Each retry is the same occurrence of the same prompt.
    assert [tuple(r.sig.args) for r in retries.seen] == [(p.id, ms)] * 2  # type: ignore[union-attr]
    assert all(r.sig.kwargs["coalesced_ms"] == ms for r in retries.seen)  # type: ignore[union-attr]
    done = get(p)
    assert done.status is sp.Status.EXECUTED and done.run_count == 1
    assert done.failure_count == 0
    # The occurrence is committed: a duplicate of the message finds nothing to do.
    assert tasks.deliver.apply(args=(p.id, ms)).get() == "skipped"
    assert len(runner.calls) == 3


def test_retry_after_the_next_cron_occurrence_passed_keeps_the_first_attempts_key(
    redis_url: str, retries: Retries, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt, a minute and a half late, coalesces to the latest missed
    occurrence; its retry runs after yet another occurrence passed and must still
    deliver the first attempt's occurrence under the first attempt's key."""
    p = sp.schedule_prompt("each minute", user_id="u1", platform="tg", cron="* * * * *")
    assert p.next_run_at is not None
    t = p.next_run_at
    clock = {"now": t + timedelta(seconds=90)}
    monkeypatch.setattr(engine, "utcnow", lambda: clock["now"])

    def later() -> None:  # the retry comes after t + 2 min was due too
        clock["now"] = t + timedelta(seconds=150)

    runner = Flaky(failures=1, on_failure=later)
    sp.set_bot_runner(runner)
    assert tasks.deliver.apply(args=(p.id, to_ms(t))).get() == "delivered"
    coalesced = t + timedelta(minutes=1)
    assert [c["attempt"] for c in runner.calls] == [1, 2]
    assert [c["idempotency_key"] for c in runner.calls] == [f"{p.id}:{to_ms(coalesced)}"] * 2
    assert [from_iso(c["occurrence"]) for c in runner.calls] == [coalesced] * 2
    assert retries.attempts == [2] and retries.countdowns == [engine.backoff(1)]
    assert retries.seen[0].sig.kwargs["coalesced_ms"] == to_ms(coalesced)  # type: ignore[union-attr]
    after = get(p)
    assert after.run_count == 1 and after.status is sp.Status.ACTIVE
    # Continues from now (t + 150 s): the next whole minute, no burst of the missed ones.
    assert after.next_run_at == t + timedelta(minutes=3)


def test_runner_failing_past_max_retries_gives_up_and_records_the_failure(
    redis_url: str, retries: Retries
) -> None:
    sp.configure(redis_url=redis_url, queue="test-tasks", max_retries=2)
    p, ms = one_time()
    runner = Flaky(failures=99)
    sp.set_bot_runner(runner)
    assert tasks.deliver.apply(args=(p.id, ms)).get() == "failed"
    assert [c["attempt"] for c in runner.calls] == [1, 2, 3]
    assert {c["idempotency_key"] for c in runner.calls} == {f"{p.id}:{ms}"}
    assert retries.attempts == [2, 3] and retries.countdowns == [2.0, 4.0]
    failed = get(p)
    assert failed.status is sp.Status.FAILED and failed.next_run_at is None
    assert (failed.failure_count, failed.run_count) == (1, 0)
    assert failed.last_error == "DeliveryError: bot down (call 3)"
    r = get_redis()
    assert f"{p.id}:{ms}" not in set(r.zrange(K.inflight, 0, -1))
    assert tasks.deliver.apply(args=(p.id, ms)).get() == "skipped"
    assert len(runner.calls) == 3


def test_busy_occurrence_is_retried_as_the_same_attempt_once_the_lease_is_free(
    redis_url: str, retries: Retries
) -> None:
    p, ms = one_time()
    r = get_redis()
    r.set(K.lease(p.id), "another-worker", px=60_000)  # a delivery of this prompt is running

    def other_worker_done(retry: Retry) -> None:
        assert r.get(K.lease(p.id)) == "another-worker"  # untouched while it was held
        r.delete(K.lease(p.id))

    retries.then = other_worker_done
    runner = Flaky(failures=0)
    sp.set_bot_runner(runner)
    assert tasks.deliver.apply(args=(p.id, ms)).get() == "delivered"
    assert len(retries.seen) == 1
    # Not a runner failure: the retry is soon (a live holder finishes in moments) and
    # does not count as an attempt.
    assert 0 < retries.countdowns[0] <= 2.0
    assert retries.attempts == [1]
    assert [(c["attempt"], c["idempotency_key"]) for c in runner.calls] == [(1, f"{p.id}:{ms}")]
    assert get(p).status is sp.Status.EXECUTED


def test_store_unreachable_is_retried_after_five_seconds_and_loses_nothing(
    redis_url: str, retries: Retries
) -> None:
    p, ms = one_time()
    sp.configure(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", queue="test-tasks", redis_timeout_seconds=1
    )

    def store_back(retry: Retry) -> None:
        sp.configure(redis_url=redis_url, queue="test-tasks")

    retries.then = store_back
    runner = Flaky(failures=0)
    sp.set_bot_runner(runner)
    assert tasks.deliver.apply(args=(p.id, ms)).get() == "delivered"
    assert retries.countdowns == [5.0]
    assert isinstance(retries.seen[0].exc, RedisError | StoreUnavailable)
    assert retries.attempts == [1]  # the runner was never reached: not an attempt
    assert [(c["attempt"], c["idempotency_key"]) for c in runner.calls] == [(1, f"{p.id}:{ms}")]
    assert get(p).status is sp.Status.EXECUTED


# --- beat's schedule ---------------------------------------------------------------------


@pytest.mark.parametrize("days", [7, 30])
def test_beat_runs_cleanup_hourly_with_the_cleanup_days_setting(days: int) -> None:
    config = celery_config(settings_from_env({}, cleanup_days=days))
    entry = config["beat_schedule"]["scheduled-prompts-cleanup"]
    assert entry["task"] == "scheduled_prompts.cleanup" == tasks.cleanup.name
    assert entry["schedule"] == timedelta(hours=1)
    assert entry["kwargs"] == {"days_to_keep": days}
    assert not entry.get("args")


def test_an_allow_run_that_fails_is_retried_by_the_task_as_its_detached_run(
    redis_url: str, retries: Retries
) -> None:
    p = sp.schedule_prompt(
        "status", user_id="u1", platform="tg", cron="*/5 * * * *", overlap="allow"
    )
    assert p.next_run_at is not None
    ms = to_ms(p.next_run_at)
    runner = Flaky(failures=1)
    sp.set_bot_runner(runner)
    assert tasks.deliver.apply(args=(p.id, ms)).get() == "delivered"
    # The retry delivers the run the occurrence became when it started, same key.
    (retry,) = retries.seen
    assert tuple(retry.sig.args) == (p.id, ms)  # type: ignore[union-attr]
    assert retry.sig.kwargs["detached"] is True  # type: ignore[union-attr]
    assert [c["idempotency_key"] for c in runner.calls] == [f"{p.id}:{ms}"] * 2
    done = get(p)
    assert done.run_count == 1 and done.failure_count == 0
    assert done.next_run_at is not None and to_ms(done.next_run_at) == ms + 300_000
    # A duplicate of the retried message finds the run done.
    assert tasks.deliver.apply(args=(p.id, ms), kwargs={"detached": True}).get() == "skipped"
