"""The fast paths of bulk scheduling and delivery give exactly what the plain ones give:
ids, stored JSON, the CREATE script, and the streamed pipeline."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

import scheduled_prompts as sp
from scheduled_prompts import ids, store
from scheduled_prompts.connection import get_redis
from scheduled_prompts.keys import Keys
from scheduled_prompts.models import _COMPACT, SCHEMA_VERSION, Overlap, ScheduledPrompt

K = Keys("sp")
_STANDARD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def reference_id(value: int) -> str:
    """The id encoding by its definition: 128 bits as base32, Crockford's digits."""
    table = bytes.maketrans(_STANDARD, ids._CROCKFORD.encode())
    return base64.b32encode((value << 6).to_bytes(17, "big"))[:26].translate(table).decode()


@given(st.integers(0, 2**128 - 1))
def test_id_encoding_is_base32_of_the_128_bits(value: int) -> None:
    assert ids._encode([value]) == [reference_id(value)]


def test_bulk_ids_are_unique_and_sort_in_creation_order() -> None:
    (first,) = ids.new_prompt_ids(1)
    bulk = ids.new_prompt_ids(5_000)
    (last,) = ids.new_prompt_ids(1)
    made = [first, *bulk, last]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(len(i) == 26 and set(i) <= set(ids._CROCKFORD) for i in made)
    assert ids.new_prompt_ids(0) == []


def as_dict_json(record: ScheduledPrompt) -> str:
    """The stored form by its definition: the non-default fields as one compact object."""
    data: dict[str, Any] = {"schema": SCHEMA_VERSION}
    for name, field_value in record.__dict__.items():
        value = field_value
        if value is None or value == {"timezone": "UTC", "metadata": {}}.get(name, object()):
            continue
        if name in {"run_count", "failure_count", "trigger_count", "skipped_runs"} and value == 0:
            continue
        if name == "overlap" and value == "skip":
            continue
        if name == "version" and value == 1:
            continue
        if isinstance(value, datetime):
            value = round(value.timestamp() * 1000)
        data[name] = value.value if name in {"kind", "status", "overlap"} else value
    order = ["schema", *(f for f in ScheduledPrompt.__dataclass_fields__ if f in data)]
    return _COMPACT.encode({k: data[k] for k in order})


texts = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=60).filter(
    str.strip
)


@given(
    prompt=texts,
    channel=st.none() | texts,
    meta=st.dictionaries(texts, st.integers() | texts | st.booleans(), max_size=3),
    grace=st.none() | st.floats(0, 1e6),
    runs=st.integers(0, 5),
    overlap=st.sampled_from(list(Overlap)),
)
def test_to_json_writes_the_fields_the_dict_encoder_writes_in_its_order(
    *,
    prompt: str,
    channel: str | None,
    meta: dict[str, Any],
    grace: float | None,
    runs: int,
    overlap: Overlap,
) -> None:
    now = datetime(2026, 3, 8, 7, 0, 0, 123_000, tzinfo=UTC)
    record = ScheduledPrompt(
        id="01j0000000000000000000000a",
        prompt=prompt,
        user_id="u\u00e9",
        platform="tg",
        channel_id=channel,
        kind="cron",
        status="active",
        created_at=now,
        updated_at=now,
        cron_expression="0 9 * * *",
        timezone="Europe/Paris",
        next_run_at=now + timedelta(days=1),
        run_count=runs,
        skipped_runs=runs,
        overlap=overlap,
        misfire_grace_seconds=grace,
        metadata=meta,
    )
    # The same object, fields in the same order (a float may be spelt another way: 1e-07
    # and 1e-7 are the same number).
    written, expected = json.loads(record.to_json()), json.loads(as_dict_json(record))
    assert list(written.items()) == list(expected.items())
    assert ScheduledPrompt.from_json(record.to_json()) == record


def test_create_refuses_an_existing_id_and_writes_nothing(redis_url: str) -> None:
    (existing,) = sp.schedule_many([{"prompt": "a", "user_id": "u1", "platform": "tg",
                                      "delay": 3600, "prompt_id": "taken"}])  # fmt: skip
    client = get_redis()
    before = sorted(client.keys("*"))
    fresh = existing.replace(id="free-one", prompt="b")
    clash = existing.replace(prompt="c")
    result = store.create_op(K, [fresh, clash], None).run(client)
    assert result[0] == "exists" and int(result[1]) == 2
    assert sorted(client.keys("*")) == before


def test_create_counts_quota_per_user_within_one_call(redis_url: str) -> None:
    client = get_redis()
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    base = sp.schedule_prompt("seed", user_id="u1", platform="tg", at=now)
    three = [base.replace(id=f"q{i}") for i in range(3)]
    assert store.create_op(K, three, 3).run(client) == ["quota", "u1"]
    assert store.create_op(K, three[:2], 3).run(client) == ["ok"]
    assert client.hget(K.open_counts, "u1") == "3"
    assert set(client.zrange(K.user("u1"), 0, -1)) == {base.id, "q0", "q1"}
    assert client.zscore(K.due, "q1") == client.zscore(K.due, base.id)


def test_create_refuses_records_that_are_not_live() -> None:
    now = datetime.now(UTC)
    done = ScheduledPrompt(id="x", prompt="p", user_id="u", platform="tg", kind="once",
                           status="executed", created_at=now, updated_at=now,
                           schedule_time=now)  # fmt: skip
    with pytest.raises(ValueError, match="live records only"):
        store.create_op(K, [done], None)


def test_stream_returns_replies_in_order_and_survives_an_error(redis_url: str) -> None:
    client = get_redis()
    client.script_flush()  # the stream loads what it needs
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    base = sp.schedule_prompt("seed", user_id="u2", platform="tg", at=now)
    ops = (store.create_op(K, [base.replace(id=f"s{i}")], None) for i in range(5))
    assert store.Stream(ops).run(client) == [["ok"]] * 5
    bad = store.Eval(store.LOCK, ["sp:test-lock"], ["token", "not-a-number"])  # Lua error
    good = store.create_op(K, [base.replace(id="after-error")], None)
    with pytest.raises(redis.ResponseError):
        store.Stream(iter([bad, good])).run(client)
    # The connection that met the error was dropped, not reused with unread replies.
    assert client.ping() and client.zcard(K.ids) == 7  # the call after the error ran
    assert json.loads(client.get(K.prompt("s4")))["prompt"] == "seed"  # type: ignore[arg-type]
