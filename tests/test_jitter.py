"""Jitter: each occurrence fires a fixed offset in [0, J) after its time, derived from the
prompt id — the same every run — while the idempotency key and ``occurrence`` keep the
nominal time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

import scheduled_prompts as sp
from scheduled_prompts import engine
from scheduled_prompts._time import from_iso, to_ms, utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.occurrences import Delivery
from scheduled_prompts.schedules import jitter_offset, preview_schedule
from scheduled_prompts.tools import ToolContext, handle_tool_call
from support.recording_runner import MemoryRunner

# A daily time half a day from now: nominal and jittered instants are all well ahead,
# whatever the time the suite runs.
DAILY = f"0 {(utcnow().hour + 12) % 24} * * *"


def test_the_offset_is_fixed_per_id_within_the_range_and_spread_across_ids() -> None:
    assert jitter_offset("01abc", 600) == jitter_offset("01abc", 600)
    assert jitter_offset("01abc", None) == timedelta(0)
    offsets = [jitter_offset(f"prompt-{i}", 600).total_seconds() for i in range(2000)]
    assert all(0 <= o < 600 for o in offsets)
    # Spread over the whole range: every minute of the ten gets some.
    assert {int(o // 60) for o in offsets} == set(range(10))


def test_a_cron_prompt_fires_its_offset_after_each_nominal_time(
    r: redis.Redis, memory_runner: MemoryRunner
) -> None:
    p = sp.schedule_prompt("digest", user_id="u", platform="tg", cron=DAILY, jitter_seconds=1800)
    offset = jitter_offset(p.id, 1800)
    nominal = preview_schedule(DAILY, count=2)
    assert p.jitter_seconds == 1800 and p.next_run_at == nominal[0] + offset
    # preview_schedule shows the same jittered instants for this prompt.
    assert preview_schedule(DAILY, count=2, jitter_seconds=1800, prompt_id=p.id) == [
        n + offset for n in nominal
    ]
    assert r.zscore(scope().keys.due, p.id) == to_ms(nominal[0] + offset)
    fire = nominal[0] + offset
    result = engine.deliver(get_redis(), scope(), Delivery(p.id, to_ms(fire)), now=fire)
    assert result.outcome.value == "delivered"
    (payload,) = memory_runner.calls
    # The key and the occurrence keep the nominal time; fire_at and lateness the real one.
    assert payload["idempotency_key"] == f"{p.id}:{to_ms(nominal[0])}"
    assert from_iso(payload["occurrence"]) == nominal[0]
    assert from_iso(payload["fire_at"]) == fire
    assert payload["lateness_seconds"] == 0
    after = sp.get_prompt(p.id)
    assert after is not None and after.next_run_at == nominal[1] + offset


def test_a_one_time_prompt_fires_its_offset_after_its_time(
    r: redis.Redis, memory_runner: MemoryRunner
) -> None:
    at = utcnow().replace(microsecond=0) + timedelta(hours=2)
    p = sp.schedule_prompt("once", user_id="u", platform="tg", at=at, jitter_seconds=120)
    offset = jitter_offset(p.id, 120)
    assert p.schedule_time == at and p.next_run_at == at + offset
    late = at + offset + timedelta(seconds=2)
    engine.deliver(get_redis(), scope(), Delivery(p.id, to_ms(at + offset)), now=late)
    (payload,) = memory_runner.calls
    assert payload["idempotency_key"] == f"{p.id}:{to_ms(at)}"
    assert payload["lateness_seconds"] == 2  # from when it was to fire


def test_pause_resume_and_update_keep_or_move_the_offset(r: redis.Redis) -> None:
    p = sp.schedule_prompt("d", user_id="u", platform="tg", cron=DAILY, jitter_seconds=900)
    sp.pause_prompt(p.id)
    resumed = sp.resume_prompt(p.id)
    assert resumed.next_run_at == p.next_run_at
    wider = sp.update_prompt(p.id, jitter_seconds=3000)
    nominal = preview_schedule(DAILY, count=1)[0]
    assert wider.next_run_at == nominal + jitter_offset(p.id, 3000)
    plain = sp.update_prompt(p.id, jitter_seconds=None)
    assert plain.jitter_seconds is None and plain.next_run_at == nominal
    # A new schedule keeps the jitter, checked against the new interval.
    again = sp.update_prompt(p.id, jitter_seconds=600)
    half = DAILY.replace("0 ", "30 ", 1)
    moved = sp.update_prompt(again.id, cron=half)
    assert (
        moved.next_run_at == preview_schedule(half, count=1, jitter_seconds=600, prompt_id=p.id)[0]
    )
    with pytest.raises(sp.InvalidSchedule, match="below the cron schedule's shortest interval"):
        sp.update_prompt(p.id, cron="*/5 * * * *")
    assert sp.get_prompt(p.id) == moved  # refused: nothing written


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"cron": "*/5 * * * *", "jitter_seconds": 300}, r"shortest interval \(300 s"),
        ({"cron": "0 9 * * 1,2", "jitter_seconds": 86400}, r"shortest interval \(86400 s"),
        ({"delay": 600, "jitter_seconds": 90000}, "at most 86400"),
        ({"delay": 600, "jitter_seconds": 0}, "jitter_seconds must be a number of seconds > 0"),
        ({"delay": 600, "jitter_seconds": -5}, "> 0"),
        ({"delay": 600, "jitter_seconds": float("nan")}, "> 0"),
        ({"delay": 600, "jitter_seconds": "60"}, "> 0"),
        ({"delay": 600, "jitter_seconds": True}, "> 0"),
    ],
)
def test_bad_jitter_is_refused_saying_what_is_accepted_and_writes_nothing(
    r: redis.Redis, kw: dict[str, Any], says: str
) -> None:
    with pytest.raises(sp.InvalidSchedule, match=says):
        sp.schedule_prompt("x", user_id="u", platform="tg", **kw)
    assert r.dbsize() == 0


def test_below_the_interval_is_accepted() -> None:
    assert preview_schedule("*/5 * * * *", count=1, jitter_seconds=299, prompt_id="a")
    with pytest.raises(sp.InvalidSchedule, match="together"):
        preview_schedule("*/5 * * * *", jitter_seconds=10)


def test_the_tool_and_the_cli_take_jitter(
    r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = ToolContext("ana", "tg", timezone="Europe/Berlin")
    out = json.loads(
        handle_tool_call(
            "schedule_prompt",
            {"prompt": "digest", "cron": DAILY, "jitter_seconds": 600},
            context=ctx,
        )
    )
    stored = sp.get_prompt(out["prompt_id"])
    assert stored is not None and stored.jitter_seconds == 600
    assert out["jitter_seconds"] == 600 and out["next_run_utc"].startswith(
        stored.next_run_at.strftime("%Y-%m-%dT%H:%M")  # type: ignore[union-attr]
    )
    bad = json.loads(
        handle_tool_call(
            "schedule_prompt", {"prompt": "d", "cron": DAILY, "jitter_seconds": 10**6}, context=ctx
        )
    )
    assert "shortest interval" in bad["error"]
    from scheduled_prompts.cli import main

    main(["add", "hi", "--user", "u", "--platform", "tg", "--delay", "600", "--jitter", "30",
          "--json"])  # fmt: skip
    shown = json.loads(capsys.readouterr().out)
    assert shown["jitter_seconds"] == 30
    assert from_iso(shown["next_run_at"]) - from_iso(shown["schedule_time"]) == jitter_offset(
        shown["id"], 30
    )


def test_a_schema_1_record_in_the_store_is_still_delivered(
    r: redis.Redis, memory_runner: MemoryRunner
) -> None:
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    p = sp.schedule_prompt("old", user_id="u", platform="tg", at=at)
    key = scope().keys.prompt(p.id)
    data = json.loads(r.get(key))  # type: ignore[arg-type]
    data["schema"] = 1  # as written before jitter existed
    r.set(key, json.dumps(data, separators=(",", ":")))
    result = engine.deliver(get_redis(), scope(), Delivery(p.id, to_ms(at)), now=at)
    assert result.outcome.value == "delivered" and len(memory_runner.calls) == 1


def test_the_console_lists_the_jittered_fire_times(r: redis.Redis) -> None:
    from scheduled_prompts.console.timing import next_fires

    p = sp.schedule_prompt("d", user_id="u", platform="tg", cron=DAILY, jitter_seconds=1800)
    assert next_fires(p, 3) == preview_schedule(DAILY, count=3, jitter_seconds=1800, prompt_id=p.id)


def test_the_load_chart_places_the_jittered_repeats(r: redis.Redis) -> None:
    from scheduled_prompts.console import load

    p = sp.schedule_prompt("q", user_id="u", platform="tg", cron="0 */6 * * *", jitter_seconds=3600)
    assert p.next_run_at is not None
    end = p.next_run_at + timedelta(hours=24)
    expected = preview_schedule("0 */6 * * *", count=6, jitter_seconds=3600, prompt_id=p.id)
    assert expected[0] == p.next_run_at  # the same rule: the first that fires after now
    assert list(load._repeats(p, end)) == [t for t in expected[1:] if t < end]


def test_the_next_run_is_the_first_occurrence_that_fires_after_now() -> None:
    from scheduled_prompts.settings import get_settings
    from scheduled_prompts.validation import build_from_spec

    offset = jitter_offset("hourly-1", 3000)
    assert offset > timedelta(seconds=60)
    hour = datetime(2026, 6, 1, 10, tzinfo=UTC)
    spec = {"prompt": "x", "user_id": "u", "platform": "tg", "cron": "0 * * * *",
            "jitter_seconds": 3000, "prompt_id": "hourly-1"}  # fmt: skip
    # Made after 10:00 but before 10:00 + offset: the 10:00 occurrence still fires.
    before, _ = build_from_spec(spec, hour + offset / 2, get_settings())
    assert before.next_run_at == hour + offset
    # Made after it fired: the next hour's.
    after, _ = build_from_spec(spec, hour + offset + timedelta(seconds=1), get_settings())
    assert after.next_run_at == hour + timedelta(hours=1) + offset
