"""The asyncio API against a real redis-server: the sync API's semantics and errors, one
client per event loop, and publishing to Celery that never blocks the loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import warnings
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import redis

import scheduled_prompts as sp
import scheduled_prompts.tasks
from scheduled_prompts import aio, verbs
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.connection import scope
from scheduled_prompts.keys import Keys
from scheduled_prompts.occurrences import Delivery
from support.redis_server import free_port

K = Keys("sp")
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    """``asyncio.run(coro)`` (each aio call opens and closes its own client)."""

    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def aonce(prompt: str = "remind me", user: str = "u1", **kw: Any) -> sp.ScheduledPrompt:
    kw.setdefault("delay", 600)
    return await aio.schedule_prompt(prompt, user_id=user, platform="telegram", **kw)


async def acron(expr: str = "0 9 * * 1-5", user: str = "u1", **kw: Any) -> sp.ScheduledPrompt:
    kw.setdefault("timezone", "Europe/Berlin")
    return await aio.schedule_prompt(
        "summarise my inbox", user_id=user, platform="slack", cron=expr, **kw
    )


def snapshot(r: redis.Redis) -> dict[str, Any]:
    """Every key and its value, to show a rejected call wrote nothing."""
    out: dict[str, Any] = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        if kind == "string":
            out[key] = r.get(key)
        elif kind == "zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            out[key] = r.hgetall(key)
        elif kind == "list":
            out[key] = r.lrange(key, 0, -1)
    return out


# --- creating and reading -------------------------------------------------------------


def test_schedule_prompt_writes_the_record_the_sync_api_reads(r: redis.Redis) -> None:
    before = utcnow()
    p = run(aonce(channel_id="chat-7", metadata={"lang": "pt", "n": [1, 2]}))
    after = utcnow()
    assert p.kind is sp.Kind.ONCE and p.status is sp.Status.SCHEDULED
    assert before + timedelta(seconds=600) <= p.next_run_at <= after + timedelta(seconds=600)
    assert sp.get_prompt(p.id) == p
    assert sp.ScheduledPrompt.from_json(r.get(K.prompt(p.id))) == p
    assert r.zscore(K.due, p.id) == to_ms(p.next_run_at)
    assert r.zscore(K.user("u1"), p.id) == 0
    assert r.hget(K.open_counts, "u1") == "1"
    assert sp.list_prompts(user_id="u1").items == [p]


def test_records_written_by_the_sync_api_read_identically_from_aio(r: redis.Redis) -> None:
    a = sp.schedule_prompt("a", user_id="ana", platform="telegram", delay=600)
    b = sp.schedule_prompt(
        "b", user_id="ana", platform="slack", cron="30 8 * * *", timezone="America/New_York"
    )
    sp.pause_prompt(b.id)
    b = sp.get_prompt(b.id)

    async def read() -> tuple[Any, ...]:
        return (
            await aio.get_prompt(a.id),
            await aio.get_prompt(b.id),
            await aio.get_prompt("no-such-id"),
            await aio.list_prompts(user_id="ana"),
            await aio.list_prompts(user_id="ana", status="paused"),
            await aio.list_prompts(platform="telegram"),
        )

    got_a, got_b, missing, page, paused, telegram = run(read())
    assert (got_a, got_b, missing) == (a, b, None)
    assert page == sp.list_prompts(user_id="ana") and page.items == [a, b]
    assert paused.items == [b] and telegram.items == [a]


def test_cron_next_run_is_the_same_wall_time_as_the_sync_api(redis_url: str) -> None:
    p = run(acron("30 8 * * *", timezone="America/New_York"))
    q = sp.schedule_prompt(
        "x", user_id="u2", platform="slack", cron="30 8 * * *", timezone="America/New_York"
    )
    assert p.kind is sp.Kind.CRON and p.status is sp.Status.ACTIVE
    assert p.next_run_at == q.next_run_at


def test_schedule_many_writes_all_in_order_and_one_bad_spec_writes_nothing(
    r: redis.Redis,
) -> None:
    specs = [
        {"prompt": f"p{i}", "user_id": "bulk", "platform": "x", "delay": 600 + i} for i in range(30)
    ]
    out = run(aio.schedule_many(specs))
    assert [p.prompt for p in out] == [f"p{i}" for i in range(30)]
    assert [p.id for p in sp.list_prompts(user_id="bulk").items] == [p.id for p in out]
    assert r.hget(K.open_counts, "bulk") == "30"
    state = snapshot(r)
    bad = [dict(s, user_id="other") for s in specs[:5]]
    bad[3]["cron"] = "61 * * * *"
    with pytest.raises(sp.InvalidSchedule, match=r"specs\[3\]"):
        run(aio.schedule_many(bad))
    assert snapshot(r) == state


def test_schedule_many_idempotent_ids_return_existing_or_conflict(r: redis.Redis) -> None:
    first = run(aonce(prompt_id="keep"))
    spec = {"prompt": "remind me", "user_id": "u1", "platform": "telegram", "delay": 5}
    out = run(aio.schedule_many([{**spec, "prompt_id": "keep"}, {**spec, "prompt_id": "new"}]))
    assert out[0] == first and out[1].id == "new"
    state = snapshot(r)
    with pytest.raises(sp.ConflictingPrompt, match="keep"):
        run(aio.schedule_many([{**spec, "prompt": "changed", "prompt_id": "keep"}]))
    assert snapshot(r) == state


def test_same_prompt_id_returns_stored_record_and_different_request_conflicts(
    r: redis.Redis,
) -> None:
    first = run(aonce(prompt_id="reminder-42", delay=60))
    state = snapshot(r)
    assert run(aonce(prompt_id="reminder-42", delay=3600)) == first  # delay always matches
    again = sp.schedule_prompt(
        "remind me", user_id="u1", platform="telegram", delay=9, prompt_id="reminder-42"
    )
    assert again == first  # the sync API sees the same idempotent record
    for change in ({"prompt": "other"}, {"user": "u2"}, {"channel_id": "elsewhere"}):
        with pytest.raises(sp.ConflictingPrompt, match="reminder-42"):
            run(aonce(**{"prompt_id": "reminder-42", **change}))
    assert snapshot(r) == state


def test_list_prompts_pages_visit_every_prompt_once(redis_url: str) -> None:
    async def scenario() -> tuple[set[str], list[str]]:
        made = {(await aonce(user=f"u{i % 3}")).id for i in range(23)}
        seen: list[str] = []
        cursor = None
        while True:
            page = await aio.list_prompts(limit=5, cursor=cursor)
            assert len(page.items) <= 5
            seen += [p.id for p in page.items]
            cursor = page.next_cursor
            if cursor is None:
                return made, seen

    made, seen = run(scenario())
    assert sorted(seen) == sorted(made) and len(seen) == 23


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit"),
        ({"status": "done"}, "status must be one of"),
        ({"cursor": 5}, "cursor"),
        ({"user_id": 5}, "user_id"),
    ],
)
def test_list_prompts_rejects_bad_arguments(
    redis_url: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(sp.InvalidSchedule, match=message):
        run(aio.list_prompts(**kwargs))


# --- bad input ------------------------------------------------------------------------

PAST = datetime(2020, 1, 1, tzinfo=UTC)
BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("empty prompt", {"prompt": "   "}, "prompt must not be empty"),
    ("prompt too long", {"prompt": "x" * 32_001}, "at most 32,000"),
    ("user_id int", {"user_id": 7}, "user_id must be a string"),
    ("metadata list", {"metadata": [1, 2]}, "metadata must be a JSON object"),
    ("unknown timezone", {"timezone": "Mars/Olympus"}, "unknown timezone"),
    ("past at", {"delay": None, "at": PAST}, "in the past"),
    ("bad at string", {"delay": None, "at": "tomorrow at 9"}, "ISO-8601"),
    ("delay and cron", {"cron": "0 9 * * *"}, "exactly one of"),
    ("negative delay", {"delay": -5}, "delay must be"),
    ("six fields", {"delay": None, "cron": "0 0 9 * * *"}, "5 fields"),
    ("never fires", {"delay": None, "cron": "0 0 30 2 *"}, "never fires"),
    ("bound on once", {"max_runs": 3}, "does not take"),
    ("bad prompt_id", {"prompt_id": "has space"}, "prompt_id must be"),
    # A lone surrogate (valid in JSON as "\ud800") cannot be stored as UTF-8.
    ("unencodable prompt", {"prompt": "call \ud800 Ana"}, "prompt"),
    # The largest ISO-8601 date with a negative offset lies beyond datetime's range in UTC.
    ("at beyond year 9999", {"delay": None, "at": "9999-12-31T23:59:59-01:00"}, "at"),
]


@pytest.mark.parametrize(("case", "args", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_invalid_schedule_and_redis_is_unchanged(
    r: redis.Redis, case: str, args: dict[str, Any], message: str
) -> None:
    sp.schedule_prompt("already here", user_id="u1", platform="telegram", delay=600)
    state = snapshot(r)
    kwargs: dict[str, Any] = {"user_id": "u1", "platform": "telegram", "delay": 60, **args}
    prompt = kwargs.pop("prompt", "hello")
    with pytest.raises(sp.InvalidSchedule, match=message) as info:
        run(aio.schedule_prompt(prompt, **kwargs))
    assert isinstance(info.value, ValueError)
    assert snapshot(r) == state


def test_quota_exceeded_writes_nothing_and_cancel_frees_a_slot(r: redis.Redis) -> None:
    sp.configure(redis_url=sp.get_settings().redis_url, max_prompts_per_user=2)
    a = run(aonce())
    b = run(acron())
    run(aio.pause_prompt(b.id))
    state = snapshot(r)
    with pytest.raises(sp.QuotaExceeded, match="2") as info:
        run(aonce())
    assert (info.value.user_id, info.value.limit) == ("u1", 2)
    with pytest.raises(sp.QuotaExceeded):
        run(aio.schedule_many([{"prompt": "p", "user_id": "u1", "platform": "x", "delay": 60}]))
    assert snapshot(r) == state
    run(aio.cancel_prompt(a.id))
    assert run(aonce()).status is sp.Status.SCHEDULED
    assert r.hget(K.open_counts, "u1") == "2"


# --- changing -------------------------------------------------------------------------


def test_cancel_pause_resume_match_the_sync_api(r: redis.Redis) -> None:
    p = run(acron("*/5 * * * *", timezone="UTC"))
    paused = run(aio.pause_prompt(p.id, user_id="u1"))
    assert paused.status is sp.Status.PAUSED and paused.next_run_at is None
    assert paused.version == 2 and sp.get_prompt(p.id) == paused
    assert r.zscore(K.due, p.id) is None and r.hget(K.open_counts, "u1") == "1"
    assert run(aio.pause_prompt(p.id)) == paused  # pausing twice changes nothing
    resumed = run(aio.resume_prompt(p.id, user_id="u1"))
    assert resumed.status is sp.Status.ACTIVE and resumed.version == 3
    # The next */5 minute strictly after the resume (its updated_at), not a missed one.
    assert resumed.updated_at < resumed.next_run_at <= resumed.updated_at + timedelta(minutes=5)
    assert resumed.next_run_at.minute % 5 == 0 and resumed.next_run_at.second == 0
    assert sp.get_prompt(p.id) == resumed
    cancelled = run(aio.cancel_prompt(p.id, user_id="u1"))
    assert cancelled.status is sp.Status.CANCELLED and cancelled.next_run_at is None
    assert r.zscore(K.finished, p.id) == to_ms(cancelled.updated_at)
    assert r.hget(K.open_counts, "u1") is None
    assert sp.cancel_prompt(p.id) == cancelled == run(aio.cancel_prompt(p.id))
    for verb in (aio.pause_prompt, aio.resume_prompt):
        with pytest.raises(sp.ConflictingPrompt, match="cancelled"):
            run(verb(p.id))
    with pytest.raises(sp.ConflictingPrompt):
        run(aio.update_prompt(p.id, prompt="new"))


def test_update_prompt_reschedules_in_place(r: redis.Redis) -> None:
    p = run(aonce(delay=600))
    q = run(aio.update_prompt(p.id, user_id="u1", delay=7200, prompt="new text"))
    assert (q.id, q.prompt, q.version) == (p.id, "new text", 2)
    assert q.next_run_at - p.next_run_at > timedelta(minutes=100)
    assert r.zscore(K.due, p.id) == to_ms(q.next_run_at)
    assert sp.get_prompt(p.id) == q
    c = run(aio.update_prompt(p.id, cron="0 12 * * *", timezone="Asia/Tokyo"))
    assert c.kind is sp.Kind.CRON and c.status is sp.Status.ACTIVE and c.schedule_time is None
    assert run(aio.update_prompt(p.id, prompt="new text")) == c  # no change, no version bump
    state = snapshot(r)
    for changes, message in (
        ({"cron": "bad"}, "5 fields"),
        ({"timezone": "Nowhere/City"}, "unknown timezone"),
        ({"user_id_new": "x"}, "cannot update"),
    ):
        with pytest.raises(sp.InvalidSchedule, match=message):
            run(aio.update_prompt(p.id, **changes))
    assert snapshot(r) == state


def test_trigger_prompt_returns_its_key_and_tracks_it_in_flight(r: redis.Redis) -> None:
    p = run(acron())
    before = to_ms(utcnow())
    key = run(aio.trigger_prompt(p.id, user_id="u1"))
    prompt_id, middle, ms = key.rsplit(":", 2)
    assert (prompt_id, middle) == (p.id, "trigger")
    assert before <= int(ms) <= to_ms(utcnow())
    assert Delivery.from_key(key) == Delivery(p.id, int(ms), trigger=True)
    assert r.zscore(K.inflight, key) is not None
    assert sp.get_prompt(p.id) == p  # the schedule does not change
    run(aio.pause_prompt(p.id))
    assert run(aio.trigger_prompt(p.id)).startswith(f"{p.id}:trigger:")  # paused: allowed
    run(aio.cancel_prompt(p.id))
    with pytest.raises(sp.ConflictingPrompt, match="cancelled"):
        run(aio.trigger_prompt(p.id))


def test_other_users_prompt_is_not_found_and_unchanged(r: redis.Redis) -> None:
    p = run(aonce(user="ana"))
    state = snapshot(r)
    for verb in (aio.cancel_prompt, aio.pause_prompt, aio.resume_prompt, aio.trigger_prompt):
        with pytest.raises(sp.PromptNotFound, match=p.id) as info:
            run(verb(p.id, user_id="mallory"))  # type: ignore[operator]
        assert isinstance(info.value, LookupError)
    with pytest.raises(sp.PromptNotFound):
        run(aio.update_prompt(p.id, user_id="mallory", prompt="pwned"))
    with pytest.raises(sp.PromptNotFound):
        run(aio.cancel_prompt("no-such-id"))
    assert snapshot(r) == state
    assert sp.get_prompt(p.id) == p


# --- cleanup --------------------------------------------------------------------------


def test_cleanup_expired_prompts_removes_only_old_terminal_prompts(r: redis.Redis) -> None:
    live = sp.schedule_prompt("live", user_id="u1", platform="t", delay=600)
    done = sp.cancel_prompt(sp.schedule_prompt("done", user_id="u1", platform="t", delay=600).id)
    old = sp.cancel_prompt(sp.schedule_prompt("old", user_id="u1", platform="t", delay=600).id)
    aged = old.replace(updated_at=old.updated_at - timedelta(days=40))
    r.set(K.prompt(old.id), aged.to_json())
    r.zadd(K.finished, {old.id: to_ms(aged.updated_at)})
    result = json.loads(run(aio.cleanup_expired_prompts(days_to_keep=30)))
    assert result == {
        "success": True,
        "message": "deleted 1 prompt(s) finished more than 30 day(s) ago",
        "days_kept": 30,
        "deleted": 1,
    }
    assert sp.get_prompt(old.id) is None and r.zscore(K.finished, old.id) is None
    assert sp.get_prompt(live.id) == live and sp.get_prompt(done.id) == done
    state = snapshot(r)
    assert json.loads(run(aio.cleanup_expired_prompts(days_to_keep=-1))) == {
        "error": "days_to_keep must be a number of days from 0 to 36500, got -1"
    }
    assert snapshot(r) == state


# --- Redis down -----------------------------------------------------------------------


def test_redis_down_raises_store_unavailable_with_masked_password(redis_url: str) -> None:
    url = f"redis://u:secret@127.0.0.1:{free_port()}/0"
    sp.configure(redis_url=url, redis_timeout_seconds=0.5)
    calls: list[Callable[[], Awaitable[Any]]] = [
        aonce,
        lambda: aio.schedule_many([{"prompt": "p", "user_id": "u", "platform": "x", "delay": 9}]),
        lambda: aio.get_prompt("x"),
        aio.list_prompts,
        lambda: aio.cancel_prompt("x"),
        lambda: aio.pause_prompt("x"),
        lambda: aio.resume_prompt("x"),
        lambda: aio.update_prompt("x", prompt="y"),
        lambda: aio.trigger_prompt("x"),
    ]
    for call in calls:
        with pytest.raises(sp.StoreUnavailable) as info:
            run(call())
        assert "secret" not in str(info.value)
        assert "redis://u:***@127.0.0.1" in str(info.value)
    result = json.loads(run(aio.cleanup_expired_prompts()))
    assert "error" in result and "secret" not in result["error"]
    assert "redis://u:***@127.0.0.1" in result["error"]


# --- event loops ----------------------------------------------------------------------


def test_two_event_loops_in_sequence_both_work(redis_url: str) -> None:
    async def use() -> sp.ScheduledPrompt:
        p = await aonce()
        assert await aio.get_prompt(p.id) == p
        return p

    first = run(use())
    second = run(use())
    assert {p.id for p in sp.list_prompts(user_id="u1").items} == {first.id, second.id}


SPEC = {"prompt": "own client", "user_id": "u1", "platform": "telegram", "delay": 600}


def test_a_callers_own_client_is_used_and_left_open(redis_url: str) -> None:
    async def use() -> sp.ScheduledPrompt | None:
        client = aio.new_async_redis()
        try:
            p = await aio.arun(verbs.create(scope(), SPEC, utcnow()), client)
            assert await client.ping()  # still open: the caller owns it
            return await aio.arun(verbs.get(scope(), p.id), client)
        finally:
            await client.aclose()

    found = run(use())
    assert found is not None and found.prompt == SPEC["prompt"]


def test_asyncio_run_closes_its_redis_connections(r: redis.Redis, redis_url: str) -> None:
    async def read() -> sp.ScheduledPrompt | None:
        return await aio.get_prompt("x")

    baseline = len(r.client_list())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for _ in range(5):
                assert asyncio.run(read()) is None
            gc.collect()
            left_open = len(r.client_list()) - baseline
        finally:
            # Drop whatever aio still caches, so a leak is reported here, not as a
            # ResourceWarning in the test that happens to run the GC.
            sp.configure(redis_url=redis_url)
            gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    # <= 0: a connection left over from an earlier test may close meanwhile; a leak would
    # leave up to five more open.
    assert left_open <= 0, f"{left_open} connection(s) open after 5 asyncio.run calls ended"
    assert leaks == []


class OffLoop:
    """Wraps ``tasks.publish`` to show it runs off the event loop, by events, not time.

    The wrapped publish notes its thread, signals that it started, then waits until a
    watcher task *on the loop* saw that signal and answered. A publish on the loop's
    own thread would hold the loop, the watcher could not answer, and the wait would end
    unanswered after 30 s (the test then fails instead of hanging).
    """

    def __init__(self, publish: Callable[[Sequence[Delivery]], None]) -> None:
        self.publish = publish
        self.started = threading.Event()
        self.loop_answered = threading.Event()
        self.answered_in_time: list[bool] = []
        self.threads: list[int] = []
        self.published: list[Delivery] = []

    def __call__(self, deliveries: Sequence[Delivery]) -> None:
        self.threads.append(threading.get_ident())
        self.started.set()
        self.answered_in_time.append(self.loop_answered.wait(30))
        self.publish(deliveries)  # may raise: a broker that is down
        self.published.extend(deliveries)

    async def run(self, call: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        """``call()``'s result and the loop's thread, with the watcher on the loop."""

        async def watch() -> None:
            while not self.started.is_set():
                await asyncio.sleep(0.001)
            self.loop_answered.set()

        watcher = asyncio.create_task(watch())
        try:
            return await call(), threading.get_ident()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def test_scheduling_a_prompt_due_soon_publishes_without_blocking_the_loop(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = OffLoop(scheduled_prompts.tasks.publish)
    monkeypatch.setattr(scheduled_prompts.tasks, "publish", spy)
    p, loop_thread = run(spy.run(lambda: aonce(delay=2)))
    assert spy.answered_in_time == [True], "the loop did not run while publish did"
    assert spy.threads and loop_thread not in spy.threads
    # The call returned after the publish: the task is in the broker when it returns.
    assert spy.published == [Delivery(p.id, to_ms(p.next_run_at))]
    assert r.zscore(K.inflight, spy.published[0].key) is not None
    assert r.llen(sp.get_settings().queue) == 1  # the ETA task reached the broker
    assert sp.get_prompt(p.id) == p


def test_unreachable_broker_still_returns_the_record_and_the_loop_keeps_running(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    sp.configure(
        redis_url=sp.get_settings().redis_url, broker_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    spy = OffLoop(scheduled_prompts.tasks.publish)
    monkeypatch.setattr(scheduled_prompts.tasks, "publish", spy)
    p, loop_thread = run(spy.run(lambda: aonce(delay=2)))
    assert spy.answered_in_time == [True], "the loop did not run while publish did"
    assert spy.threads and loop_thread not in spy.threads
    assert spy.published == []  # the broker refused it
    assert p.status is sp.Status.SCHEDULED and sp.get_prompt(p.id) == p
    # Not published, but in flight in Redis: tick re-drives it.
    assert r.zscore(K.inflight, f"{p.id}:{to_ms(p.next_run_at)}") is not None
