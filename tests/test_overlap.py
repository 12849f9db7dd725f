"""Overlap policies: what a cron occurrence does when it comes due while the runner call
of an earlier one is still going on — skip (default), buffer_one, allow.

Runs are made long with a clock the runner moves: the engine reads the time through
``engine.utcnow``, so a "12-minute" run takes no wall-clock time and the test cannot
race it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

import scheduled_prompts as sp
from scheduled_prompts import api, engine, exporter, metrics
from scheduled_prompts import claims as claims_module
from scheduled_prompts._time import from_iso, to_ms, utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.errors import DeliveryError, InvalidSchedule
from scheduled_prompts.history import recent
from scheduled_prompts.models import Overlap, ScheduledPrompt
from scheduled_prompts.occurrences import Delivery
from scheduled_prompts.outcomes import Outcome
from scheduled_prompts.tools import ToolContext, handle_tool_call

EVERY_5 = "*/5 * * * *"
MINUTE = timedelta(minutes=1)


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    monkeypatch.setattr(engine, "utcnow", made)
    return made


class Runner:
    """Records each payload; ``during(payload)`` runs inside the call (the run's body)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.during: Callable[[dict[str, Any]], None] | None = None

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        self.calls.append(payload)
        if self.during is not None:
            self.during(payload)


@pytest.fixture
def runner(redis_url: str) -> Iterator[Runner]:
    installed = Runner()
    sp.set_bot_runner(installed)
    yield installed
    sp.set_bot_runner(None)


def schedule(**kwargs: Any) -> ScheduledPrompt:
    return sp.schedule_prompt(
        "summarise the channel", user_id="u", platform="tg", cron=EVERY_5, **kwargs
    )


def deliver_due(p: ScheduledPrompt, clock: Clock) -> engine.Result:
    """Deliver the prompt's next occurrence with the clock at its time."""
    stored = sp.get_prompt(p.id)
    assert stored is not None and stored.next_run_at is not None
    clock.now = max(clock.now, stored.next_run_at)
    return engine.deliver(get_redis(), scope(), Delivery(p.id, to_ms(stored.next_run_at)))


def lasting(clock: Clock, length: timedelta) -> Callable[[dict[str, Any]], None]:
    def body(_: dict[str, Any]) -> None:
        clock.now += length

    return body


def failing_once(runner: Runner) -> Callable[[dict[str, Any]], None]:
    """A run body whose first call fails (to be retried)."""

    def body(_: dict[str, Any]) -> None:
        if len(runner.calls) == 1:
            raise DeliveryError("the model provider answered 503")

    return body


def next_during_first(runner: Runner, clock: Clock, p: ScheduledPrompt) -> list[Any]:
    """A run body that, during the prompt's first run, delivers its next occurrence at
    its time (as another worker would); the list gets that delivery's outcome and the
    record right after it."""
    seen: list[Any] = []

    def body(_: dict[str, Any]) -> None:
        if len(runner.calls) == 1:
            seen.extend([deliver_due(p, clock).outcome, get(p)])

    runner.during = body
    return seen


def overlap_skipped(platform: str = "tg") -> float:
    """The count as the exporter shows it (``scheduled_prompts_overlap_skipped_total``)."""
    snap = api.run(metrics.snapshot(scope(), utcnow()))
    shown = [
        s.value
        for f in exporter.families(snap)
        if f.name == "scheduled_prompts_overlap_skipped"
        for s in f.samples
        if s.labels == {"platform": platform} and s.name.endswith("_total")
    ]
    assert shown in ([], [snap.series.get(("overlap_skipped", platform))])
    return shown[0] if shown else 0.0


def get(p: ScheduledPrompt) -> ScheduledPrompt:
    found = sp.get_prompt(p.id)
    assert found is not None
    return found


# --- skip -----------------------------------------------------------------------------


def test_skip_is_the_default_and_drops_what_came_due_during_the_run_counting_it(
    clock: Clock, runner: Runner
) -> None:
    p = schedule()
    assert p.overlap is Overlap.SKIP
    first = p.next_run_at
    assert first is not None
    runner.during = lasting(clock, 12 * MINUTE)  # over two later occurrences
    assert deliver_due(p, clock).outcome is Outcome.DELIVERED
    after = get(p)
    # first+5 and first+10 came due while it ran: not delivered, counted; the next one
    # is the first due after the run ended.
    assert after.next_run_at == first + 15 * MINUTE
    assert after.skipped_runs == 2 and after.run_count == 1
    assert overlap_skipped() == 2
    (entry,) = api.run(recent(scope(), p.id))
    assert entry.outcome == "delivered" and entry.skipped == 2
    # The next run is short: nothing more is skipped.
    runner.during = lasting(clock, MINUTE)
    deliver_due(p, clock)
    assert get(p).next_run_at == first + 20 * MINUTE
    assert get(p).skipped_runs == 2 and overlap_skipped() == 2
    delivered = [from_iso(c["occurrence"]) for c in runner.calls]
    assert delivered == [first, first + 15 * MINUTE]


def test_a_run_that_ends_before_the_next_occurrence_skips_nothing(
    clock: Clock, runner: Runner
) -> None:
    for overlap in ("skip", "buffer_one"):
        p = schedule(overlap=overlap)
        first = p.next_run_at
        assert first is not None
        runner.during = lasting(clock, 4 * MINUTE)
        deliver_due(p, clock)
        assert get(p).next_run_at == first + 5 * MINUTE and get(p).skipped_runs == 0
    assert overlap_skipped() == 0


def test_a_run_that_fails_for_good_skips_what_came_due_during_it_too(
    clock: Clock, runner: Runner
) -> None:
    p = schedule()
    first = p.next_run_at
    assert first is not None

    def fail(_: dict[str, Any]) -> None:
        clock.now += 7 * MINUTE
        raise sp.PermanentDeliveryError("the bot was removed from the chat")

    runner.during = fail
    assert deliver_due(p, clock).outcome is Outcome.FAILED
    after = get(p)
    assert after.next_run_at == first + 10 * MINUTE
    assert after.skipped_runs == 1 and after.failure_count == 1 and after.run_count == 0


def test_what_the_last_run_would_skip_is_not_counted(clock: Clock, runner: Runner) -> None:
    p = schedule(max_runs=1)
    runner.during = lasting(clock, 12 * MINUTE)
    deliver_due(p, clock)
    after = get(p)
    assert after.status.value == "executed" and after.next_run_at is None
    assert after.skipped_runs == 0 and overlap_skipped() == 0


# --- buffer_one ------------------------------------------------------------------------


def test_buffer_one_delivers_the_latest_that_came_due_as_soon_as_the_run_ends(
    clock: Clock, runner: Runner
) -> None:
    p = schedule(overlap="buffer_one")
    assert p.overlap is Overlap.BUFFER_ONE
    first = p.next_run_at
    assert first is not None
    runner.during = lasting(clock, 12 * MINUTE)
    deliver_due(p, clock)
    after = get(p)
    # first+5 and first+10 came due: the latest is kept, due at once; one is skipped.
    assert after.next_run_at == first + 10 * MINUTE
    assert after.skipped_runs == 1 and overlap_skipped() == 1
    runner.during = None
    assert deliver_due(p, clock).outcome is Outcome.DELIVERED
    late = runner.calls[-1]
    assert from_iso(late["occurrence"]) == first + 10 * MINUTE
    assert late["idempotency_key"] == f"{p.id}:{to_ms(first + 10 * MINUTE)}"
    assert late["lateness_seconds"] == 120  # delivered when the long run ended
    assert get(p).next_run_at == first + 15 * MINUTE and get(p).skipped_runs == 1


# --- allow -----------------------------------------------------------------------------


def test_allow_delivers_the_next_occurrence_on_time_while_the_first_still_runs(
    clock: Clock, runner: Runner, r: redis.Redis
) -> None:
    p = schedule(overlap="allow")
    first = p.next_run_at
    assert first is not None
    keys = scope().keys
    seen: dict[str, Any] = {}

    def long_run(payload: dict[str, Any]) -> None:
        if payload["occurrence"] != runner.calls[0]["occurrence"]:
            return  # the second run is short
        # While the first run goes on, the schedule has moved on and the prompt's lease
        # is free: the next occurrence is claimed as usual (here, as by another worker).
        seen["during"] = get(p)
        seen["lease"] = r.exists(keys.lease(p.id))
        seen["inflight"] = r.zrange(keys.inflight, 0, -1)
        clock.now = first + 5 * MINUTE
        seen["second"] = deliver_due(p, clock).outcome
        clock.now = first + 12 * MINUTE

    runner.during = long_run
    assert deliver_due(p, clock).outcome is Outcome.DELIVERED
    during = seen["during"]
    assert during.next_run_at == first + 5 * MINUTE and during.run_count == 1
    assert seen["lease"] == 0
    assert seen["inflight"] == [f"{p.id}:{to_ms(first)}:run"]
    assert seen["second"] is Outcome.DELIVERED
    keys_called = [c["idempotency_key"] for c in runner.calls]
    assert keys_called == [f"{p.id}:{to_ms(first)}", f"{p.id}:{to_ms(first + 5 * MINUTE)}"]
    assert [c["run_number"] for c in runner.calls] == [1, 2]
    assert [c["lateness_seconds"] for c in runner.calls] == [0, 0]
    after = get(p)
    assert after.run_count == 2 and after.skipped_runs == 0
    assert after.next_run_at == first + 10 * MINUTE
    # Both runs ended: nothing in flight, no lease, a done marker per run.
    assert r.zcard(keys.inflight) == 0
    assert not r.keys(keys.lease("*"))
    for ms in (to_ms(first), to_ms(first + 5 * MINUTE)):
        assert r.exists(keys.done(f"{p.id}:{ms}:run"))


def test_an_allow_run_whose_worker_died_is_re_driven_once_with_the_same_key(
    clock: Clock, runner: Runner, r: redis.Redis
) -> None:
    p = schedule(overlap="allow")
    first = p.next_run_at
    assert first is not None

    class Killed(BaseException):
        """The worker process dying mid-call: nothing after it runs."""

    def die(_: dict[str, Any]) -> None:
        raise Killed

    runner.during = die
    with pytest.raises(Killed):
        deliver_due(p, clock)
    keys = scope().keys
    run_key = f"{p.id}:{to_ms(first)}:run"
    assert r.zrange(keys.inflight, 0, -1) == [run_key]
    assert get(p).next_run_at == first + 5 * MINUTE  # the schedule went on regardless
    r.delete(keys.lease(run_key))  # its lease runs out
    published: list[Delivery] = []
    deadline = first + timedelta(seconds=scope().settings.lease_seconds + 31)
    engine.tick(get_redis(), scope(), published.extend, now=deadline)
    (again,) = [d for d in published if d.detached]
    assert again == Delivery(p.id, to_ms(first), detached=True)
    runner.during = None
    assert engine.deliver(get_redis(), scope(), again).outcome is Outcome.DELIVERED
    # A duplicate message of the same run finds it done.
    assert engine.deliver(get_redis(), scope(), again).outcome is Outcome.SKIPPED
    keys_called = [c["idempotency_key"] for c in runner.calls]
    assert keys_called == [f"{p.id}:{to_ms(first)}"] * 2
    assert get(p).run_count == 1
    assert run_key not in r.zrange(keys.inflight, 0, -1)  # (the tick promoted the next)


def test_an_allow_run_that_fails_is_retried_as_the_same_run(clock: Clock, runner: Runner) -> None:
    p = schedule(overlap="allow")
    first = p.next_run_at
    assert first is not None

    runner.during = failing_once(runner)
    result = deliver_due(p, clock)
    assert result.outcome is Outcome.RETRY
    assert result.delivery == Delivery(p.id, to_ms(first), detached=True)
    assert result.delivery is not None
    again = engine.deliver(
        get_redis(), scope(), result.delivery, attempt=2, coalesced_ms=result.occurrence_ms
    )
    assert again.outcome is Outcome.DELIVERED
    assert [c["idempotency_key"] for c in runner.calls] == [f"{p.id}:{to_ms(first)}"] * 2
    assert [c["attempt"] for c in runner.calls] == [1, 2]
    after = get(p)
    assert after.run_count == 1 and after.failure_count == 0
    assert after.next_run_at == first + 5 * MINUTE


def test_allow_counts_runs_as_they_start_against_max_runs(clock: Clock, runner: Runner) -> None:
    p = schedule(overlap="allow", max_runs=2)
    seen = next_during_first(runner, clock, p)  # the second (and last) run, during the first
    deliver_due(p, clock)
    second, inside = seen
    assert second is Outcome.DELIVERED
    assert inside.status.value == "executed" and inside.next_run_at is None
    assert inside.run_count == 2
    after = get(p)
    assert after.status.value == "executed" and after.run_count == 2
    assert len(runner.calls) == 2


def test_allow_runs_count_against_the_platforms_concurrency_limit(
    clock: Clock, runner: Runner, redis_url: str
) -> None:
    sp.configure(redis_url=redis_url, concurrency_limits="tg=1")
    p = schedule(overlap="allow")
    seen = next_during_first(runner, clock, p)
    deliver_due(p, clock)
    # The second occurrence waited for the first run's slot (a 'tg' run at a time).
    assert seen[0] is Outcome.LIMITED
    assert len(runner.calls) == 1
    assert deliver_due(p, clock).outcome is Outcome.DELIVERED


# --- the setting -----------------------------------------------------------------------


def test_overlap_is_checked_and_a_refused_call_writes_nothing(r: redis.Redis) -> None:
    with pytest.raises(InvalidSchedule, match="'skip', 'buffer_one', 'allow'"):
        schedule(overlap="queue")
    with pytest.raises(InvalidSchedule, match="only applies to a repeating prompt"):
        sp.schedule_prompt("x", user_id="u", platform="tg", delay=60, overlap="allow")
    assert r.dbsize() == 0


def test_update_changes_the_policy_and_a_prompt_made_one_time_drops_it() -> None:
    p = schedule()
    assert sp.update_prompt(p.id, overlap="allow").overlap is Overlap.ALLOW
    once = sp.update_prompt(p.id, delay=3600)
    assert once.kind.value == "once" and once.overlap is Overlap.SKIP
    with pytest.raises(InvalidSchedule, match="only applies to a repeating prompt"):
        sp.update_prompt(p.id, overlap="buffer_one")


def test_the_stored_form_leaves_out_the_default_and_old_records_read_as_skip(
    r: redis.Redis,
) -> None:
    plain, allowing = schedule(), schedule(overlap="allow")
    keys = scope().keys
    stored = json.loads(str(r.get(keys.prompt(plain.id))))
    assert "overlap" not in stored and "skipped_runs" not in stored
    assert json.loads(str(r.get(keys.prompt(allowing.id))))["overlap"] == "allow"
    # A version 1 record (written before the field existed) reads with the default.
    stored["schema"] = 1
    old = ScheduledPrompt.from_json(json.dumps(stored))
    assert old.overlap is Overlap.SKIP and old.skipped_runs == 0


def test_the_tool_takes_overlap_for_a_cron_prompt_only(redis_url: str) -> None:
    ctx = ToolContext(user_id="u", platform="tg")
    args: dict[str, Any] = {"prompt": "status", "cron": "0 * * * *", "overlap": "buffer_one"}
    made = json.loads(handle_tool_call("schedule_prompt", args, context=ctx))
    assert made["overlap"] == "buffer_one"
    assert get_prompt_overlap(made["prompt_id"]) is Overlap.BUFFER_ONE
    args = {"prompt": "x", "delay_seconds": 600, "overlap": "allow"}
    refused = json.loads(handle_tool_call("schedule_prompt", args, context=ctx))
    assert "only applies to a repeating prompt" in refused["error"]


def get_prompt_overlap(prompt_id: str) -> Overlap:
    found = sp.get_prompt(prompt_id)
    assert found is not None
    return found.overlap


# --- long runs keep their claim ---------------------------------------------------------


def test_a_runner_call_longer_than_the_lease_keeps_its_claim_and_is_not_re_driven(
    redis_url: str, runner: Runner, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = 6.0
    sp.configure(redis_url=redis_url, lease_seconds=lease)
    p = sp.schedule_prompt("a long agent run", user_id="u", platform="tg", delay=3600)
    assert p.next_run_at is not None
    occurrence = Delivery(p.id, to_ms(p.next_run_at))
    keys = scope().keys
    renewed = threading.Event()
    original = claims_module.Claims.renew

    def spy(self: claims_module.Claims) -> None:
        original(self)
        renewed.set()

    monkeypatch.setattr(claims_module.Claims, "renew", spy)
    seen: dict[str, Any] = {}

    def long_call(_: dict[str, Any]) -> None:
        claimed_deadline = r.zscore(keys.inflight, occurrence.key)
        # The keeper renews the claim half a lease into the call (a lease of real time).
        assert renewed.wait(4 * lease), "no renewal while the runner ran"
        seen["ttl"] = r.pttl(keys.lease(p.id))
        seen["moved"] = r.zscore(keys.inflight, occurrence.key)
        seen["claimed"] = claimed_deadline
        # Another deliverer (a re-drive) finds the prompt busy, not free to run again.
        other = engine.deliver(get_redis(), scope(), occurrence)
        seen["other"] = other.outcome

    runner.during = long_call
    result = engine.deliver(get_redis(), scope(), occurrence)
    assert result.outcome is Outcome.DELIVERED
    assert seen["ttl"] > lease * 1000 / 2  # renewed: more than half a lease left
    assert seen["moved"] > seen["claimed"]  # the re-drive deadline moved with it
    assert seen["other"] is Outcome.BUSY
    assert len(runner.calls) == 1 and get(p).status.value == "executed"


def test_in_a_batch_an_allow_run_that_fails_is_handed_back_as_its_detached_run(
    clock: Clock, runner: Runner, r: redis.Redis
) -> None:
    a, b = schedule(overlap="allow"), schedule(overlap="allow")
    at = a.next_run_at
    assert at is not None and b.next_run_at == at

    def flaky(payload: dict[str, Any]) -> None:
        if payload["prompt_id"] == a.id:
            raise DeliveryError("timeout talking to the model")

    runner.during = flaky
    clock.now = at
    results = engine.deliver_many(
        get_redis(), scope(), [Delivery(a.id, to_ms(at)), Delivery(b.id, to_ms(at))]
    )
    assert [x.outcome for x in results] == [Outcome.RETRY, Outcome.DELIVERED]
    assert results[0].delivery == Delivery(a.id, to_ms(at), detached=True)
    assert results[1].delivery is None
    # The failed run waits in flight (for its retry) under its own key; both schedules
    # moved on as their runs started.
    assert f"{a.id}:{to_ms(at)}:run" in r.zrange(scope().keys.inflight, 0, -1)
    assert get(a).next_run_at == get(b).next_run_at == at + 5 * MINUTE


def test_occurrences_due_while_a_run_was_retried_are_skipped_too(
    clock: Clock, runner: Runner
) -> None:
    p = schedule()
    first = p.next_run_at
    assert first is not None

    runner.during = failing_once(runner)
    result = deliver_due(p, clock)
    assert result.outcome is Outcome.RETRY
    # The retry comes 7 minutes later (a long back-off): first+5 came due meanwhile.
    clock.now = first + 7 * MINUTE
    again = engine.deliver(
        get_redis(), scope(), Delivery(p.id, to_ms(first)), attempt=2, coalesced_ms=to_ms(first)
    )
    assert again.outcome is Outcome.DELIVERED
    assert [from_iso(c["occurrence"]) for c in runner.calls] == [first, first]
    after = get(p)
    assert after.next_run_at == first + 10 * MINUTE and after.skipped_runs == 1
