"""Batched delivery: grouping occurrences due together, and delivering a group with one
claim and one commit round trip — with every per-occurrence guarantee kept."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

import scheduled_prompts as sp
from scheduled_prompts import claims, engine, store, tasks
from scheduled_prompts._time import from_ms, to_ms, utcnow
from scheduled_prompts.claims import Claimed, Claims
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.engine import Outcome
from scheduled_prompts.keys import Keys
from scheduled_prompts.occurrences import PUBLISH_LOT, SEND_AHEAD, Delivery, batches

K = Keys("sp")


class Recorder:
    """Keeps payloads; ``hook(payload)`` runs inside each call; ``fail`` keys raise."""

    def __init__(self, hook: Any = None, fail: set[str] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.hook = hook
        self.fail = fail or set()

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        self.calls.append(payload)
        if self.hook:
            self.hook(payload)
        if payload["prompt_id"] in self.fail:
            raise sp.DeliveryError("receiver down")


@pytest.fixture
def use_runner() -> Any:
    def install(runner: Any) -> Any:
        sp.set_bot_runner(runner)
        return runner

    yield install
    sp.set_bot_runner(None)


LEASE = 60.0


class LeaseClock:
    """Time as leases see it, moved by hand: the clock ``claims.py`` reads (renewals are
    due after half a lease by it) and the TTLs of the lease keys in Redis, both moved
    forward together by :meth:`elapse`. Runners then "take" seconds without sleeping;
    the lease is a minute, so that real time (a loaded machine) cannot end one: no lease
    is ever left with less than 12 s."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    @staticmethod
    def sleep(seconds: float) -> None:  # commit's back-off when Redis is down
        time.sleep(seconds)

    def elapse(self, seconds: float) -> None:
        self.now += seconds
        for key in self.client.scan_iter(match=K.lease("*")):
            left = int(self.client.pttl(key))
            if left > seconds * 1000:
                self.client.pexpire(key, left - int(seconds * 1000))
            else:
                self.client.delete(key)  # it ran out


@pytest.fixture
def lease_clock(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> LeaseClock:
    sp.configure(redis_url=redis_url, lease_seconds=LEASE)
    clock = LeaseClock(get_redis())
    monkeypatch.setattr(claims, "time", clock)
    return clock


def due_at(t: datetime, n: int, user: str = "u1") -> list[sp.ScheduledPrompt]:
    return sp.schedule_many(
        [{"prompt": f"p{i}", "user_id": user, "platform": "tg", "at": t} for i in range(n)]
    )


def later(seconds: float = 3600) -> datetime:
    return utcnow().replace(microsecond=0) + timedelta(seconds=seconds)


def of(p: sp.ScheduledPrompt) -> Delivery:
    assert p.next_run_at is not None
    return Delivery(p.id, to_ms(p.next_run_at))


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


# --- grouping ---------------------------------------------------------------------------


def test_batches_group_by_window_and_size_and_never_before_any_member() -> None:
    t = 1_800_000_000_000
    ds = [Delivery(f"p{i}", t + ms) for i, ms in enumerate([0, 5, 19, 20, 21, 45, 300, 300])]
    groups = batches(list(reversed(ds)), size=3, window_ms=20)
    assert [sorted(d.prompt_id for d in g) for g in groups] == [
        ["p0", "p1"],  # p0-p3 are due within 20 ms of p0: more than 3, so two equal shares
        ["p2", "p3"],
        ["p4"],  # p5 is 24 ms after p4
        ["p5"],
        ["p6", "p7"],
    ]
    assert batches(ds, size=1, window_ms=20) == [[d] for d in ds]


@pytest.mark.parametrize(
    ("n", "size", "shares"),
    [
        (40, 200, [40]),  # fewer than two shares: one task
        (100, 200, [50, 50]),  # a hundred due at once: two tasks run side by side
        (450, 200, [113, 113, 112, 112]),  # spread over SPREAD_TASKS
        (10_000, 200, [200] * 50),  # a burst: as few tasks as the size allows
        (1_001, 200, [167, 167, 167, 167, 167, 166]),
        (100, 30, [25, 25, 25, 25]),  # never more than the size
    ],
)
def test_occurrences_due_together_are_spread_then_batched_by_size(
    n: int, size: int, shares: list[int]
) -> None:
    t = 1_800_000_000_000
    ds = [Delivery(f"p{i:05d}", t) for i in range(n)]
    groups = batches(ds, size=size, window_ms=20)
    assert [len(g) for g in groups] == shares
    assert sorted(d.prompt_id for g in groups for d in g) == [d.prompt_id for d in ds]


def test_triggers_are_never_batched() -> None:
    t = 1_800_000_000_000
    ds = [Delivery("a", t), Delivery("b", t, trigger=True), Delivery("c", t)]
    groups = batches(ds, size=10, window_ms=20)
    assert sorted(len(g) for g in groups) == [1, 2]
    assert [Delivery("b", t, trigger=True)] in groups


@given(
    st.lists(st.integers(0, 5_000), max_size=300),
    st.integers(1, 50),
    st.integers(0, 200),
)
def test_batches_keep_every_occurrence_once_within_bounds(
    offsets: list[int], size: int, window: int
) -> None:
    ds = [Delivery(f"p{i}", 1_800_000_000_000 + ms) for i, ms in enumerate(offsets)]
    groups = batches(ds, size, window)
    flat = [d for g in groups for d in g]
    assert sorted(flat, key=lambda d: d.prompt_id) == sorted(ds, key=lambda d: d.prompt_id)
    for g in groups:
        assert len(g) <= size
        # Sent at its first member's time, the others held until theirs: none is due
        # more than the window after the first.
        assert all(g[0].occurrence_ms <= d.occurrence_ms <= g[0].occurrence_ms + window for d in g)


# --- deliver_many -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [25, 60])
def test_a_batch_claims_and_commits_in_lots_each_occurrence_once(
    n: int, redis_url: str, use_runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A script call blocks every other client of Redis while it runs: a batch's claim and
    # commit go as calls of at most store.LOT (25) occurrences, sent together. Fast
    # runners commit once at the end; a stall of this test process (more than
    # COMMIT_EVERY) would commit early, which another test covers.
    monkeypatch.setattr(engine, "COMMIT_EVERY", 60.0)
    runner = use_runner(Recorder())
    t = later()
    ps = due_at(t, n)
    client = get_redis()
    for script in (store.CLAIM, store.COMMIT):
        client.script_load(script.source)  # so a first NOSCRIPT reply is not counted
    before = evalsha_calls(client)
    results = engine.deliver_many(client, scope(), [of(p) for p in ps], now=t)
    assert evalsha_calls(client) - before == 2 * -(-n // store.LOT)  # CLAIM and COMMIT
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * n
    assert sorted(c["prompt_id"] for c in runner.calls) == sorted(p.id for p in ps)
    for p, result in zip(ps, results, strict=True):
        stored = sp.get_prompt(p.id)
        assert stored is not None and stored.status is sp.Status.EXECUTED
        assert result.record == stored
    assert client.zcard(K.inflight) == 0 and client.zcard(K.due) == 0
    again = engine.deliver_many(client, scope(), [of(p) for p in ps], now=t)
    assert {r.outcome for r in again} == {Outcome.SKIPPED} and len(runner.calls) == n


class HeldClock:
    """The engine's clock: ``utcnow`` and a ``sleep`` that moves it (no real waiting);
    ``monotonic`` and ``perf_counter`` are the real ones."""

    monotonic = staticmethod(time.monotonic)
    perf_counter = staticmethod(time.perf_counter)

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.slept: list[float] = []

    def utcnow(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def held_clock(monkeypatch: pytest.MonkeyPatch) -> HeldClock:
    """The engine's clock, starting at ``later()``."""
    clock = HeldClock(later())
    monkeypatch.setattr(engine, "utcnow", clock.utcnow)
    monkeypatch.setattr(engine, "time", clock)
    return clock


def test_a_batch_holds_each_occurrence_until_its_own_time_not_the_latest(
    redis_url: str, use_runner: Any, held_clock: HeldClock
) -> None:
    # A batch is sent for its earliest occurrence; one due 15 ms later is held until then.
    t, clock = held_clock.now, held_clock
    first, second = due_at(t, 1)[0], due_at(t + timedelta(milliseconds=15), 1)[0]
    runner = use_runner(Recorder())
    results = engine.deliver_many(get_redis(), scope(), [of(first), of(second)])
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 2
    assert clock.slept == [0.015]
    fired = {c["prompt_id"]: (c["fired_at"], c["lateness_seconds"]) for c in runner.calls}
    assert fired[first.id][1] == 0.0 and fired[second.id][1] == 0.0
    assert datetime.fromisoformat(fired[second.id][0]) == second.next_run_at


def test_a_task_sent_ahead_holds_its_occurrence_until_its_time(
    redis_url: str, use_runner: Any, held_clock: HeldClock
) -> None:
    # Sent SEND_AHEAD before it is due: claimed at once, the runner called at its time.
    t, clock = held_clock.now, held_clock
    (p,) = due_at(t + SEND_AHEAD, 1)
    runner = use_runner(Recorder())
    (result,) = engine.deliver_many(get_redis(), scope(), [of(p)])
    assert result.outcome is Outcome.DELIVERED
    assert clock.slept == [SEND_AHEAD.total_seconds()]
    (call,) = runner.calls
    assert datetime.fromisoformat(call["fired_at"]) == p.next_run_at
    assert call["lateness_seconds"] == 0.0


def test_an_occurrence_sent_earlier_than_the_window_is_not_held(
    redis_url: str, use_runner: Any, held_clock: HeldClock
) -> None:
    # Held only within the batch window: a task a clock apart runs at once.
    t, clock = held_clock.now, held_clock
    (p,) = due_at(t + timedelta(seconds=5), 1)
    use_runner(Recorder())
    (result,) = engine.deliver_many(get_redis(), scope(), [of(p)])
    assert result.outcome is Outcome.DELIVERED and clock.slept == []


def test_mixed_batch_gives_each_occurrence_its_own_outcome(redis_url: str, use_runner: Any) -> None:
    t = later()
    ok, cancelled, failing, busy = due_at(t, 4)
    cron = sp.schedule_prompt("cron", user_id="u1", platform="tg", cron="*/5 * * * *")
    runner = use_runner(Recorder(fail={failing.id}))
    sp.cancel_prompt(cancelled.id)
    client = get_redis()
    client.set(K.lease(busy.id), "another-worker", px=30_000)
    items = [of(ok), of(cancelled), of(failing), of(busy), of(cron)]
    assert cron.next_run_at is not None
    results = engine.deliver_many(client, scope(), items, now=max(t, cron.next_run_at))
    outcomes = [r.outcome for r in results]
    assert outcomes == [
        Outcome.DELIVERED,
        Outcome.SKIPPED,
        Outcome.RETRY,
        Outcome.BUSY,
        Outcome.DELIVERED,
    ]
    assert sorted(c["prompt_id"] for c in runner.calls) == sorted([ok.id, failing.id, cron.id])
    assert results[2].retry_in == engine.backoff(1) and results[3].retry_in > 0
    stored_cron = sp.get_prompt(cron.id)
    assert stored_cron is not None and stored_cron.run_count == 1
    assert stored_cron.next_run_at is not None and stored_cron.next_run_at > cron.next_run_at
    # The failed one stays in flight (for its retry), the busy one keeps its holder's lease.
    inflight = set(client.zrange(K.inflight, 0, -1))
    assert of(failing).key in inflight and of(ok).key not in inflight
    assert client.get(K.lease(busy.id)) == "another-worker"
    failed = sp.get_prompt(failing.id)
    assert failed is not None and failed.status is sp.Status.SCHEDULED


def test_slow_runners_keep_the_leases_of_what_is_still_to_run(
    lease_clock: LeaseClock, use_runner: Any
) -> None:
    t = later()
    ps = due_at(t, 4)
    client = get_redis()
    seen: list[int] = []

    def slow(payload: dict[str, Any]) -> None:
        # The lease of the last occurrence, as later ones wait their turn.
        seen.append(int(client.pttl(K.lease(ps[-1].id))))
        lease_clock.elapse(0.4 * LEASE)  # each call takes 0.4 of a lease

    runner = use_runner(Recorder(hook=slow))
    results = engine.deliver_many(client, scope(), [of(p) for p in ps], now=t)
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 4
    assert len(runner.calls) == 4
    # 1.2 leases after the claim the last one's lease is still held: renewed before the
    # third call (0.8 of a lease had passed). Unrenewed it would have run out at 1.0.
    assert all(ms > 0 for ms in seen), seen
    assert seen[2] > seen[1], "the third call found the lease renewed"


def test_an_occurrence_whose_lease_ran_out_is_not_delivered(
    lease_clock: LeaseClock, use_runner: Any
) -> None:
    t = later()
    first, second = due_at(t, 2)
    client = get_redis()

    def steal(payload: dict[str, Any]) -> None:
        # Another deliverer took the second prompt's lease (as after ours ran out), and
        # the call takes past half a lease: a renewal comes before the second call.
        client.set(K.lease(second.id), "thief", px=int(2 * LEASE * 1000))
        lease_clock.elapse(0.6 * LEASE)

    runner = use_runner(Recorder(hook=steal))
    results = engine.deliver_many(client, scope(), [of(first), of(second)], now=t)
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.SKIPPED]
    assert [c["prompt_id"] for c in runner.calls] == [first.id]
    assert client.get(K.lease(second.id)) == "thief"
    still = sp.get_prompt(second.id)
    assert still is not None and still.status is sp.Status.SCHEDULED


def test_a_lease_lost_at_a_renewal_is_remembered_until_that_occurrence_comes_up(
    lease_clock: LeaseClock, use_runner: Any
) -> None:
    """One renewal finds the third lease taken; it is not delivered, even though no
    second renewal falls due before its turn."""
    t = later()
    first, second, third = due_at(t, 3)
    client = get_redis()

    def runner_hook(payload: dict[str, Any]) -> None:
        if payload["prompt_id"] == first.id:
            client.set(K.lease(third.id), "thief", px=int(2 * LEASE * 1000))
            lease_clock.elapse(0.6 * LEASE)  # past half the lease: renewal before the second call

    runner = use_runner(Recorder(hook=runner_hook))
    results = engine.deliver_many(client, scope(), [of(first), of(second), of(third)], now=t)
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.DELIVERED, Outcome.SKIPPED]
    assert [c["prompt_id"] for c in runner.calls] == [first.id, second.id]
    assert client.get(K.lease(third.id)) == "thief"


def test_finished_outcomes_are_committed_while_slow_runners_go_on(
    redis_url: str, use_runner: Any
) -> None:
    t = later()
    ps = due_at(t, 3)
    statuses: list[list[str]] = []

    def look(payload: dict[str, Any]) -> None:
        statuses.append([str(sp.get_prompt(p.id).status) for p in ps])  # type: ignore[union-attr]
        time.sleep(engine.COMMIT_EVERY * 2)

    use_runner(Recorder(hook=look))
    engine.deliver_many(get_redis(), scope(), [of(p) for p in ps], now=t)
    # When the second runner is called, the first outcome is already stored.
    assert statuses[1][0] == "executed" and statuses[2][:2] == ["executed", "executed"]


def test_commit_retried_after_a_lost_reply_applies_the_outcome_once(redis_url: str) -> None:
    t = later()
    (p,) = due_at(t, 1)
    client, ctx = get_redis(), scope()
    claims = Claims(client, ctx)
    (claimed,) = claims.claim([of(p)], t)
    assert isinstance(claimed, Claimed)

    def change(r: sp.ScheduledPrompt) -> sp.ScheduledPrompt:
        return r.replace(run_count=r.run_count + 1, version=r.version + 1, updated_at=t)

    first = claims.commit([(claimed, change)])
    # The same commit again, as after a reply lost to a connection error.
    second = claims.commit([(claimed, change)])
    stored = sp.get_prompt(p.id)
    assert stored is not None and stored.run_count == 1
    assert first == second == [stored]


def test_commit_of_a_record_changed_meanwhile_reads_it_again(redis_url: str) -> None:
    t = later()
    a, b = due_at(t, 2)
    client, ctx = get_redis(), scope()
    claims = Claims(client, ctx)
    taken = claims.claim([of(a), of(b)], t)
    assert all(isinstance(c, Claimed) for c in taken)
    # An edit of b's metadata lands between claim and commit (no schedule change).
    raw = json.loads(client.get(K.prompt(b.id)))  # type: ignore[arg-type]
    raw["metadata"] = {"edited": True}
    client.set(K.prompt(b.id), json.dumps(raw))

    def bump(r: sp.ScheduledPrompt) -> sp.ScheduledPrompt:
        return r.replace(run_count=r.run_count + 1)

    out = claims.commit([(c, bump) for c in taken])  # type: ignore[misc]
    assert [r.run_count if r else None for r in out] == [1, 1]
    stored_b = sp.get_prompt(b.id)
    assert stored_b is not None and stored_b.metadata == {"edited": True}
    assert stored_b.run_count == 1


# --- the Celery side: publish and the deliver_batch task ------------------------------


def queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The task messages waiting in the Redis broker list of ``queue``."""
    out = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "args": body[0], "kwargs": body[1],
                    "eta": message["headers"].get("eta")})  # fmt: skip
    return out


@pytest.fixture
def broker(redis_url: str) -> Any:
    sp.configure(redis_url=redis_url, queue="test-batches")
    yield get_redis()
    sp.configure()


def test_publish_sends_occurrences_due_together_as_one_batch_task(broker: redis.Redis) -> None:
    t = to_ms(later(120))
    ds = [Delivery(f"p{i}", t) for i in range(450)] + [Delivery("late", t + 5_000)]
    tasks.publish(ds)
    messages = queued(broker, "test-batches")
    batch = [m for m in messages if m["task"] == tasks.DELIVER_BATCH]
    single = [m for m in messages if m["task"] == tasks.DELIVER]
    # 450 due at once: spread over SPREAD_TASKS tasks of equal shares (the default size
    # of 200 allows it).
    assert sorted(len(m["args"][0]) for m in batch) == [112, 112, 113, 113]
    assert sorted(pid for m in batch for pid, _ in m["args"][0]) == sorted(
        f"p{i}" for i in range(450)
    )
    assert [m["args"] for m in single] == [["late", t + 5_000]]
    # Sent a little ahead: the worker claims meanwhile and calls each at its time.
    assert {datetime.fromisoformat(m["eta"]) for m in batch} == {from_ms(t) - SEND_AHEAD}


def test_a_batch_is_sent_for_its_earliest_occurrence(broker: redis.Redis) -> None:
    t = to_ms(later(120))
    tasks.publish([Delivery("b", t + 12), Delivery("a", t), Delivery("c", t + 20)])
    (message,) = queued(broker, "test-batches")
    assert message["task"] == tasks.DELIVER_BATCH
    assert [pid for pid, _ in message["args"][0]] == ["a", "b", "c"]
    assert datetime.fromisoformat(message["eta"]) == from_ms(t) - SEND_AHEAD


def queued_batches(client: redis.Redis) -> tuple[list[int], set[str]]:
    """The sizes of the queued ``deliver_batch`` tasks and the prompts they carry,
    checking that no occurrence went twice."""
    carried = [m["args"][0] for m in queued(client, "test-batches")]
    items = [tuple(i) for task in carried for i in task]
    assert len(items) == len(set(items))
    return sorted(len(task) for task in carried), {str(pid) for pid, _ in items}


def test_schedule_many_publishes_occurrences_due_together_in_full_batches(
    broker: redis.Redis,
) -> None:
    # 2,500 due at once within the horizon: promoted in lots of PROMOTE_LOT, published
    # PUBLISH_LOT at a time, so they go in tasks of the batch size (200), not in a lot's
    # shares; the last 500 are spread over SPREAD_TASKS.
    assert store.PROMOTE_LOT < PUBLISH_LOT == 1_000
    ps = due_at(later(5), 2_500)
    assert queued_batches(broker) == ([125] * 4 + [200] * 10, {p.id for p in ps})


def test_tick_publishes_occurrences_due_together_in_full_batches(broker: redis.Redis) -> None:
    t = later(3600)  # beyond the horizon: left to the tick
    ps = due_at(t, 1_300)
    assert queued(broker, "test-batches") == []
    result = engine.tick(broker, scope(), tasks.publish, now=t - timedelta(seconds=1))
    assert result["promoted"] == 1_300
    # 1,000 (one PUBLISH_LOT) as 5 tasks of 200, the last 300 spread over 4.
    assert queued_batches(broker) == ([75] * 4 + [200] * 5, {p.id for p in ps})


def test_batch_size_one_publishes_one_deliver_task_each(redis_url: str) -> None:
    sp.configure(redis_url=redis_url, queue="test-batches", deliver_batch_size=1)
    try:
        t = to_ms(later(120))
        tasks.publish([Delivery(f"p{i}", t) for i in range(5)])
        messages = queued(get_redis(), "test-batches")
        assert [m["task"] for m in messages] == [tasks.DELIVER] * 5
    finally:
        sp.configure()


def test_deliver_batch_task_delivers_and_hands_failures_to_their_own_retry(
    broker: redis.Redis, use_runner: Any
) -> None:
    t = later(1)
    ps = due_at(t, 3)
    runner = use_runner(Recorder(fail={ps[1].id}))
    items = [[p.id, to_ms(t)] for p in ps]
    counts = tasks.deliver_batch.apply(args=(items,)).get()
    assert counts == {"delivered": 2, "retry": 1}
    assert len(runner.calls) == 3
    messages = queued(broker, "test-batches")
    (promoted,) = [m for m in messages if m["task"] == tasks.DELIVER_BATCH]
    (retry,) = [m for m in messages if m["task"] == tasks.DELIVER]
    # Scheduling them (due within the horizon) published the batch this test runs by hand.
    assert promoted["task"] == tasks.DELIVER_BATCH and promoted["args"] == [items]
    assert retry["task"] == tasks.DELIVER and retry["args"] == [ps[1].id, to_ms(t)]
    assert retry["kwargs"] == {"attempt": 2, "coalesced_ms": to_ms(t)}
    # The retry delivers it as attempt 2.
    runner.fail.clear()
    assert tasks.deliver.apply(args=retry["args"], kwargs=retry["kwargs"]).get() == "delivered"
    assert runner.calls[-1]["attempt"] == 2
    assert all(sp.get_prompt(p.id).status is sp.Status.EXECUTED for p in ps)  # type: ignore[union-attr]


def test_a_stopping_worker_commits_what_ran_and_hands_back_the_rest(
    redis_url: str, use_runner: Any
) -> None:
    t = later()
    ps = due_at(t, 5)
    stop = threading.Event()
    runner = use_runner(Recorder(hook=lambda payload: stop.set()))  # stop during call 1
    client = get_redis()
    results = engine.deliver_many(client, scope(), [of(p) for p in ps], now=t, stopping=stop.is_set)
    assert [r.outcome for r in results] == [Outcome.DELIVERED] + [Outcome.DEFERRED] * 4
    assert [c["prompt_id"] for c in runner.calls] == [ps[0].id]
    # The rest: still in flight, no lease held, so their next task claims them at once.
    inflight = set(client.zrange(K.inflight, 0, -1))
    assert of(ps[0]).key not in inflight
    assert {of(p).key for p in ps[1:]} <= inflight
    assert [client.exists(K.lease(p.id)) for p in ps[1:]] == [0] * 4
    stop.clear()
    later_results = engine.deliver_many(client, scope(), [of(p) for p in ps], now=t)
    assert [r.outcome for r in later_results] == [Outcome.SKIPPED] + [Outcome.DELIVERED] * 4
    keys = [c["idempotency_key"] for c in runner.calls]
    assert sorted(keys) == sorted(of(p).key for p in ps)  # each once


def test_after_a_slow_runner_call_the_rest_of_the_batch_goes_on_as_tasks_of_their_own(
    redis_url: str, use_runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = later()
    ps = due_at(t, 4)
    clock = LeaseClock(get_redis())
    monkeypatch.setattr(engine, "time", clock)  # the batch's clock: calls "take" time

    def hook(payload: dict[str, Any]) -> None:
        # The second call is an agent run: longer than SPLIT_AFTER.
        clock.now += 2 * engine.SPLIT_AFTER if payload["prompt_id"] == ps[1].id else 0.001

    runner = use_runner(Recorder(hook=hook))
    client = get_redis()
    results = engine.deliver_many(client, scope(), [of(p) for p in ps], now=t)
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 2 + [Outcome.DEFERRED] * 2
    assert [r.retry_in for r in results[2:]] == [0.0, 0.0]  # sent again at once
    assert [c["prompt_id"] for c in runner.calls] == [ps[0].id, ps[1].id]
    # Handed back unclaimed: their own tasks claim them at once.
    assert [client.exists(K.lease(p.id)) for p in ps[2:]] == [0, 0]
    assert {of(p).key for p in ps[2:]} <= set(client.zrange(K.inflight, 0, -1))


def test_deliver_batch_sends_what_it_handed_back_as_deliver_tasks(
    broker: redis.Redis, use_runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = later(1)
    ps = due_at(t, 3)
    stop = threading.Event()
    use_runner(Recorder(hook=lambda payload: stop.set()))
    monkeypatch.setattr(tasks, "stopping", stop.is_set)
    broker.delete("test-batches")  # what scheduling them published
    counts = tasks.deliver_batch.apply(args=([[p.id, to_ms(t)] for p in ps],)).get()
    assert counts == {"delivered": 1, "deferred": 2}
    sent = queued(broker, "test-batches")
    assert sorted(m["args"][0] for m in sent) == sorted(p.id for p in ps[1:])
    assert {m["task"] for m in sent} == {tasks.DELIVER}
    assert all(m["kwargs"] == {} for m in sent)  # first attempts, as before


def test_concurrent_batches_of_the_same_occurrences_deliver_each_once(
    redis_url: str, use_runner: Any
) -> None:
    """Two workers handed the same batch (a duplicate message, a re-drive)."""
    t = later()
    ps = due_at(t, 40)
    runner = use_runner(Recorder())
    ds = [of(p) for p in ps]
    client = get_redis()
    retried: list[Delivery] = []

    def work(order: list[Delivery]) -> None:
        for d, r in zip(order, engine.deliver_many(client, scope(), order, now=t), strict=True):
            if r.outcome is Outcome.BUSY:
                retried.append(d)

    threads = [threading.Thread(target=work, args=(o,)) for o in (ds, ds[::-1])]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for d in retried:  # what was busy is retried later, as the task does
        engine.deliver(client, scope(), d, now=t)
    keys = [c["idempotency_key"] for c in runner.calls]
    assert sorted(keys) == sorted(d.key for d in ds)


def test_a_deliver_task_takes_along_what_is_due_at_the_same_instant(
    broker: redis.Redis, use_runner: Any
) -> None:
    """Prompts written one by one shortly before they are due each get a deliver task;
    the first to run delivers them all, and the others find them done."""
    # Well ahead: written after their time (a loaded machine), their re-drive deadlines
    # would count from their writes and they would not be siblings. Run by hand below,
    # before their time (not held: further ahead than the batch window).
    t = later(30)
    ps = [sp.schedule_prompt(f"p{i}", user_id="u1", platform="tg", at=t) for i in range(5)]
    other_time = sp.schedule_prompt(
        "later", user_id="u1", platform="tg", at=t + timedelta(seconds=1)
    )
    messages = queued(broker, "test-batches")
    assert [m["task"] for m in messages] == [tasks.DELIVER] * 6  # one task per write
    trigger_key = sp.trigger_prompt(other_time.id)
    runner = use_runner(Recorder())
    client = get_redis()
    assert tasks.deliver.apply(args=(ps[0].id, to_ms(t))).get() == "delivered"
    assert sorted(c["prompt_id"] for c in runner.calls) == sorted(p.id for p in ps)
    for p in ps[1:]:  # their own tasks find nothing left to do
        assert tasks.deliver.apply(args=(p.id, to_ms(t))).get() == "skipped"
    assert len(runner.calls) == 5
    assert {p.id for p in ps}.isdisjoint(
        Delivery.from_key(k).prompt_id for k in client.zrange(K.inflight, 0, -1)
    )
    # Neither the prompt due a second later nor the trigger was taken along.
    assert other_time.id not in {c["prompt_id"] for c in runner.calls}
    assert trigger_key not in {c["idempotency_key"] for c in runner.calls}


def test_tasks_looking_for_siblings_at_once_take_different_ones(
    broker: redis.Redis, use_runner: Any
) -> None:
    """Pool processes running deliver tasks of the same instant side by side each take
    others along, never the same ones; one taken by a task that died before claiming it
    is delivered by its own task, once."""
    t = later(30)
    ps = [sp.schedule_prompt(f"p{i}", user_id="u1", platform="tg", at=t) for i in range(6)]
    runner = use_runner(Recorder())
    client = get_redis()
    first = {d.prompt_id for d in engine.siblings(client, scope(), of(ps[0]), 2)}
    assert len(first) == 2 and ps[0].id not in first
    # A task whose own occurrence another task took already takes one more in its place.
    taken = next(p for p in ps if p.id in first)
    second = {d.prompt_id for d in engine.siblings(client, scope(), of(taken), 2)}
    assert len(second) == 3 and taken.id not in second
    assert first.isdisjoint(second)
    assert first | second | {ps[0].id} == {p.id for p in ps}
    # Both lookups were tasks that died before their claims: every occurrence is still
    # in flight, and the tasks of their own deliver each once.
    inflight = {Delivery.from_key(k).prompt_id for k in client.zrange(K.inflight, 0, -1)}
    assert inflight == {p.id for p in ps}
    outcomes = [tasks.deliver.apply(args=(p.id, to_ms(t))).get() for p in ps]
    assert outcomes.count("delivered") >= 1
    assert set(outcomes) <= {"delivered", "skipped"}
    assert sorted(c["idempotency_key"] for c in runner.calls) == sorted(
        f"{p.id}:{to_ms(t)}" for p in ps
    )


def test_lookups_at_the_very_millisecond_of_the_occurrence_still_take_different_ones(
    broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claim's deadline counted from that instant is the one PROMOTE gave: what a lookup
    # takes must still leave it, or the next lookup would take it again.
    t = later(30)
    ps = [sp.schedule_prompt(f"p{i}", user_id="u1", platform="tg", at=t) for i in range(6)]
    monkeypatch.setattr(engine, "utcnow", lambda: t)
    client = get_redis()
    first = {d.prompt_id for d in engine.siblings(client, scope(), of(ps[0]), 2)}
    second = {d.prompt_id for d in engine.siblings(client, scope(), of(ps[5]), 2)}
    assert len(first) == 2 and len(second) == 2 and first.isdisjoint(second)
    assert ps[0].id not in second and ps[5].id not in first
