"""Prompts by status, kept by every write script and rebuilt by a recount that runs while
writes go on: always equal to what reading every record says."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
import redis

import scheduled_prompts as sp
from scheduled_prompts import api, engine, metrics, retention
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.errors import PermanentDeliveryError
from scheduled_prompts.occurrences import Delivery
from support.recording_runner import MemoryRunner


def truth(client: redis.Redis) -> dict[str, int]:
    """Statuses read from every stored record."""
    found: Counter[str] = Counter()
    for key in client.scan_iter(match=scope().keys.prompt_pattern, count=1000):
        record = sp.ScheduledPrompt.from_json(client.get(key))
        found[record.status.value] += 1
    return dict(found)


def kept(client: redis.Redis) -> dict[str, int] | None:
    """The counts as the exporter reads them (zeros left out), None while incomplete."""
    statuses = api.run(metrics.snapshot(scope(), utcnow())).statuses
    return None if statuses is None else {k: v for k, v in statuses.items() if v}


def once() -> sp.ScheduledPrompt:
    return sp.schedule_prompt(
        "hello", user_id="u", platform="discord", at=utcnow() + timedelta(hours=1)
    )


def deliver(prompt: sp.ScheduledPrompt) -> str:
    assert prompt.next_run_at is not None
    d = Delivery(prompt.id, to_ms(prompt.next_run_at))
    return engine.deliver(get_redis(), scope(), d, now=prompt.next_run_at).outcome.value


def test_every_write_keeps_the_counts_equal_to_the_records(
    r: redis.Redis, memory_runner: MemoryRunner
) -> None:
    a, b, c = once(), once(), once()
    cron = sp.schedule_prompt("daily", user_id="u", platform="discord", cron="0 9 * * *")
    later = utcnow() + timedelta(hours=2)
    sp.schedule_many(
        [
            {"prompt": f"p{i}", "user_id": f"m{i}", "platform": "discord", "at": later}
            for i in range(20)
        ]
    )
    assert kept(r) == truth(r) == {"scheduled": 23, "active": 1}
    sp.pause_prompt(a.id)
    sp.pause_prompt(cron.id)
    sp.resume_prompt(cron.id)
    sp.cancel_prompt(b.id)
    assert deliver(c) == "delivered"
    failing = once()
    sp.set_bot_runner(MemoryRunner(PermanentDeliveryError("gone")))
    assert deliver(failing) == "failed"
    sp.update_prompt(cron.id, prompt="daily, reworded")
    assert kept(r) == truth(r) == {
        "scheduled": 20, "active": 1, "paused": 1, "cancelled": 1, "executed": 1, "failed": 1
    }  # fmt: skip
    # Cleanup deletes the terminal ones; an import brings a record back.
    exported = [p for p in sp.export_prompts() if p.id == b.id]
    removed = api.run(retention.cleanup(scope(), 0, utcnow() + timedelta(days=1)))
    assert removed["deleted"] == 3
    assert kept(r) == truth(r) == {"scheduled": 20, "active": 1, "paused": 1}
    assert sp.import_prompts(exported).imported == 1
    assert kept(r) == truth(r) == {"scheduled": 20, "active": 1, "paused": 1, "cancelled": 1}


def test_refused_writes_count_nothing(r: redis.Redis) -> None:
    p = once()
    sp.cancel_prompt(p.id)
    with pytest.raises(sp.PromptError):
        sp.pause_prompt(p.id)
    with pytest.raises(sp.PromptError):
        sp.update_prompt(p.id, prompt="again")
    with pytest.raises(sp.PromptError):
        sp.schedule_many([{"prompt": "x", "user_id": "u", "platform": "discord"}])
    assert kept(r) == truth(r) == {"cancelled": 1}


def test_a_recount_while_writes_go_on_ends_equal_to_the_records(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "RECOUNT_PAGE", 50)
    made = sp.schedule_many(
        [
            {
                "prompt": f"p{i}",
                "user_id": f"u{i % 7}",
                "platform": "discord",
                "at": utcnow() + timedelta(hours=1),
            }
            for i in range(180)
        ]
    )
    # Data from before the counts existed: no stamp, and counts that are simply wrong.
    keys = scope().keys
    r.delete(keys.counts)
    r.hset(keys.counts, mapping={"scheduled": 3, "paused": 9})
    assert kept(r) is None
    now = utcnow()
    assert api.run(metrics.recount(scope(), now, pages=2)) is False  # 100 records passed
    cursor = r.get(keys.recount_cursor)
    assert cursor == made[99].id
    # Writes on both sides of the cursor, and new prompts, while it runs.
    sp.pause_prompt(made[10].id)  # passed
    sp.pause_prompt(made[150].id)  # not yet
    sp.cancel_prompt(made[99].id)  # the cursor itself
    sp.cancel_prompt(made[100].id)
    for _ in range(5):
        once()
    api.run(retention.cleanup(scope(), 0, utcnow() + timedelta(days=1)))
    assert api.run(metrics.recount(scope(), now)) is True
    assert r.exists(keys.recount_cursor) == 0 and r.exists(keys.recount_next) == 0
    assert kept(r) == truth(r) == {"scheduled": 181, "paused": 2}


def test_a_tick_finishes_the_recount_of_data_from_before(r: redis.Redis) -> None:
    for _ in range(4):
        once()
    r.hdel(scope().keys.counts, "counted")
    assert kept(r) is None
    engine.tick(get_redis(), scope(), lambda deliveries: None)
    assert kept(r) == truth(r) == {"scheduled": 4}


def test_a_recount_counts_records_it_cannot_read_and_restarts_on_request(r: redis.Redis) -> None:
    p = once()
    r.set(scope().keys.prompt(p.id), "{not json")
    once()
    assert api.run(metrics.recount(scope(), utcnow(), restart=True)) is True
    assert kept(r) == {"scheduled": 1, "unreadable": 1}


def test_an_empty_store_counts_from_the_first_write(r: redis.Redis) -> None:
    assert kept(r) is None  # nothing ever written
    once()
    assert kept(r) == {"scheduled": 1}
    # A refused first write writes nothing at all.
    r.flushall()
    with pytest.raises(sp.PromptError):
        sp.schedule_prompt("", user_id="u", platform="discord", at=utcnow() + timedelta(hours=1))
    assert r.dbsize() == 0
