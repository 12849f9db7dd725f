"""The public API against a real redis-server: records, indexes, errors, ownership."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

import scheduled_prompts as sp
from scheduled_prompts import api, engine
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.engine import Outcome
from scheduled_prompts.keys import Keys
from scheduled_prompts.occurrences import Delivery
from support.redis_server import free_port

K = Keys("sp")


def once(prompt: str = "remind me", user: str = "u1", **kw: Any) -> sp.ScheduledPrompt:
    kw.setdefault("delay", 600)
    return sp.schedule_prompt(prompt, user_id=user, platform="telegram", **kw)


def cron(expr: str = "0 9 * * 1-5", user: str = "u1", **kw: Any) -> sp.ScheduledPrompt:
    kw.setdefault("timezone", "Europe/Berlin")
    return sp.schedule_prompt("summarise my inbox", user_id=user, platform="slack", cron=expr, **kw)


def pending_at(r: redis.Redis, prompt: sp.ScheduledPrompt) -> int | None:
    """Where the prompt's next occurrence waits: its due score, or (within the horizon,
    already handed to Celery) the in-flight entry for exactly that occurrence."""
    score = r.zscore(K.due, prompt.id)
    if score is not None:
        return int(score)
    assert prompt.next_run_at is not None
    if r.zscore(K.inflight, f"{prompt.id}:{to_ms(prompt.next_run_at)}") is not None:
        return to_ms(prompt.next_run_at)
    return None


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
    return out


# --- creating -------------------------------------------------------------------------


def test_schedule_once_writes_record_and_every_index(r: redis.Redis) -> None:
    before = utcnow()
    p = once(channel_id="chat-7", metadata={"lang": "pt", "n": [1, 2]})
    after = utcnow()
    assert p.kind is sp.Kind.ONCE and p.status is sp.Status.SCHEDULED
    assert p.next_run_at == p.schedule_time
    assert before + timedelta(seconds=600) <= p.next_run_at <= after + timedelta(seconds=600)
    assert sp.ScheduledPrompt.from_json(r.get(K.prompt(p.id))) == p
    assert r.zscore(K.due, p.id) == to_ms(p.next_run_at)
    assert r.zscore(K.ids, p.id) == 0
    assert r.zscore(K.user("u1"), p.id) == 0
    assert r.hget(K.open_counts, "u1") == "1"
    assert r.zscore(K.finished, p.id) is None
    assert sp.get_prompt(p.id) == p


def test_schedule_cron_next_run_in_users_timezone(r: redis.Redis) -> None:
    p = cron("30 8 * * *", timezone="America/New_York")
    assert p.kind is sp.Kind.CRON and p.status is sp.Status.ACTIVE
    assert p.cron_expression == "30 8 * * *"
    local = p.next_run_at.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (8, 30)
    assert r.zscore(K.due, p.id) == to_ms(p.next_run_at)


def test_at_accepts_iso_string_and_naive_in_timezone(redis_url: str) -> None:
    tomorrow = (utcnow() + timedelta(days=1)).replace(microsecond=0)
    p = once(delay=None, at=tomorrow.isoformat())
    assert p.schedule_time == tomorrow
    naive = tomorrow.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo")).replace(tzinfo=None)
    q = once(delay=None, at=naive, timezone="Asia/Tokyo")
    assert q.schedule_time == tomorrow and q.timezone == "Asia/Tokyo"


def test_cron_bounds_start_at_end_at_max_runs(redis_url: str) -> None:
    start = utcnow() + timedelta(days=10)
    p = cron(
        "0 * * * *", timezone="UTC", start_at=start, end_at=start + timedelta(days=1), max_runs=3
    )
    assert p.next_run_at >= start and p.next_run_at - start <= timedelta(hours=1)
    assert (p.max_runs, p.start_at, p.end_at) == (3, start, start + timedelta(days=1))


def test_same_prompt_id_same_request_returns_stored_record_unchanged(r: redis.Redis) -> None:
    first = once(prompt_id="reminder-42", delay=60)
    state = snapshot(r)
    again = once(prompt_id="reminder-42", delay=3600)  # delay always matches
    assert again == first
    assert snapshot(r) == state


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "something else"},
        {"user": "u2"},
        {"channel_id": "other"},
        {"delay": None, "cron": "0 9 * * *"},
    ],
)
def test_same_prompt_id_different_request_conflicts_and_writes_nothing(
    r: redis.Redis, change: dict[str, Any]
) -> None:
    once(prompt_id="reminder-42")
    state = snapshot(r)
    args: dict[str, Any] = {"prompt": "remind me", "prompt_id": "reminder-42", **change}
    prompt = args.pop("prompt")
    user = args.pop("user", "u1")
    if "cron" in args:
        args.pop("delay")
        with pytest.raises(sp.ConflictingPrompt, match="reminder-42"):
            sp.schedule_prompt(prompt, user_id=user, platform="telegram", **args)
    else:
        with pytest.raises(sp.ConflictingPrompt, match="reminder-42"):
            once(prompt, user, **args)
    assert snapshot(r) == state


def test_prompt_id_conflict_on_different_at(r: redis.Redis) -> None:
    at = utcnow() + timedelta(hours=1)
    once(prompt_id="p1", delay=None, at=at)
    assert once(prompt_id="p1", delay=None, at=at).schedule_time == at
    with pytest.raises(sp.ConflictingPrompt):
        once(prompt_id="p1", delay=None, at=at + timedelta(minutes=1))


def test_quota_counts_live_and_paused_and_frees_on_cancel(r: redis.Redis) -> None:
    sp.configure(redis_url=sp.get_settings().redis_url, max_prompts_per_user=2)
    a = once()
    b = cron()
    sp.pause_prompt(b.id)
    state = snapshot(r)
    with pytest.raises(sp.QuotaExceeded, match="2"):
        once()
    assert snapshot(r) == state
    once(user="u2")  # another user has their own quota
    sp.cancel_prompt(a.id)
    assert r.hget(K.open_counts, "u1") == "1"
    once()
    assert r.hget(K.open_counts, "u1") == "2"


# --- bad input writes nothing ---------------------------------------------------------

PAST = datetime(2020, 1, 1, tzinfo=UTC)
BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("empty prompt", {"prompt": "   "}, "prompt must not be empty"),
    ("prompt not str", {"prompt": 42}, "prompt must be a string"),
    ("prompt too long", {"prompt": "x" * 32_001}, "at most 32,000"),
    ("user_id int", {"user_id": 7}, "user_id must be a string"),
    ("empty platform", {"platform": ""}, "platform must not be empty"),
    ("channel int", {"channel_id": 5}, "channel_id must be a string or None"),
    ("metadata list", {"metadata": [1, 2]}, "metadata must be a JSON object"),
    ("metadata not json", {"metadata": {"x": {1, 2}}}, "JSON-serialisable"),
    ("metadata nan", {"metadata": {"x": float("nan")}}, "JSON-serialisable"),
    ("metadata too big", {"metadata": {"x": "y" * 17_000}}, "at most 16,384 bytes"),
    ("unknown timezone", {"timezone": "Mars/Olympus"}, "unknown timezone"),
    ("past at", {"delay": None, "at": PAST}, "in the past"),
    ("bad at string", {"delay": None, "at": "tomorrow at 9"}, "ISO-8601"),
    ("at and delay", {"at": utcnow() + timedelta(days=1)}, "exactly one of"),
    ("delay and cron", {"cron": "0 9 * * *"}, "exactly one of"),
    ("nothing", {"delay": None}, "exactly one of"),
    ("negative delay", {"delay": -5}, "delay must be"),
    ("bool delay", {"delay": True}, "delay must be"),
    ("six fields", {"delay": None, "cron": "0 0 9 * * *"}, "5 fields"),
    ("three fields", {"delay": None, "cron": "0 9 *"}, "5 fields"),
    ("hashed", {"delay": None, "cron": "H 9 * * *"}, "not supported"),
    ("random", {"delay": None, "cron": "0 R * * *"}, "not supported"),
    ("reboot", {"delay": None, "cron": "@reboot"}, "@reboot"),
    ("too long cron", {"delay": None, "cron": "0 " + ",".join(["1"] * 60) + " * * *"}, "100"),
    ("never fires", {"delay": None, "cron": "0 0 30 2 *"}, "never fires"),
    ("cron not str", {"delay": None, "cron": 5}, "cron must be a string"),
    ("bound on once", {"max_runs": 3}, "does not take"),
    ("max_runs zero", {"delay": None, "cron": "0 9 * * *", "max_runs": 0}, "max_runs"),
    (
        "end before start",
        {
            "delay": None,
            "cron": "0 9 * * *",
            "start_at": utcnow() + timedelta(days=2),
            "end_at": utcnow() + timedelta(days=1),
        },
        "must be after start_at",
    ),
    (
        "ends before first run",
        {"delay": None, "cron": "0 0 1 1 *", "end_at": utcnow() + timedelta(minutes=1)},
        "never fires between",
    ),
    ("bad prompt_id", {"prompt_id": "has space"}, "prompt_id must be"),
    ("grace negative", {"misfire_grace_seconds": -1}, "misfire_grace_seconds"),
]


@pytest.mark.parametrize(("case", "args", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_and_redis_is_unchanged(
    r: redis.Redis, case: str, args: dict[str, Any], message: str
) -> None:
    once("already here")  # the store is not empty: nothing of it may change either
    state = snapshot(r)
    count = r.dbsize()
    kwargs: dict[str, Any] = {"user_id": "u1", "platform": "telegram", "delay": 60, **args}
    prompt = kwargs.pop("prompt", "hello")
    with pytest.raises(sp.InvalidSchedule, match=message) as info:
        sp.schedule_prompt(prompt, **kwargs)
    assert isinstance(info.value, ValueError)
    assert r.dbsize() == count
    assert snapshot(r) == state


def test_unknown_keyword_is_a_type_error(redis_url: str) -> None:
    with pytest.raises(TypeError):
        sp.schedule_prompt("x", user_id="u", platform="p", delay=5, when="now")  # type: ignore[call-arg]


# --- bulk -----------------------------------------------------------------------------


def test_schedule_many_writes_all_in_order(r: redis.Redis) -> None:
    specs = [
        {"prompt": f"p{i}", "user_id": "bulk", "platform": "x", "delay": 600 + i}
        for i in range(2500)
    ]
    out = sp.schedule_many(specs)
    assert [p.prompt for p in out] == [f"p{i}" for i in range(2500)]
    assert r.zcard(K.due) == 2500 and r.hget(K.open_counts, "bulk") == "2500"
    page = sp.list_prompts(user_id="bulk", limit=5)
    assert [p.prompt for p in page.items] == ["p0", "p1", "p2", "p3", "p4"]


def test_schedule_many_one_bad_spec_writes_nothing(r: redis.Redis) -> None:
    once("already here")
    state = snapshot(r)
    specs: list[dict[str, Any]] = [
        {"prompt": f"p{i}", "user_id": "bulk", "platform": "x", "delay": 60} for i in range(10)
    ]
    specs[7]["cron"] = "61 * * * *"
    with pytest.raises(sp.InvalidSchedule, match=r"specs\[7\]"):
        sp.schedule_many(specs)
    assert snapshot(r) == state
    specs[7] = {"prompt": "dup", "user_id": "bulk", "platform": "x", "delay": 1, "prompt_id": "a"}
    specs[8] = {"prompt": "dup", "user_id": "bulk", "platform": "x", "delay": 1, "prompt_id": "a"}
    with pytest.raises(sp.InvalidSchedule, match="appears twice"):
        sp.schedule_many(specs)
    with pytest.raises(sp.InvalidSchedule, match=r"specs\[0\].*unknown argument"):
        sp.schedule_many([{"prompt": "x", "user_id": "u", "platform": "p", "delay": 1, "bad": 1}])
    assert snapshot(r) == state


def test_schedule_many_quota_checked_before_any_write(r: redis.Redis) -> None:
    sp.configure(redis_url=sp.get_settings().redis_url, max_prompts_per_user=5)
    state = snapshot(r)
    specs = [{"prompt": "p", "user_id": "u9", "platform": "x", "delay": 60} for _ in range(6)]
    with pytest.raises(sp.QuotaExceeded):
        sp.schedule_many(specs)
    assert snapshot(r) == state
    assert len(sp.schedule_many(specs[:5])) == 5


def test_schedule_many_idempotent_ids_return_existing(r: redis.Redis) -> None:
    first = once(prompt_id="keep")
    spec = {"prompt": "remind me", "user_id": "u1", "platform": "telegram", "delay": 5}
    out = sp.schedule_many([{**spec, "prompt_id": "keep"}, {**spec, "prompt_id": "new"}])
    assert out[0] == first and out[1].id == "new"
    with pytest.raises(sp.ConflictingPrompt):
        sp.schedule_many([{**spec, "prompt": "changed", "prompt_id": "keep"}])


# --- reading --------------------------------------------------------------------------


def test_get_unknown_prompt_is_none(redis_url: str) -> None:
    assert sp.get_prompt("nope") is None


def test_list_pages_visit_every_prompt_once(redis_url: str) -> None:
    made = {once(user=f"u{i % 3}").id for i in range(23)}
    seen: list[str] = []
    cursor = None
    while True:
        page = sp.list_prompts(limit=5, cursor=cursor)
        assert len(page.items) <= 5
        seen += [p.id for p in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 23


def test_list_filters_user_platform_status(redis_url: str) -> None:
    a = once(user="ana")
    b = cron(user="ana")
    once(user="bob")
    sp.pause_prompt(b.id)
    assert {p.id for p in sp.list_prompts(user_id="ana").items} == {a.id, b.id}
    assert [p.id for p in sp.list_prompts(user_id="ana", status="paused").items] == [b.id]
    assert [p.id for p in sp.list_prompts(platform="slack").items] == [b.id]
    assert [p.id for p in sp.list_prompts(user_id="ana", status=["scheduled"]).items] == [a.id]
    assert sp.list_prompts(user_id="carol").items == []


def test_list_user_reads_only_that_users_index(r: redis.Redis) -> None:
    for _ in range(50):
        once(user="other")
    mine = once(user="me")
    calls: list[str] = []
    original = redis.Redis.execute_command

    def spy(self: redis.Redis, *args: Any, **kw: Any) -> Any:
        calls.append(" ".join(str(a) for a in args[:2]))
        return original(self, *args, **kw)

    redis.Redis.execute_command = spy  # type: ignore[method-assign]
    try:
        page = sp.list_prompts(user_id="me")
    finally:
        redis.Redis.execute_command = original  # type: ignore[method-assign]
    assert [p.id for p in page.items] == [mine.id]
    assert any(K.user("me") in c for c in calls)
    assert not any(K.ids in c.split() for c in calls)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"status": "done"}, "status must be one of"),
        ({"cursor": 5}, "cursor"),
        ({"user_id": 5}, "user_id"),
    ],
)
def test_list_rejects_bad_arguments(redis_url: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(sp.InvalidSchedule, match=message):
        sp.list_prompts(**kwargs)


def test_corrupt_record_is_skipped_with_log_line(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good = once()
    r.set(K.prompt("broken"), "{not json")
    r.zadd(K.ids, {"broken": 0})
    r.set(K.prompt("future"), json.dumps({"schema": 99}))
    r.zadd(K.ids, {"future": 0})
    with caplog.at_level(logging.WARNING, "scheduled_prompts.store"):
        page = sp.list_prompts()
    assert [p.id for p in page.items] == [good.id]
    assert "sp:prompt:broken" in caplog.text and "sp:prompt:future" in caplog.text
    assert sp.get_prompt("broken") is None


# --- changing -------------------------------------------------------------------------


def test_cancel_moves_prompt_from_due_to_finished(r: redis.Redis) -> None:
    p = once()
    c = sp.cancel_prompt(p.id, user_id="u1")
    assert c.status is sp.Status.CANCELLED and c.version == 2 and c.next_run_at is None
    assert r.zscore(K.due, p.id) is None
    assert r.zscore(K.finished, p.id) == to_ms(c.updated_at)
    assert r.hget(K.open_counts, "u1") is None
    assert sp.cancel_prompt(p.id) == c  # cancelling twice changes nothing


def test_other_users_prompt_is_not_found_and_unchanged(r: redis.Redis) -> None:
    p = once(user="ana")
    state = snapshot(r)
    for verb in (sp.cancel_prompt, sp.pause_prompt, sp.resume_prompt):
        with pytest.raises(sp.PromptNotFound, match=p.id):
            verb(p.id, user_id="mallory")
    with pytest.raises(sp.PromptNotFound):
        sp.update_prompt(p.id, user_id="mallory", prompt="pwned")
    with pytest.raises(sp.PromptNotFound):
        sp.cancel_prompt("no-such-id")
    assert snapshot(r) == state


def test_pause_and_resume_cron_computes_next_run_from_now(r: redis.Redis) -> None:
    p = cron("*/5 * * * *", timezone="UTC")
    paused = sp.pause_prompt(p.id)
    assert paused.status is sp.Status.PAUSED and paused.next_run_at is None
    assert r.zscore(K.due, p.id) is None and r.hget(K.open_counts, "u1") == "1"
    assert sp.pause_prompt(p.id) == paused
    resumed = sp.resume_prompt(p.id)
    assert resumed.status is sp.Status.ACTIVE and resumed.version == 3
    # The next */5 minute strictly after the resume (its updated_at), not a missed one.
    assert resumed.updated_at < resumed.next_run_at <= resumed.updated_at + timedelta(minutes=5)
    assert resumed.next_run_at.minute % 5 == 0 and resumed.next_run_at.second == 0
    assert pending_at(r, resumed) == to_ms(resumed.next_run_at)


def test_resume_once_after_its_time_fires_now(r: redis.Redis) -> None:
    p = once(delay=0.05)
    sp.pause_prompt(p.id)
    threading.Event().wait(0.1)
    resumed = sp.resume_prompt(p.id)
    assert resumed.status is sp.Status.SCHEDULED
    assert resumed.schedule_time == p.schedule_time
    assert resumed.next_run_at > p.schedule_time


def test_terminal_prompts_refuse_pause_resume_update(redis_url: str) -> None:
    p = sp.cancel_prompt(once().id)
    for verb in (sp.pause_prompt, sp.resume_prompt):
        with pytest.raises(sp.ConflictingPrompt, match="cancelled"):
            verb(p.id)
    with pytest.raises(sp.ConflictingPrompt):
        sp.update_prompt(p.id, prompt="new")


def test_update_reschedules_in_place(r: redis.Redis) -> None:
    p = once(delay=600)
    q = sp.update_prompt(p.id, user_id="u1", delay=7200, prompt="new text")
    assert (q.id, q.prompt, q.version) == (p.id, "new text", 2)
    assert q.next_run_at - p.next_run_at > timedelta(minutes=100)
    assert r.zscore(K.due, p.id) == to_ms(q.next_run_at)
    c = sp.update_prompt(p.id, cron="0 12 * * *", timezone="Asia/Tokyo")
    assert c.kind is sp.Kind.CRON and c.status is sp.Status.ACTIVE and c.schedule_time is None
    assert c.next_run_at.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo")).hour == 12
    assert sp.update_prompt(p.id, prompt="new text") == c  # no change, no version bump


def test_update_paused_prompt_stays_paused(r: redis.Redis) -> None:
    p = cron()
    sp.pause_prompt(p.id)
    q = sp.update_prompt(p.id, cron="0 18 * * *")
    assert q.status is sp.Status.PAUSED and q.next_run_at is None
    assert r.zscore(K.due, p.id) is None
    assert sp.resume_prompt(p.id).next_run_at is not None


class Calls:
    """A runner that keeps each payload's idempotency key."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        self.keys.append(payload["idempotency_key"])


@pytest.fixture
def calls() -> Iterator[Calls]:
    runner = Calls()
    sp.set_bot_runner(runner)
    yield runner
    sp.set_bot_runner(None)


def deliver_at(prompt_id: str, when: datetime) -> Outcome:
    """Deliver the occurrence of ``prompt_id`` at ``when`` (as its ETA task would)."""
    return engine.deliver(get_redis(), scope(), Delivery(prompt_id, to_ms(when)), now=when).outcome


def test_update_at_moves_a_prompt_to_that_instant_and_its_old_time_never_fires(
    r: redis.Redis, calls: Calls
) -> None:
    p = once(delay=600)
    at = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
    q = sp.update_prompt(p.id, at=at.isoformat())
    assert (q.kind, q.status, q.schedule_time, q.next_run_at) == (
        sp.Kind.ONCE,
        sp.Status.SCHEDULED,
        at,
        at,
    )
    assert q.version == 2 and r.zscore(K.due, p.id) == to_ms(at)
    # A naive time is read in the timezone given with it.
    tokyo = ZoneInfo("Asia/Tokyo")
    moved = at + timedelta(hours=1)
    q2 = sp.update_prompt(
        p.id, at=moved.astimezone(tokyo).replace(tzinfo=None), timezone="Asia/Tokyo"
    )
    assert (q2.schedule_time, q2.next_run_at, q2.timezone) == (moved, moved, "Asia/Tokyo")
    assert pending_at(r, q2) == to_ms(moved)
    assert p.next_run_at is not None
    for old in (p.next_run_at, at):  # the ETA tasks of earlier times find nothing to do
        assert deliver_at(p.id, old) is Outcome.SKIPPED
    assert calls.keys == []
    assert deliver_at(p.id, moved) is Outcome.DELIVERED
    assert calls.keys == [f"{p.id}:{to_ms(moved)}"]
    assert get_redis().zscore(K.due, p.id) is None


def test_update_at_turns_a_cron_prompt_into_a_one_time_prompt_without_its_bounds(
    r: redis.Redis,
) -> None:
    p = cron("0 * * * *", timezone="UTC", max_runs=5, end_at=utcnow() + timedelta(days=9))
    at = (utcnow() + timedelta(days=1)).replace(microsecond=0)
    q = sp.update_prompt(p.id, at=at)
    assert (q.kind, q.status, q.schedule_time, q.next_run_at) == (
        sp.Kind.ONCE,
        sp.Status.SCHEDULED,
        at,
        at,
    )
    assert (q.cron_expression, q.max_runs, q.start_at, q.end_at) == (None, None, None, None)
    assert r.zscore(K.due, p.id) == to_ms(at)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"at": datetime(2020, 1, 1, tzinfo=UTC)}, "in the past"),
        ({"at": "next tuesday"}, "ISO-8601"),
        ({"at": "2999-01-01T00:00:00Z", "delay": 60}, "exactly one of"),
        ({"max_runs": 3}, "does not take"),
    ],
)
def test_bad_at_or_bounds_on_a_one_time_prompt_are_rejected_and_write_nothing(
    r: redis.Redis, changes: dict[str, Any], message: str
) -> None:
    p = once()
    state = snapshot(r)
    with pytest.raises(sp.InvalidSchedule, match=message):
        sp.update_prompt(p.id, **changes)
    assert snapshot(r) == state


def test_update_bounds_of_a_cron_prompt_move_its_next_run_and_end_it_on_time(
    r: redis.Redis, calls: Calls
) -> None:
    p = cron("0 * * * *", timezone="UTC")
    start = (utcnow() + timedelta(days=3)).replace(minute=30, second=0, microsecond=0)
    q = sp.update_prompt(p.id, start_at=start)
    first = start + timedelta(minutes=30)  # the first whole hour after start_at
    assert (q.start_at, q.next_run_at, q.version) == (start, first, 2)
    assert r.zscore(K.due, p.id) == to_ms(first)
    # An end two and a half hours later leaves two occurrences: first and first + 1 h.
    q = sp.update_prompt(p.id, end_at=start + timedelta(hours=2, minutes=10))
    assert q.end_at == start + timedelta(hours=2, minutes=10) and q.next_run_at == first
    assert q.start_at == start  # bounds not named are kept
    q = sp.update_prompt(p.id, prompt="new text")
    assert (q.start_at, q.end_at) == (start, start + timedelta(hours=2, minutes=10))
    assert deliver_at(p.id, first) is Outcome.DELIVERED
    second = get_prompt_or_fail(p.id)
    assert second.next_run_at == first + timedelta(hours=1)
    assert deliver_at(p.id, first + timedelta(hours=1)) is Outcome.DELIVERED
    done = get_prompt_or_fail(p.id)
    assert done.status is sp.Status.EXECUTED and done.next_run_at is None
    assert calls.keys == [f"{p.id}:{to_ms(first)}", f"{p.id}:{to_ms(first + timedelta(hours=1))}"]
    assert r.zscore(K.due, p.id) is None and r.zscore(K.finished, p.id) is not None


def test_update_max_runs_of_a_cron_prompt_ends_it_after_that_many_runs(
    r: redis.Redis, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = cron("0 * * * *", timezone="UTC", start_at=utcnow() + timedelta(days=1))
    assert p.next_run_at is not None
    first = p.next_run_at
    assert deliver_at(p.id, first) is Outcome.DELIVERED
    # The API's clock, a minute after that first run (time is a parameter, not a sleep).
    monkeypatch.setattr(api, "utcnow", lambda: first + timedelta(minutes=1))
    with pytest.raises(sp.InvalidSchedule, match="greater than the 1 runs already made"):
        sp.update_prompt(p.id, max_runs=1)
    q = sp.update_prompt(p.id, max_runs=2)
    assert q.max_runs == 2 and q.status is sp.Status.ACTIVE
    assert q.next_run_at == first + timedelta(hours=1)
    assert deliver_at(p.id, q.next_run_at) is Outcome.DELIVERED
    done = get_prompt_or_fail(p.id)
    assert done.status is sp.Status.EXECUTED and done.run_count == 2
    assert done.next_run_at is None and r.zscore(K.due, p.id) is None
    assert calls.keys == [f"{p.id}:{to_ms(first)}", f"{p.id}:{to_ms(q.next_run_at)}"]


def test_update_end_at_before_the_next_run_is_rejected_and_writes_nothing(r: redis.Redis) -> None:
    p = cron("0 9 1 1 *", timezone="UTC")  # once a year
    state = snapshot(r)
    with pytest.raises(sp.InvalidSchedule, match="never fires between"):
        sp.update_prompt(p.id, end_at=utcnow() + timedelta(minutes=1))
    assert snapshot(r) == state


def next_local_minute(
    after: datetime, zone: str, *, minute: int, hour: int | None = None
) -> datetime:
    """Brute force: the first whole UTC minute after ``after`` that is ``hour:minute``
    (any hour when None) on the wall clock of ``zone``."""
    tz = ZoneInfo(zone)
    t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(3 * 24 * 60):
        local = t.astimezone(tz)
        if local.minute == minute and (hour is None or local.hour == hour):
            return t
        t += timedelta(minutes=1)
    raise AssertionError("no such minute within three days")


def test_update_timezone_alone_recomputes_a_cron_prompts_next_run_in_the_new_zone(
    r: redis.Redis, calls: Calls
) -> None:
    p = cron("0 9 * * *", timezone="Europe/Berlin")
    q = sp.update_prompt(p.id, timezone="America/New_York")
    assert (q.cron_expression, q.timezone, q.version) == ("0 9 * * *", "America/New_York", 2)
    expected = next_local_minute(q.updated_at, "America/New_York", hour=9, minute=0)
    assert q.next_run_at == expected != p.next_run_at
    assert pending_at(r, q) == to_ms(expected)
    assert p.next_run_at is not None
    assert deliver_at(p.id, p.next_run_at) is Outcome.SKIPPED  # 09:00 Berlin: gone
    assert calls.keys == []
    assert deliver_at(p.id, expected) is Outcome.DELIVERED
    assert calls.keys == [f"{p.id}:{to_ms(expected)}"]


def test_timezone_change_of_a_cron_prompt_already_handed_to_celery_never_fires_the_old_time(
    r: redis.Redis, calls: Calls
) -> None:
    # A minute two to three minutes ahead: within the horizon, so its ETA task is out.
    minute = (utcnow() + timedelta(minutes=3)).minute
    p = cron(f"{minute} * * * *", timezone="UTC")
    assert p.next_run_at is not None
    old_key = f"{p.id}:{to_ms(p.next_run_at)}"
    assert r.zscore(K.inflight, old_key) is not None and r.zscore(K.due, p.id) is None
    # Asia/Kolkata is UTC+05:30: the same wall minute is half an hour off in UTC.
    q = sp.update_prompt(p.id, timezone="Asia/Kolkata")
    expected = next_local_minute(q.updated_at, "Asia/Kolkata", minute=minute)
    assert q.next_run_at == expected and expected.minute == (minute + 30) % 60
    assert pending_at(r, q) == to_ms(expected)
    assert deliver_at(p.id, p.next_run_at) is Outcome.SKIPPED  # the old ETA task runs
    assert r.zscore(K.inflight, old_key) is None
    assert deliver_at(p.id, expected) is Outcome.DELIVERED
    assert calls.keys == [f"{p.id}:{to_ms(expected)}"]


def get_prompt_or_fail(prompt_id: str) -> sp.ScheduledPrompt:
    found = sp.get_prompt(prompt_id)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cron": "bad"}, "5 fields"),
        ({"user_id_new": "x"}, "cannot update"),
        ({"prompt": ""}, "must not be empty"),
        ({"max_runs": 0}, "max_runs"),
        ({"timezone": "Nowhere/City"}, "unknown timezone"),
        ({"metadata": "text"}, "JSON object"),
    ],
)
def test_bad_update_is_rejected_and_redis_is_unchanged(
    r: redis.Redis, changes: dict[str, Any], message: str
) -> None:
    p = cron()
    state = snapshot(r)
    with pytest.raises(sp.InvalidSchedule, match=message):
        sp.update_prompt(p.id, **changes)
    assert snapshot(r) == state


def test_concurrent_changes_never_lose_a_version(r: redis.Redis) -> None:
    p = cron("* * * * *", timezone="UTC")
    errors: list[BaseException] = []

    def flip(n: int) -> None:
        try:
            for i in range(n):
                sp.update_prompt(p.id, metadata={"thread": threading.get_ident(), "i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = sp.get_prompt(p.id)
    assert final is not None and final.version == 1 + 4 * 25
    assert pending_at(r, final) == to_ms(final.next_run_at)


# --- cleanup --------------------------------------------------------------------------


def test_cleanup_removes_only_old_terminal_prompts(r: redis.Redis) -> None:
    live = once()
    done = sp.cancel_prompt(once().id)
    old = sp.cancel_prompt(once().id)
    # Age one record by rewriting its finish time 40 days back (record and index).
    aged = old.replace(updated_at=old.updated_at - timedelta(days=40))
    r.set(K.prompt(old.id), aged.to_json())
    r.zadd(K.finished, {old.id: to_ms(aged.updated_at)})
    r.set(K.prompt("garbled"), "{{{")
    r.zadd(K.finished, {"garbled": 0})
    result = json.loads(sp.cleanup_expired_prompts(days_to_keep=30))
    assert result == {
        "success": True,
        "message": "deleted 1 prompt(s) finished more than 30 day(s) ago",
        "days_kept": 30,
        "deleted": 1,
    }
    assert sp.get_prompt(old.id) is None and r.zscore(K.ids, old.id) is None
    assert r.zscore(K.user("u1"), old.id) is None and r.zscore(K.finished, old.id) is None
    assert sp.get_prompt(live.id) is not None and sp.get_prompt(done.id) is not None
    assert r.get(K.prompt("garbled")) == "{{{"


def test_cleanup_bad_days_is_an_error_result(r: redis.Redis) -> None:
    state = snapshot(r)
    for bad in (-1, "7", 36_501, True):
        result = json.loads(sp.cleanup_expired_prompts(days_to_keep=bad))  # type: ignore[arg-type]
        assert result == {
            "error": f"days_to_keep must be a number of days from 0 to 36500, got {bad!r}"
        }
    assert snapshot(r) == state


# --- Redis down -----------------------------------------------------------------------


def test_redis_down_raises_store_unavailable_with_masked_url(redis_url: str) -> None:
    url = f"redis://app:s3cret@127.0.0.1:{free_port()}/0"
    sp.configure(redis_url=url, redis_timeout_seconds=0.5)
    for call in (once, lambda: sp.get_prompt("x"), sp.list_prompts):
        with pytest.raises(sp.StoreUnavailable) as info:
            call()
        assert "s3cret" not in str(info.value)
        assert "redis://app:***@127.0.0.1" in str(info.value)
    result = json.loads(sp.cleanup_expired_prompts())
    assert "error" in result and "s3cret" not in result["error"]
