"""Concurrency: cancel, pause, update and trigger racing with delivery, on a real Redis.

The fence under test (docs/design.md, "The engine: life of one occurrence"): a delivery
holds its prompt's lease from CLAIM to COMMIT; the PUT script refuses a change while the
lease is held, and the API call waits until the delivery committed. So once a cancel,
pause or update returns, no delivery of the old state can start.

Three layers:

1. a hypothesis state machine driving the public API and ``engine.deliver`` against a
   model of the state machine, with every index checked after every step;
2. threads: a runner blocked mid-delivery while a change is attempted, then hundreds of
   tight rounds (a ``Barrier`` releases a deliverer and a changer at once);
3. processes (``spawn``): the same race between a delivering and a cancelling process.

Runner calls are stamped with ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every
process on the machine), so "no runner call started after the change returned" is a
comparison of two numbers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import scheduled_prompts as sp
from scheduled_prompts import api, engine
from scheduled_prompts._time import from_ms, to_ms, utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.engine import Outcome
from scheduled_prompts.keys import Keys
from scheduled_prompts.models import Kind, ScheduledPrompt, Status
from scheduled_prompts.occurrences import Delivery

K = Keys("sp")
MS = timedelta(milliseconds=1)
HOUR = timedelta(hours=1)
#: Cron expressions the model knows, with their step in minutes (both divide an hour).
CRON_STEPS = {"* * * * *": 1, "*/5 * * * *": 5}
#: A daily expression that never coincides with an occurrence of the ones above.
ELSEWHERE = "7 3 * * *"


# --- helpers: the store checked as a whole, prompts, deliveries -----------------------


def check_store(client: redis.Redis, ids: Iterable[str]) -> dict[str, ScheduledPrompt]:
    """Every record parses and every index agrees with the records; returns the records.

    ``ids`` are all the prompts the test created: the store must hold exactly those.
    """
    ids = list(ids)
    raws = client.mget([K.prompt(i) for i in ids]) if ids else []
    records: dict[str, ScheduledPrompt] = {}
    for pid, raw in zip(ids, raws, strict=True):
        assert raw is not None, f"record of {pid} is missing"
        records[pid] = ScheduledPrompt.from_json(raw)  # raises on a corrupt record
        assert records[pid].id == pid
    assert set(client.zrange(K.ids, 0, -1)) == set(ids)
    due = {str(m): int(s) for m, s in client.zrange(K.due, 0, -1, withscores=True)}
    finished = {str(m): int(s) for m, s in client.zrange(K.finished, 0, -1, withscores=True)}
    inflight = {str(m) for m in client.zrange(K.inflight, 0, -1)}
    assert set(due) <= set(ids) and set(finished) <= set(ids)
    open_counts: Counter[str] = Counter()
    by_user: dict[str, set[str]] = {}
    for pid, rec in records.items():
        by_user.setdefault(rec.user_id, set()).add(pid)
        if rec.status.is_live:
            assert rec.next_run_at is not None
            current = f"{pid}:{to_ms(rec.next_run_at)}"
            # Live: waiting in the due index, or handed to Celery (in flight), or both
            # (a rewrite puts it back in due while its task is still out).
            assert pid in due or current in inflight, f"live {pid} is in neither index"
            if pid in due:
                assert due[pid] == to_ms(rec.next_run_at), f"due score of {pid} is stale"
        else:
            assert pid not in due, f"{rec.status} {pid} is still in the due index"
            assert rec.next_run_at is None
        if rec.status.is_terminal:
            assert finished.get(pid) == to_ms(rec.updated_at), f"{pid} not in finished"
        else:
            assert pid not in finished, f"{rec.status} {pid} is in the finished index"
        if rec.status.is_open:
            open_counts[rec.user_id] += 1
    for user, members in by_user.items():
        assert set(client.zrange(K.user(user), 0, -1)) == members
    stored_counts = {u: int(c) for u, c in client.hgetall(K.open_counts).items()}
    assert stored_counts == dict(open_counts)
    for key in inflight:  # only occurrences of known prompts are in flight
        assert Delivery.from_key(key).prompt_id in records, key
    return records


def make(kind: str, text: str = "old text", user: str = "u1") -> ScheduledPrompt:
    if kind == "once":
        return sp.schedule_prompt(text, user_id=user, platform="test", delay=600)
    return sp.schedule_prompt(text, user_id=user, platform="test", cron="*/5 * * * *")


def occurrence(p: ScheduledPrompt) -> Delivery:
    assert p.next_run_at is not None
    return Delivery(p.id, to_ms(p.next_run_at))


def get(p: ScheduledPrompt) -> ScheduledPrompt:
    found = sp.get_prompt(p.id)
    assert found is not None
    return found


def leases(client: redis.Redis) -> list[str]:
    return [str(k) for k in client.scan_iter(match=K.lease("*"))]


# --- 1. the state machine --------------------------------------------------------------


class SimClock:
    """The clock the verbs read (patched over ``api.utcnow``) and deliveries are given."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


CLOCK = SimClock()


def next_fire(step: int, after: datetime) -> datetime:
    """Brute-force reference: the first ``*/step`` minute strictly after ``after``."""
    return floor_fire(step, after) + timedelta(minutes=step)


def floor_fire(step: int, at: datetime) -> datetime:
    """The last ``*/step`` minute at or before ``at``."""
    floor = at.replace(second=0, microsecond=0)
    return floor - timedelta(minutes=floor.minute % step)


@dataclass
class Model:
    """What one prompt should look like."""

    id: str
    user: str
    kind: Kind
    status: Status
    text: str
    updated_at: datetime
    next_run_at: datetime | None
    schedule_time: datetime | None = None
    cron: str | None = None
    max_runs: int | None = None
    grace: float | None = None
    run_count: int = 0
    trigger_count: int = 0
    failure_count: int = 0
    version: int = 1
    last_execution: datetime | None = None
    #: Every occurrence that was current at some point (replayed as stale messages).
    seen: list[Delivery] = field(default_factory=list)
    #: Triggers requested and neither delivered nor dropped yet.
    triggers: list[Delivery] = field(default_factory=list)
    #: Deliveries whose outcome was committed (replayed as duplicate messages).
    done: list[Delivery] = field(default_factory=list)

    @property
    def current(self) -> Delivery | None:
        if not self.status.is_live or self.next_run_at is None:
            return None
        return Delivery(self.id, to_ms(self.next_run_at))

    def set_next(self, when: datetime | None) -> None:
        self.next_run_at = when
        if self.current is not None and self.current not in self.seen:
            self.seen.append(self.current)

    def changed(self, now: datetime) -> None:
        self.updated_at = now
        self.version += 1

    @property
    def step(self) -> int:
        assert self.cron is not None
        return CRON_STEPS[self.cron]


class ModelRunner:
    """Records every call, and whether the model allowed a delivery at that moment."""

    def __init__(self) -> None:
        self.reset(None)

    def reset(self, machine: PromptMachine | None) -> None:
        self.machine = machine
        self.fail = False
        self.calls: list[dict[str, Any]] = []  # deliveries that succeeded
        self.failed: list[dict[str, Any]] = []
        self.violations: list[str] = []

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        # engine.deliver catches whatever a runner raises: record, never assert, here.
        assert self.machine is not None
        problem = self.machine.forbidden(payload)
        if problem:
            self.violations.append(problem)
        if self.fail:
            self.failed.append(payload)
            raise sp.DeliveryError("the platform is down (test)")
        self.calls.append(payload)


RUNNER = ModelRunner()
#: kind, delay (once), cron, max_runs (cron), misfire_grace_seconds
Spec = tuple[Kind, int, str, int | None, float | None]
SLOTS = 3
slots = st.integers(0, SLOTS - 1)
specs = st.tuples(
    st.sampled_from([Kind.ONCE, Kind.CRON]),
    st.sampled_from([1, 90, 600, 3600]),  # delay (once); 1 and 90 s are promoted at once
    st.sampled_from(sorted(CRON_STEPS)),
    st.sampled_from([None, 1, 3]),  # max_runs (cron)
    st.sampled_from([None, 60.0]),  # misfire_grace_seconds
)
lateness = st.sampled_from([0.0, 0.4, 30.0, 150.0])  # 150 s coalesces and misses grace


class PromptMachine(RuleBasedStateMachine):
    """The public API and ``engine.deliver`` against a model, one step at a time.

    The verbs read ``CLOCK`` (patched over ``api.utcnow``) and deliveries are given
    ``now=`` from it; it moves forward by at least 1 ms every step, as a real clock
    would between two calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.client = get_redis()
        self.client.flushall()  # one store per example
        self.ctx = scope()
        # The same phase against minute boundaries in every example (and on replay).
        CLOCK.now = utcnow().replace(minute=0, second=30, microsecond=123_000) + HOUR
        self.slots: list[Model] = []
        self.models: dict[str, Model] = {}
        self.stored: dict[str, tuple[str, int]] = {}  # id -> (JSON, version) last seen
        self.delivering: Delivery | None = None
        RUNNER.reset(self)

    # --- helpers

    def advance(self, seconds: float = 0.0) -> datetime:
        CLOCK.now = CLOCK.now + timedelta(seconds=seconds) + MS
        return CLOCK.now

    def raw(self, m: Model) -> str:
        value = self.client.get(K.prompt(m.id))
        assert value is not None
        return str(value)

    def forbidden(self, payload: dict[str, Any]) -> str | None:
        """Why the model forbids this runner call right now (None: allowed)."""
        m = self.models.get(payload["prompt_id"])
        if m is None:
            return f"delivery of unknown prompt {payload['prompt_id']}"
        d = self.delivering
        if d is None or d.prompt_id != m.id:
            return f"runner called outside a delivery: {payload['idempotency_key']}"
        if d.trigger:
            # An accepted trigger is delivered unless the prompt was cancelled since.
            if m.status is Status.CANCELLED:
                return f"trigger {d.key} delivered while the prompt is {m.status}"
            if d not in m.triggers:
                return f"trigger {d.key} delivered again or never requested"
            return None
        if not m.status.is_live:
            return f"occurrence {d.key} delivered while the prompt is {m.status}"
        if d != m.current:
            return f"occurrence {d.key} delivered after it was rescheduled away"
        return None

    def create(self, slot: int, spec: Spec) -> None:
        kind, delay, cron, max_runs, grace = spec
        now = self.advance()
        user = f"u{slot % 2}"
        text = f"prompt {len(self.models)}"
        if kind is Kind.ONCE:
            p = sp.schedule_prompt(
                text, user_id=user, platform="test", delay=delay, misfire_grace_seconds=grace
            )
            at = now + timedelta(seconds=delay)
            m = Model(p.id, user, kind, Status.SCHEDULED, text, now, None, schedule_time=at)
            m.set_next(at)
        else:
            p = sp.schedule_prompt(
                text,
                user_id=user,
                platform="test",
                cron=cron,
                max_runs=max_runs,
                misfire_grace_seconds=grace,
            )
            m = Model(p.id, user, kind, Status.ACTIVE, text, now, None, cron=cron)
            m.max_runs = max_runs
            m.set_next(next_fire(m.step, now))
        m.grace = grace
        assert p.id not in self.models
        self.models[p.id] = m
        if slot < len(self.slots):
            self.slots[slot] = m  # the old prompt stays in the store and in the checks
        else:
            self.slots.append(m)

    def expect(self, m: Model, d: Delivery, now: datetime) -> tuple[Outcome, datetime | None]:
        """What delivering ``d`` at ``now`` must do, and the occurrence it delivers."""
        if d.trigger:
            if d in m.done or m.status is Status.CANCELLED:
                return Outcome.SKIPPED, None
            return Outcome.DELIVERED, from_ms(d.occurrence_ms)
        if d != m.current:
            return Outcome.SKIPPED, None
        occurrence = d.eta
        if m.kind is Kind.CRON:  # coalesced: the latest occurrence not after now
            occurrence = max(occurrence, floor_fire(m.step, now))
        reference = m.schedule_time if m.kind is Kind.ONCE else occurrence
        assert reference is not None
        if m.grace is not None and (now - reference).total_seconds() > m.grace:
            return Outcome.MISSED, occurrence
        return Outcome.DELIVERED, occurrence

    def deliver(self, m: Model, d: Delivery, now: datetime, *, fail: bool = False) -> None:
        if d.eta > now:  # an ETA task never runs before its time
            now = CLOCK.now = d.eta
        outcome, occurrence = self.expect(m, d, now)
        if fail and outcome is Outcome.DELIVERED:
            outcome = Outcome.RETRY
        before = self.raw(m)
        calls, failed = len(RUNNER.calls), len(RUNNER.failed)
        RUNNER.fail = fail
        self.delivering = d
        try:
            result = engine.deliver(self.client, self.ctx, d, now=now)
        finally:
            self.delivering = None
            RUNNER.fail = False
        assert RUNNER.violations == []
        assert result.outcome is outcome, (d.key, result, outcome)
        new_calls = RUNNER.calls[calls:]
        assert len(new_calls) == (outcome is Outcome.DELIVERED)
        assert len(RUNNER.failed) - failed == (outcome is Outcome.RETRY)
        if outcome in (Outcome.SKIPPED, Outcome.RETRY):
            assert self.raw(m) == before, "a delivery that did not happen changed the record"
            if outcome is Outcome.SKIPPED:
                if d in m.triggers:  # the prompt was cancelled: dropped for good
                    m.triggers.remove(d)
                assert self.client.zscore(K.inflight, d.key) is None
            else:
                assert self.client.zscore(K.inflight, d.key) is not None  # retried later
            return
        assert occurrence is not None
        m.changed(now)
        m.done.append(d)
        if outcome is Outcome.MISSED:
            m.failure_count += 1
        else:
            (payload,) = new_calls
            key = d.key if d.trigger else f"{m.id}:{to_ms(occurrence)}"
            assert payload["idempotency_key"] == key
            assert payload["run_number"] == m.run_count + 1
            assert payload["prompt"] == m.text
            m.run_count += 1
            m.last_execution = now
        if d.trigger:
            m.trigger_count += 1
            m.triggers.remove(d)
            return
        if m.kind is Kind.ONCE:
            m.status = Status.EXECUTED if outcome is Outcome.DELIVERED else Status.FAILED
            m.set_next(None)
            return
        runs = m.run_count - m.trigger_count
        if m.max_runs is not None and runs >= m.max_runs:
            m.status = Status.EXECUTED
            m.set_next(None)
        else:
            m.set_next(next_fire(m.step, max(now, occurrence)))

    def refused(self, call: Callable[[], object], m: Model) -> None:
        before = self.raw(m)
        with pytest.raises(sp.ConflictingPrompt, match=m.status.value):
            call()
        assert self.raw(m) == before, "a refused call wrote"

    # --- rules

    @initialize(first=st.lists(specs, min_size=SLOTS, max_size=SLOTS))
    def schedule_initial(self, first: list[Spec]) -> None:
        for slot, spec in enumerate(first):
            self.create(slot, spec)

    @rule(slot=slots, spec=specs)
    def schedule(self, slot: int, spec: Spec) -> None:
        self.create(slot, spec)

    @rule(slot=slots)
    def cancel(self, slot: int) -> None:
        m = self.slots[slot]
        now = self.advance()
        if m.status in (Status.EXECUTED, Status.FAILED):
            self.refused(lambda: sp.cancel_prompt(m.id), m)
            return
        got = sp.cancel_prompt(m.id)
        if m.status is not Status.CANCELLED:
            m.status = Status.CANCELLED
            m.set_next(None)
            m.changed(now)
        assert (got.status, got.version) == (m.status, m.version)

    @rule(slot=slots)
    def pause(self, slot: int) -> None:
        m = self.slots[slot]
        now = self.advance()
        if m.status.is_terminal:
            self.refused(lambda: sp.pause_prompt(m.id), m)
            return
        got = sp.pause_prompt(m.id)
        if m.status.is_live:
            m.status = Status.PAUSED
            m.set_next(None)
            m.changed(now)
        assert (got.status, got.version) == (m.status, m.version)

    @rule(slot=slots)
    def resume(self, slot: int) -> None:
        m = self.slots[slot]
        now = self.advance()
        if m.status.is_terminal:
            self.refused(lambda: sp.resume_prompt(m.id), m)
            return
        got = sp.resume_prompt(m.id)
        if m.status is Status.PAUSED:
            if m.kind is Kind.ONCE:
                assert m.schedule_time is not None
                m.status = Status.SCHEDULED
                m.set_next(max(m.schedule_time, now))
            else:
                m.status = Status.ACTIVE
                m.set_next(next_fire(m.step, now))
            m.changed(now)
        assert (got.status, got.next_run_at, got.version) == (m.status, m.next_run_at, m.version)

    @rule(slot=slots, text=st.sampled_from(["alpha", "beta"]))
    def update_text(self, slot: int, text: str) -> None:
        m = self.slots[slot]
        now = self.advance()
        if m.status.is_terminal:
            self.refused(lambda: sp.update_prompt(m.id, prompt=text), m)
            return
        got = sp.update_prompt(m.id, prompt=text)
        if m.text != text:
            m.text = text
            m.changed(now)
        assert (got.prompt, got.version) == (m.text, m.version)

    @rule(
        slot=slots,
        to=st.one_of(
            st.sampled_from([60, 600, 3600]).map(lambda s: ("delay", s)),
            st.sampled_from(sorted(CRON_STEPS)).map(lambda c: ("cron", c)),
        ),
    )
    def reschedule(self, slot: int, to: tuple[str, Any]) -> None:
        m = self.slots[slot]
        now = self.advance()
        how, value = to
        if m.status.is_terminal:
            self.refused(lambda: sp.update_prompt(m.id, **{how: value}), m)
            return
        paused = m.status is Status.PAUSED
        before = (m.kind, m.status, m.schedule_time, m.cron, m.max_runs, m.next_run_at)
        got = sp.update_prompt(m.id, **{how: value})
        if how == "delay":
            at = now + timedelta(seconds=value)
            m.kind, m.schedule_time, m.cron, m.max_runs = Kind.ONCE, at, None, None
            m.status = Status.PAUSED if paused else Status.SCHEDULED
            m.set_next(None if paused else at)
        else:
            if m.kind is not Kind.CRON:
                m.max_runs = None  # bounds carry over only from cron to cron
            m.kind, m.schedule_time, m.cron = Kind.CRON, None, value
            m.status = Status.PAUSED if paused else Status.ACTIVE
            m.set_next(None if paused else next_fire(m.step, now))
        if (m.kind, m.status, m.schedule_time, m.cron, m.max_runs, m.next_run_at) != before:
            m.changed(now)
        assert (got.kind, got.next_run_at, got.version) == (m.kind, m.next_run_at, m.version)

    @rule(slot=slots)
    def trigger(self, slot: int) -> None:
        m = self.slots[slot]
        now = self.advance()
        if m.status.is_terminal:
            self.refused(lambda: sp.trigger_prompt(m.id), m)
            return
        key = sp.trigger_prompt(m.id)
        assert key == f"{m.id}:trigger:{to_ms(now)}"
        assert self.client.zscore(K.inflight, key) is not None
        m.triggers.append(Delivery.from_key(key))

    @rule(slot=slots, late=lateness)
    def deliver_current(self, slot: int, late: float) -> None:
        m = self.slots[slot]
        d = m.current or (m.seen[-1] if m.seen else None)
        if d is None:
            return
        now = self.advance()
        if m.current is not None:  # the occurrence comes due, plus some lateness
            now = CLOCK.now = max(now, d.eta + timedelta(seconds=late))
        self.deliver(m, d, now)

    @rule(slot=slots, late=lateness)
    def deliver_while_runner_fails(self, slot: int, late: float) -> None:
        m = self.slots[slot]
        d = m.current
        if d is None:
            return
        now = CLOCK.now = max(self.advance(), d.eta + timedelta(seconds=late))
        self.deliver(m, d, now, fail=True)

    @rule(slot=slots, pick=st.integers(0, 50))
    def deliver_stale(self, slot: int, pick: int) -> None:
        """An old ETA task: an occurrence that was current once (maybe is again)."""
        m = self.slots[slot]
        if m.seen:
            self.deliver(m, m.seen[pick % len(m.seen)], self.advance())

    @rule(slot=slots, pick=st.integers(0, 50))
    def deliver_duplicate(self, slot: int, pick: int) -> None:
        """A duplicated or redelivered message of an occurrence already committed."""
        m = self.slots[slot]
        if m.done:
            d = m.done[pick % len(m.done)]
            self.deliver(m, d, self.advance())
            assert m.done.count(d) == 1

    @rule(slot=slots, pick=st.integers(0, 50))
    def deliver_trigger(self, slot: int, pick: int) -> None:
        m = self.slots[slot]
        if m.triggers:
            self.deliver(m, m.triggers[pick % len(m.triggers)], self.advance())

    @rule(seconds=st.sampled_from([1, 61, 299, 600]))
    def tick(self, seconds: int) -> None:
        now = self.advance(seconds)
        published: list[Delivery] = []
        engine.tick(self.client, self.ctx, published.extend, now=now)
        inflight = {str(k) for k in self.client.zrange(K.inflight, 0, -1)}
        horizon = now + timedelta(seconds=self.ctx.settings.horizon_seconds)
        for m in self.models.values():
            current = m.current
            if current is not None and current.eta <= horizon:
                assert self.client.zscore(K.due, m.id) is None, "due within horizon: promoted"
                assert current.key in inflight
        for d in published:
            assert d.key in inflight and d.prompt_id in self.models

    # --- invariants

    @invariant()
    def store_matches_model(self) -> None:
        records = check_store(self.client, list(self.models))
        assert leases(self.client) == []  # no delivery is in progress between steps
        for pid, m in self.models.items():
            rec = records[pid]
            got = (rec.status, rec.kind, rec.next_run_at, rec.prompt, rec.run_count)
            assert got == (m.status, m.kind, m.next_run_at, m.text, m.run_count), pid
            got2 = (rec.trigger_count, rec.failure_count, rec.version, rec.updated_at)
            assert got2 == (m.trigger_count, m.failure_count, m.version, m.updated_at), pid
            assert (rec.schedule_time, rec.cron_expression, rec.max_runs) == (
                m.schedule_time,
                m.cron,
                m.max_runs,
            )
            assert rec.last_execution == m.last_execution
            raw = self.raw(m)
            old = self.stored.get(pid)
            if old is not None and old[0] != raw:
                assert rec.version > old[1], f"{pid} changed without a new version"
            elif old is not None:
                assert rec.version == old[1]
            self.stored[pid] = (raw, rec.version)

    @invariant()
    def runner_saw_what_the_records_count(self) -> None:
        assert RUNNER.violations == []
        keys = [c["idempotency_key"] for c in RUNNER.calls]
        assert len(keys) == len(set(keys)), "an idempotency key was delivered twice"
        per_prompt = Counter(c["prompt_id"] for c in RUNNER.calls)
        triggers = Counter(
            c["prompt_id"] for c in RUNNER.calls if ":trigger:" in c["idempotency_key"]
        )
        for pid, m in self.models.items():
            assert m.run_count == per_prompt[pid]
            assert m.trigger_count == triggers[pid]


def test_state_machine_against_model_on_real_redis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "utcnow", CLOCK)
    sp.set_bot_runner(RUNNER)
    try:
        run_state_machine_as_test(
            PromptMachine,
            settings=settings(max_examples=50, stateful_step_count=30, deadline=None),
        )
    finally:
        sp.set_bot_runner(None)
        RUNNER.reset(None)


def test_tick_after_an_outage_publishes_each_overdue_occurrence_once(redis_url: str) -> None:
    """Found by the state machine's ``tick`` rule: a duplicated message, not a duplicated
    delivery (CLAIM collapses them), but one tick should publish an occurrence once.

    PROMOTE gives the occurrence the re-drive deadline ``occurrence + lease + 30 s``;
    when the tick runs later than that (beat was down), REDRIVE, in the same tick, finds
    the deadline passed and publishes it again.
    """
    p = make("once")  # ten minutes ahead: waits in the due index
    now = p.next_run_at + timedelta(seconds=scope().settings.lease_seconds + 31)
    published: list[Delivery] = []
    engine.tick(get_redis(), scope(), published.extend, now=now)
    assert [d.key for d in published] == [occurrence(p).key]


# --- 2. threads ------------------------------------------------------------------------


@dataclass
class Call:
    key: str
    prompt: str
    start: float
    end: float | None = None


class TimedRunner:
    """Stamps each call's start and return; may hold every call until ``hold`` is set."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.hold = hold
        self.pause = 0.0
        self.entered = threading.Event()
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        call = Call(payload["idempotency_key"], payload["prompt"], time.monotonic())
        with self._lock:
            self.calls.append(call)
        self.entered.set()
        if self.hold is not None:
            # Far longer than any test holds it: a held call ends when the test says so.
            self.hold.wait(60)
        if self.pause:
            time.sleep(self.pause)
        call.end = time.monotonic()


class Worker(threading.Thread):
    """Runs ``fn`` once (after ``barrier``), keeping its value or exception and times."""

    def __init__(self, fn: Callable[[], Any], barrier: threading.Barrier | None = None) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.barrier = barrier
        self.value: Any = None
        self.error: BaseException | None = None
        self.returned_at = 0.0

    def run(self) -> None:
        try:
            if self.barrier is not None:
                self.barrier.wait(30)
            self.value = self.fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.returned_at = time.monotonic()

    def outcome(self) -> Any:
        self.join(60)  # a cap for a hung thread, not an expected duration
        assert not self.is_alive(), "worker thread did not finish"
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture
def timed() -> Iterator[TimedRunner]:
    runner = TimedRunner()
    sp.set_bot_runner(runner)
    yield runner
    sp.set_bot_runner(None)


def change(action: str, p: ScheduledPrompt) -> ScheduledPrompt:
    if action == "cancel":
        return sp.cancel_prompt(p.id)
    if action == "pause":
        return sp.pause_prompt(p.id)
    if action == "reschedule":
        move = {"delay": 7200} if p.kind is Kind.ONCE else {"cron": ELSEWHERE}
        return sp.update_prompt(p.id, **move)
    assert action == "text"
    return sp.update_prompt(p.id, prompt="new text")


def deliver(d: Delivery, now: datetime) -> engine.Result:
    return engine.deliver(get_redis(), scope(), d, now=now)


def deliver_until_not_busy(d: Delivery, now: datetime) -> engine.Result:
    """What a worker does with BUSY: look again shortly (here: a few ms)."""
    for _ in range(2000):
        result = deliver(d, now)
        if result.outcome is not Outcome.BUSY:
            return result
        time.sleep(0.002)
    raise AssertionError(f"{d.key} stayed busy")


def check_after_change(
    action: str, p: ScheduledPrompt, changed: ScheduledPrompt, runs: int
) -> None:
    """The record ``action`` returned, after ``runs`` deliveries committed before it."""
    assert changed.run_count == runs
    assert changed.version == p.version + runs + 1
    if action == "cancel":
        assert changed.status is Status.CANCELLED and changed.next_run_at is None
    elif action == "pause":
        assert changed.status is Status.PAUSED and changed.next_run_at is None
    elif action == "reschedule":
        assert changed.is_live and changed.next_run_at is not None
        if p.kind is Kind.CRON:
            assert changed.cron_expression == ELSEWHERE
            assert changed.next_run_at.minute == 7
        else:
            assert changed.next_run_at > p.next_run_at + timedelta(minutes=90)
    else:
        assert changed.prompt == "new text" and changed.status is p.status


@pytest.mark.parametrize("action", ["cancel", "pause", "reschedule", "text"])
@pytest.mark.parametrize("kind", ["once", "cron"])
def test_change_waits_for_delivery_in_progress_and_no_old_state_delivery_follows(
    redis_url: str, kind: str, action: str
) -> None:
    hold = threading.Event()
    runner = TimedRunner(hold)
    sp.set_bot_runner(runner)
    workers: list[Worker] = []
    try:
        p = make(kind)
        d = occurrence(p)
        deliverer = Worker(lambda: deliver(d, p.next_run_at))
        workers.append(deliverer)
        deliverer.start()
        assert runner.entered.wait(30), "the runner was never called"
        changer = Worker(lambda: change(action, p))
        workers.append(changer)
        changer.start()
        changer.join(0.4)
        assert changer.is_alive(), f"{action} returned while the delivery held the lease"
        assert get(p).version == p.version, "a change landed during the delivery"
        hold.set()
        assert deliverer.outcome().outcome is Outcome.DELIVERED
        (call,) = runner.calls
        assert call.prompt == "old text" and call.end is not None
        if kind == "once":
            # The delivery committed first: the one-time prompt is executed, not changeable.
            with pytest.raises(sp.ConflictingPrompt, match="executed"):
                changer.outcome()
            final = get(p)
            assert final.status is Status.EXECUTED
            assert (final.run_count, final.version) == (1, p.version + 1)
        else:
            check_after_change(action, p, changer.outcome(), runs=1)
        assert changer.returned_at > call.end, "returned before the delivery ended"
        client = get_redis()
        assert leases(client) == []

        # After the call returned, the old state never fires: not a duplicate message of
        # the occurrence, nor the next occurrence of the old schedule.
        later = p.next_run_at + timedelta(minutes=5)
        assert deliver(d, later).outcome is Outcome.SKIPPED
        if kind == "cron":
            following = Delivery(p.id, to_ms(later))
            expected = Outcome.DELIVERED if action == "text" else Outcome.SKIPPED
            assert deliver(following, later).outcome is expected
        for late in runner.calls[1:]:
            assert late.start > changer.returned_at
            assert late.prompt == "new text", "a delivery of the old state followed"
        final = get(p)
        assert final.run_count == len(runner.calls)
        check_store(client, [p.id])
    finally:
        hold.set()
        for w in workers:
            w.join(10)
        sp.set_bot_runner(None)


@pytest.mark.parametrize("kind", ["once", "cron"])
def test_trigger_during_delivery_returns_at_once_and_its_delivery_waits_for_the_lease(
    redis_url: str, kind: str
) -> None:
    hold = threading.Event()
    runner = TimedRunner(hold)
    sp.set_bot_runner(runner)
    deliverer: Worker | None = None
    try:
        p = make(kind)
        d = occurrence(p)
        deliverer = Worker(lambda: deliver(d, p.next_run_at))
        deliverer.start()
        assert runner.entered.wait(30)
        key = sp.trigger_prompt(p.id)  # not fenced: a trigger does not change the record
        assert runner.calls[0].end is None, "trigger waited for the delivery"
        t = Delivery.from_key(key)
        busy = deliver(t, from_ms(t.occurrence_ms))
        assert busy.outcome is Outcome.BUSY  # one delivery per prompt at a time
        hold.set()
        assert deliverer.outcome().outcome is Outcome.DELIVERED
        result = deliver(t, from_ms(t.occurrence_ms) + timedelta(seconds=1))
        final = get(p)
        # The accepted trigger is delivered once the scheduled delivery committed — also
        # when that left a one-time prompt executed (only a cancel drops a trigger).
        assert result.outcome is Outcome.DELIVERED
        assert [c.key for c in runner.calls] == [d.key, key]
        assert (final.run_count, final.trigger_count) == (2, 1)
        if kind == "cron":
            assert final.next_run_at == p.next_run_at + timedelta(minutes=5)
        else:
            assert final.status is Status.EXECUTED
        assert deliver(t, from_ms(t.occurrence_ms)).outcome is Outcome.SKIPPED  # duplicate
        assert final.run_count == len(runner.calls)
        check_store(get_redis(), [p.id])
    finally:
        hold.set()
        if deliverer is not None:
            deliverer.join(10)
        sp.set_bot_runner(None)


RACE_ROUNDS = 200


@pytest.mark.parametrize(
    ("action", "via"),
    [
        ("cancel", "schedule"),
        ("pause", "schedule"),
        ("reschedule", "schedule"),
        ("text", "schedule"),
        ("cancel", "trigger"),
    ],
)
def test_tight_race_change_vs_delivery_never_delivers_after_the_change_returned(
    redis_url: str, timed: TimedRunner, action: str, via: str
) -> None:
    """Deliver in one thread, change in another, released at once by a Barrier.

    Every round ends one of two ways: delivered (and the change saw the committed
    delivery), or changed first (and the delivery was skipped). Never a delivery that
    started after the change returned, never a half-written record. Which way a round
    goes is the scheduler's choice (both are legal): the checks hold for whichever
    interleavings happened, and the random waits only make both likely.
    """
    rng = random.Random(f"{action}-{via}")
    client = get_redis()
    ids: list[str] = []
    for i in range(RACE_ROUNDS):
        p = make("once" if i % 2 else "cron", user=f"u{i % 3}")
        ids.append(p.id)
        d = Delivery.from_key(sp.trigger_prompt(p.id)) if via == "trigger" else occurrence(p)
        now = from_ms(d.occurrence_ms)
        timed.pause = rng.choice([0.0, 0.0, 0.001, 0.005])
        waits = rng.choice([(0.0, 0.0), (0.0, 0.0), (0.0, 0.001), (0.001, 0.0), (0.0, 0.003)])

        def delivering(d: Delivery = d, now: datetime = now, wait: float = waits[0]) -> Any:
            time.sleep(wait)
            return deliver(d, now)

        def changing(p: ScheduledPrompt = p, wait: float = waits[1]) -> ScheduledPrompt:
            time.sleep(wait)
            return change(action, p)

        before = len(timed.calls)
        barrier = threading.Barrier(2)
        deliverer, changer = Worker(delivering, barrier), Worker(changing, barrier)
        deliverer.start()
        changer.start()
        result = deliverer.outcome()
        changer.join(10)
        calls = timed.calls[before:]
        assert result.outcome in (Outcome.DELIVERED, Outcome.SKIPPED), result
        assert len(calls) == (result.outcome is Outcome.DELIVERED)
        if calls and calls[0].prompt == "old text":  # the delivery claimed first
            (call,) = calls
            assert call.start < changer.returned_at, f"round {i}: delivered after {action}"
            if p.kind is Kind.ONCE and via == "schedule":
                with pytest.raises(sp.ConflictingPrompt, match="executed"):
                    changer.outcome()
            else:
                check_after_change(action, p, changer.outcome(), runs=1)
            assert call.end is not None
        else:  # the change landed first: the old state is never delivered
            check_after_change(action, p, changer.outcome(), runs=0)
            if action == "text":
                assert [c.prompt for c in calls] == ["new text"]
            else:
                assert calls == [], f"round {i}: {action} first, yet delivered"
        assert leases(client) == []
        # A duplicate message of the occurrence, after the round, never fires.
        assert deliver(d, now + timedelta(seconds=1)).outcome is Outcome.SKIPPED
        final = get(p)
        assert final.run_count == len(timed.calls) - before
    records = check_store(client, ids)
    assert sum(r.run_count for r in records.values()) == len(timed.calls)
    keys = [c.key for c in timed.calls]
    assert len(keys) == len(set(keys))


def test_concurrent_triggers_each_get_their_own_delivery(
    redis_url: str, timed: TimedRunner
) -> None:
    """Two ``trigger_prompt`` calls are two extra deliveries, even in the same millisecond.

    The key is ``{id}:trigger:{epoch_ms}``: two calls in one millisecond get the same
    key, the in-flight set keeps one entry, and only one delivery happens.
    """
    collapsed = 0
    for _ in range(30):
        p = make("cron")
        barrier = threading.Barrier(2)
        workers = [Worker(lambda p=p: sp.trigger_prompt(p.id), barrier) for _ in range(2)]
        for w in workers:
            w.start()
        keys = [w.outcome() for w in workers]
        for key in keys:
            t = Delivery.from_key(key)
            deliver_until_not_busy(t, from_ms(t.occurrence_ms))
        if get(p).trigger_count != 2:
            collapsed += 1
    assert collapsed == 0, f"{collapsed} of 30 pairs of concurrent triggers delivered once"


@pytest.mark.parametrize("kind", ["once", "cron"])
def test_trigger_racing_scheduled_delivery_each_key_delivered_at_most_once(
    redis_url: str, timed: TimedRunner, kind: str
) -> None:
    """A trigger and the scheduled delivery of the same prompt, released at once.

    Every interleaving is legal; in each, every idempotency key reaches the runner at
    most once, and the trigger is refused only when the prompt had already finished
    (a one-time prompt the scheduled delivery executed first); an accepted trigger is
    delivered, and a live cron prompt takes both, always.
    """
    rng = random.Random(kind)
    ids: list[str] = []
    for i in range(100):
        p = make(kind, user=f"u{i % 2}")
        ids.append(p.id)
        d = occurrence(p)
        now = from_ms(d.occurrence_ms)
        timed.pause = rng.choice([0.0, 0.001, 0.003])
        wait = rng.choice([0.0, 0.0, 0.003, 0.01])  # lets the trigger claim first, sometimes

        def deliver_scheduled(d: Delivery = d, now: datetime = now, wait: float = wait) -> Any:
            time.sleep(wait)
            return deliver_until_not_busy(d, now)

        def trigger_and_deliver(p: ScheduledPrompt = p) -> engine.Result | str:
            try:
                key = sp.trigger_prompt(p.id)
            except sp.ConflictingPrompt as exc:
                # Refused: what the prompt was at that moment, read after the refusal.
                return f"refused while {get(p).status}: {exc}"
            t = Delivery.from_key(key)
            return deliver_until_not_busy(t, from_ms(t.occurrence_ms))

        barrier = threading.Barrier(2)
        scheduled = Worker(deliver_scheduled, barrier)
        extra = Worker(trigger_and_deliver, barrier)
        scheduled.start()
        extra.start()
        assert scheduled.outcome().outcome is Outcome.DELIVERED
        trig = extra.outcome()
        final = get(p)
        mine = [c.key for c in timed.calls if c.key.startswith(f"{p.id}:")]
        assert len(mine) == len(set(mine)), f"round {i}: a key was delivered twice: {mine}"
        assert d.key in mine
        assert final.run_count == len(mine)
        delivered = isinstance(trig, engine.Result) and trig.outcome is Outcome.DELIVERED
        assert final.trigger_count == int(delivered)
        assert len(mine) == 1 + int(delivered)
        if isinstance(trig, str):
            # Only a finished prompt refuses a trigger: the one-time prompt the scheduled
            # delivery executed first. A cron prompt is live throughout.
            assert kind == "once", f"round {i}: live cron prompt refused a trigger: {trig}"
            assert trig.startswith("refused while executed: ") and "executed" in trig
        else:
            # An accepted trigger is delivered, also after the scheduled delivery left a
            # one-time prompt executed (only a cancel drops it).
            assert delivered, (i, trig)
        if kind == "cron":
            assert final.status is Status.ACTIVE
        else:
            assert final.status is Status.EXECUTED
    records = check_store(get_redis(), ids)
    keys = [c.key for c in timed.calls]
    assert len(keys) == len(set(keys))
    assert sum(r.run_count for r in records.values()) == len(keys)


# --- 3. processes ----------------------------------------------------------------------


class FileRunner:
    """Appends one JSON line per call start and end, stamped with ``time.monotonic()``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pause = 0.0

    def _append(self, event: str, payload: dict[str, Any]) -> None:
        line = json.dumps(
            {"event": event, "key": payload["idempotency_key"], "at": time.monotonic()}
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        self._append("start", payload)
        if self.pause:
            time.sleep(self.pause)
        self._append("end", payload)


def _race_process(
    role: str, url: str, record_path: str, *, jobs: Any, results: Any, barrier: Any
) -> None:
    """One side of the race, in its own process: deliver, or cancel, one prompt a round."""
    try:
        sp.configure(redis_url=url)
        runner = FileRunner(record_path)
        if role == "deliver":
            sp.set_bot_runner(runner)
        while True:
            job = jobs.get(timeout=60)
            if job is None:
                break
            round_no, prompt_id, occurrence_ms, wait, pause = job
            runner.pause = pause
            barrier.wait(60)  # the other process may still be starting on a loaded machine
            time.sleep(wait)
            if role == "deliver":
                d = Delivery(prompt_id, occurrence_ms)
                outcome = deliver(d, from_ms(occurrence_ms)).outcome.value
            else:
                try:
                    outcome = f"cancelled:{sp.cancel_prompt(prompt_id).run_count}"
                except sp.ConflictingPrompt as exc:
                    outcome = f"refused:{exc}"
            results.put((role, round_no, outcome, time.monotonic()))
    except BaseException:
        results.put((role, -1, traceback.format_exc(), time.monotonic()))
    finally:
        sp.set_bot_runner(None)
        sp.configure()


def test_processes_deliver_and_cancel_race_never_delivers_after_cancel_returned(
    redis_url: str, tmp_path: Path
) -> None:
    rounds = 30
    record = str(tmp_path / "runner.jsonl")
    Path(record).touch()
    mp = multiprocessing.get_context("spawn")
    barrier = mp.Barrier(2)
    results = mp.Queue()
    jobs = {role: mp.Queue() for role in ("deliver", "cancel")}
    procs = {
        role: mp.Process(
            target=_race_process,
            args=(role, redis_url, record),
            kwargs={"jobs": jobs[role], "results": results, "barrier": barrier},
        )
        for role in jobs
    }
    for proc in procs.values():
        proc.start()
    rng = random.Random("processes")
    ids: list[str] = []
    try:
        for n in range(rounds):
            p = make("once" if n % 2 else "cron", user="proc")
            ids.append(p.id)
            d = occurrence(p)
            pause = rng.choice([0.0, 0.002, 0.02])
            waits = rng.choice([(0.0, 0.0), (0.0, 0.002), (0.002, 0.0), (0.0, 0.01), (0.01, 0.0)])
            jobs["deliver"].put((n, p.id, d.occurrence_ms, waits[0], pause))
            jobs["cancel"].put((n, p.id, d.occurrence_ms, waits[1], 0.0))
            got: dict[str, tuple[str, float]] = {}
            while len(got) < 2:
                try:
                    role, round_no, outcome, at = results.get(timeout=60)
                except queue.Empty:
                    pytest.fail(f"round {n}: a process did not answer")
                assert round_no == n, outcome  # -1 carries a child's traceback
                got[role] = (outcome, at)
            delivered, _ = got["deliver"]
            cancelled, cancel_returned = got["cancel"]
            lines = [json.loads(x) for x in Path(record).read_text().splitlines()]
            starts = [x["at"] for x in lines if x["event"] == "start" and x["key"] == d.key]
            for start in starts:
                assert start < cancel_returned, f"round {n}: runner started after cancel"
            final = get(p)
            if delivered == Outcome.DELIVERED.value:
                assert len(starts) == 1
                if p.kind is Kind.ONCE:
                    assert cancelled.startswith("refused:") and "executed" in cancelled
                    assert final.status is Status.EXECUTED
                else:
                    assert cancelled == "cancelled:1"
                    assert final.status is Status.CANCELLED
            else:
                assert delivered == Outcome.SKIPPED.value and starts == []
                assert cancelled == "cancelled:0" and final.status is Status.CANCELLED
            assert final.run_count == len(starts)
        check_store(get_redis(), ids)
        assert leases(get_redis()) == []
    finally:
        for q in jobs.values():
            q.put(None)
        for proc in procs.values():
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
            proc.close()
        for q in (*jobs.values(), results):
            q.close()
            q.join_thread()
