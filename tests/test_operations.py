"""The library's operator operations and seed functions, from both APIs, on a real Redis:
``get_stats``, ``export_prompts``, ``import_prompts`` (the CLI's stats, export and import
are these), and ``tick``/``hydrate``/``cleanup`` as coroutines on an asyncio client."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

import scheduled_prompts as sp
import scheduled_prompts.tasks
from scheduled_prompts import aio
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.keys import Keys
from scheduled_prompts.occurrences import Delivery

K = Keys("sp")
T = TypeVar("T")

#: Every public function of the package that talks to Redis.
REDIS_FUNCTIONS = [
    "schedule_prompt",
    "schedule_many",
    "get_prompt",
    "list_prompts",
    "cancel_prompt",
    "pause_prompt",
    "resume_prompt",
    "update_prompt",
    "trigger_prompt",
    "cleanup_expired_prompts",
    "tick_scheduled_prompts",
    "hydrate_scheduled_prompts",
    "get_stats",
    "export_prompts",
    "import_prompts",
]


def arun(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def with_client(call: Any) -> Any:
    """``call(client)`` on an asyncio client of the test server, closed after it."""

    async def main() -> Any:
        client = AsyncRedis.from_url(sp.get_settings().redis_url, decode_responses=True)
        try:
            return await call(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Delivery]:
    """What reaches Celery: ``tasks.publish`` replaced by a list."""
    out: list[Delivery] = []

    def publish(deliveries: Sequence[Delivery]) -> None:
        out.extend(deliveries)

    monkeypatch.setattr(scheduled_prompts.tasks, "publish", publish)
    return out


def once(prompt: str = "p", user: str = "u1", **kw: Any) -> sp.ScheduledPrompt:
    kw.setdefault("delay", 3600)
    return sp.schedule_prompt(prompt, user_id=user, platform="t", **kw)


# --- one API, two forms --------------------------------------------------------------


@pytest.mark.parametrize("name", REDIS_FUNCTIONS)
def test_aio_offers_every_redis_function_with_the_same_parameters(name: str) -> None:
    sync, coro = getattr(sp, name), getattr(aio, name)
    assert name in sp.__all__ and name in aio.__all__
    assert inspect.iscoroutinefunction(coro) or inspect.isasyncgenfunction(coro)
    assert list(inspect.signature(coro).parameters) == list(inspect.signature(sync).parameters)


def test_a_verb_keeps_its_plan_and_the_plan_does_nothing_until_driven(r: redis.Redis) -> None:
    plan = sp.schedule_prompt.plan("later", user_id="u1", platform="t", delay=3600)
    assert r.dbsize() == 0  # building the plan wrote nothing
    record = sp.api.run(plan)
    assert sp.get_prompt(record.id) == record


# --- seed functions on an asyncio client ---------------------------------------------


def test_aio_tick_takes_an_asyncio_client_and_publishes_what_is_due(
    r: redis.Redis, published: list[Delivery]
) -> None:
    p = once(delay=3600)
    assert p.next_run_at is not None
    at = p.next_run_at - timedelta(seconds=1)
    result = with_client(lambda c: aio.tick_scheduled_prompts(c, now=at))
    assert result == {"promoted": 1, "redriven": 0}
    assert published == [Delivery(p.id, to_ms(p.next_run_at))]
    assert r.zscore(K.inflight, published[0].key) is not None
    assert r.get(K.beat) == str(to_ms(at))
    # The same tick again finds nothing more to promote.
    assert with_client(lambda c: aio.tick_scheduled_prompts(c, now=at)) == {
        "promoted": 0,
        "redriven": 0,
    }


def test_aio_hydrate_republishes_in_flight_occurrences_on_the_seed_signature(
    r: redis.Redis, published: list[Delivery]
) -> None:
    telegram = once(delay=5)  # due within the horizon: promoted and in flight at once
    slack = sp.schedule_prompt("s", user_id="u1", platform="slack", delay=5)
    first = list(published)
    assert {d.prompt_id for d in first} == {telegram.id, slack.id}
    published.clear()
    count = with_client(lambda c: aio.hydrate_scheduled_prompts(c, ["t"], 500))
    assert count == 1
    assert published == [d for d in first if d.prompt_id == telegram.id]
    assert not r.exists(K.hydrate_lock)  # released after the run


def test_aio_cleanup_takes_an_asyncio_client_and_answers_json(r: redis.Redis) -> None:
    old = sp.cancel_prompt(once().id)
    aged = old.replace(updated_at=old.updated_at - timedelta(days=40))
    r.set(K.prompt(old.id), aged.to_json())
    r.zadd(K.finished, {old.id: to_ms(aged.updated_at)})
    keep = sp.cancel_prompt(once().id)
    answer = json.loads(with_client(lambda c: aio.cleanup_expired_prompts(c, days_to_keep=30)))
    assert answer["deleted"] == 1 and answer["success"] is True
    assert sp.get_prompt(old.id) is None and sp.get_prompt(keep.id) == keep


# --- stats ----------------------------------------------------------------------------


def test_stats_count_by_status_and_backlog_identically_from_both_apis(
    r: redis.Redis, published: list[Delivery]
) -> None:
    sp.cancel_prompt(once().id)
    sp.pause_prompt(once().id)
    once()
    soon = once(delay=5)  # promoted: in flight
    r.set(K.prompt("broken"), "{not json")
    r.zadd(K.ids, {"broken": 0})
    pages: list[int] = []
    stats = sp.get_stats(progress=pages.append)
    assert stats["total"] == 5 and pages == [5]
    assert stats["by_status"] == {
        "scheduled": 2,
        "active": 0,
        "paused": 1,
        "executed": 0,
        "cancelled": 1,
        "failed": 0,
        "unreadable": 1,
    }
    assert stats["in_flight"] == 1 and published[0].prompt_id == soon.id
    assert stats["due_overdue"] == 0 and stats["last_tick"] is None
    assert arun(aio.get_stats()) == stats


# --- export and import ----------------------------------------------------------------


def test_export_then_import_round_trips_and_skips_what_exists(r: redis.Redis) -> None:
    made = [once(f"p{i}", user=f"u{i % 2}") for i in range(5)]
    sp.cancel_prompt(made[0].id)
    exported = list(sp.export_prompts())
    assert [p.id for p in exported] == sorted(p.id for p in made)
    sp.configure(redis_url=sp.get_settings().redis_url, key_prefix="copy")
    result = sp.import_prompts(exported)
    assert (result.imported, dict(result.skipped)) == (5, {})
    assert list(sp.export_prompts()) == exported
    again = arun(aio.import_prompts(exported))
    assert (again.imported, dict(again.skipped)) == (0, {"already exists": 5})


def test_import_applies_the_apis_checks_and_quota(r: redis.Redis) -> None:
    good = once("fine")
    long = once("x").replace(id="too-long", prompt="y" * (sp.get_settings().max_prompt_chars + 1))
    sp.configure(redis_url=sp.get_settings().redis_url, key_prefix="other", max_prompts_per_user=1)
    second = good.replace(id="second")
    result = sp.import_prompts([good, long, second])
    assert result.imported == 1
    assert dict(result.skipped) == {"invalid record": 1, "over the per-user quota": 1}
    assert [p.id for p in sp.export_prompts()] == [good.id]


def test_export_skips_an_unreadable_record_and_says_which(r: redis.Redis) -> None:
    fine = once()
    r.set(K.prompt("broken"), "{not json")
    r.zadd(K.ids, {"broken": 0})
    skipped: list[tuple[str, str]] = []
    records = list(sp.export_prompts(on_page=lambda page: skipped.extend(page.skipped)))
    assert records == [fine]
    assert [key for key, _ in skipped] == [K.prompt("broken")]

    async def collect() -> list[sp.ScheduledPrompt]:
        return [p async for p in aio.export_prompts()]

    assert arun(collect()) == [fine]


def test_import_promotes_an_imported_prompt_due_soon(
    r: redis.Redis, published: list[Delivery]
) -> None:
    soon = sp.schedule_prompt("soon", user_id="u", platform="t", at=utcnow() + timedelta(seconds=5))
    published.clear()
    sp.configure(redis_url=sp.get_settings().redis_url, key_prefix="fresh")
    assert sp.import_prompts([soon]).imported == 1
    assert [d.prompt_id for d in published] == [soon.id]
