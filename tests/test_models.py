"""The record: field set, statuses, validation on construction, and the stored JSON form."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduled_prompts._time import truncate_ms
from scheduled_prompts.models import Kind, RecordError, ScheduledPrompt, Status

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2026, 3, 8, 7, 0, tzinfo=UTC)

SPEC_FIELDS = [
    "id",
    "prompt",
    "user_id",
    "platform",
    "channel_id",
    "kind",
    "schedule_time",
    "cron_expression",
    "timezone",
    "status",
    "created_at",
    "updated_at",
    "next_run_at",
    "last_execution",
    "run_count",
    "max_runs",
    "start_at",
    "end_at",
    "misfire_grace_seconds",
    "last_error",
    "failure_count",
    "metadata",
    "version",
]
# Fields beyond SPEC §2 (documented in docs/design.md).
EXTRA_FIELDS = ["trigger_count", "jitter_seconds", "overlap", "skipped_runs"]

DATETIME_FIELDS = [
    "schedule_time",
    "created_at",
    "updated_at",
    "next_run_at",
    "last_execution",
    "start_at",
    "end_at",
]


def once(**changes: Any) -> ScheduledPrompt:
    fields: dict[str, Any] = {
        "id": "p-once",
        "prompt": "In 20 minutes, remind me to call Ana",
        "user_id": "u1",
        "platform": "telegram",
        "channel_id": "chat-42",
        "kind": "once",
        "status": "scheduled",
        "created_at": T0,
        "updated_at": T0,
        "schedule_time": T1,
        "next_run_at": T1,
        "timezone": "Europe/Berlin",
        "misfire_grace_seconds": 30.0,
        "metadata": {"source": "agent", "tags": ["call", "Ana"]},
    }
    fields.update(changes)
    return ScheduledPrompt(**fields)


def cron(**changes: Any) -> ScheduledPrompt:
    fields: dict[str, Any] = {
        "id": "p-cron",
        "prompt": "Fasse meinen Posteingang zusammen — täglich ☕",
        "user_id": "u2",
        "platform": "slack",
        "kind": "cron",
        "status": "active",
        "created_at": T0,
        "updated_at": T0 + timedelta(days=3),
        "cron_expression": "0 9 * * 1-5",
        "timezone": "Europe/Berlin",
        "next_run_at": T1,
        "last_execution": T1 - timedelta(days=1),
        "run_count": 3,
        "max_runs": 10,
        "start_at": T0,
        "end_at": T0 + timedelta(days=90),
        "last_error": "runner timed out",
        "failure_count": 1,
        "metadata": {
            "langue": "français",
            "emoji": "🗓️",
            "nested": {"list": [1, 2.5, None, True, {"deep": "日本語"}], "empty": {}},
        },
        "version": 4,
    }
    fields.update(changes)
    return ScheduledPrompt(**fields)


# --- shape -------------------------------------------------------------------------------


def test_record_has_exactly_the_spec_fields_plus_documented_extras() -> None:
    names = [f.name for f in dataclasses.fields(ScheduledPrompt)]
    assert sorted(names) == sorted(SPEC_FIELDS + EXTRA_FIELDS)


def test_assigning_a_field_raises_frozen_instance_error() -> None:
    prompt = once()
    with pytest.raises(dataclasses.FrozenInstanceError):
        prompt.status = Status.CANCELLED  # type: ignore[misc]
    assert prompt.status is Status.SCHEDULED


def test_replace_returns_a_new_record_and_leaves_the_original_unchanged() -> None:
    prompt = once()
    changed = prompt.replace(status=Status.CANCELLED, next_run_at=None, version=2)
    assert changed.status is Status.CANCELLED
    assert changed.version == 2
    assert prompt.status is Status.SCHEDULED
    assert prompt.version == 1


def test_replace_validates_like_construction() -> None:
    with pytest.raises(ValueError, match="never 'active'"):
        once().replace(status="active")


def test_kind_and_status_strings_become_enums() -> None:
    prompt = once()
    assert prompt.kind is Kind.ONCE
    assert prompt.status is Status.SCHEDULED


# --- statuses ----------------------------------------------------------------------------


def test_status_values_are_the_six_spec_statuses() -> None:
    assert {s.value for s in Status} == {
        "scheduled",
        "active",
        "paused",
        "executed",
        "cancelled",
        "failed",
    }


@pytest.mark.parametrize(
    ("status", "live", "open_", "terminal"),
    [
        (Status.SCHEDULED, True, True, False),
        (Status.ACTIVE, True, True, False),
        (Status.PAUSED, False, True, False),
        (Status.EXECUTED, False, False, True),
        (Status.CANCELLED, False, False, True),
        (Status.FAILED, False, False, True),
    ],
)
def test_status_partitions_live_open_terminal(
    status: Status, live: bool, open_: bool, terminal: bool
) -> None:
    assert status.is_live is live
    assert status.is_open is open_
    assert status.is_terminal is terminal


def test_live_statuses_are_scheduled_and_active_and_terminal_are_the_rest_but_paused() -> None:
    assert {s for s in Status if s.is_live} == {Status.SCHEDULED, Status.ACTIVE}
    assert {s for s in Status if s.is_open} == {Status.SCHEDULED, Status.ACTIVE, Status.PAUSED}
    assert {s for s in Status if s.is_terminal} == {
        Status.EXECUTED,
        Status.CANCELLED,
        Status.FAILED,
    }


def test_record_is_live_follows_its_status() -> None:
    assert once().is_live
    assert not once(status="paused").is_live
    assert not cron(status="cancelled", next_run_at=None).is_live


# --- validation on construction ----------------------------------------------------------


@pytest.mark.parametrize("name", DATETIME_FIELDS)
def test_construction_rejects_a_naive_datetime(name: str) -> None:
    naive = datetime(2026, 3, 8, 7, 0)
    make = once if name == "schedule_time" else cron
    with pytest.raises(ValueError, match=f"{name} must be an aware datetime"):
        make(**{name: naive})


def test_construction_rejects_a_string_where_a_datetime_belongs() -> None:
    with pytest.raises(ValueError, match="created_at must be an aware datetime"):
        once(created_at="2026-03-01T12:00:00Z")


def test_once_prompt_without_schedule_time_is_rejected() -> None:
    with pytest.raises(ValueError, match="schedule_time"):
        once(schedule_time=None)


def test_once_prompt_with_a_cron_expression_is_rejected() -> None:
    with pytest.raises(ValueError, match="no cron_expression"):
        once(cron_expression="0 9 * * *")


def test_cron_prompt_without_cron_expression_is_rejected() -> None:
    with pytest.raises(ValueError, match="cron_expression"):
        cron(cron_expression=None)


def test_cron_prompt_with_a_schedule_time_is_rejected() -> None:
    with pytest.raises(ValueError, match="no schedule_time"):
        cron(schedule_time=T1)


def test_once_prompt_with_status_active_is_rejected() -> None:
    with pytest.raises(ValueError, match="never 'active'"):
        once(status="active")


def test_cron_prompt_with_status_scheduled_is_rejected() -> None:
    with pytest.raises(ValueError, match="never 'scheduled'"):
        cron(status="scheduled")


@pytest.mark.parametrize(("make", "status"), [(once, "scheduled"), (cron, "active")])
def test_live_prompt_without_next_run_at_is_rejected(make: Any, status: str) -> None:
    with pytest.raises(ValueError, match="needs next_run_at"):
        make(status=status, next_run_at=None)


@pytest.mark.parametrize("status", ["paused", "executed", "cancelled", "failed"])
def test_prompt_that_is_not_live_may_have_no_next_run_at(status: str) -> None:
    assert once(status=status, next_run_at=None).next_run_at is None


def test_negative_run_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="run_count"):
        cron(run_count=-1)


def test_negative_failure_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="failure_count"):
        cron(failure_count=-1)


def test_version_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="version"):
        cron(version=0)


def test_unknown_kind_or_status_is_rejected() -> None:
    with pytest.raises(ValueError):
        once(kind="weekly")
    with pytest.raises(ValueError):
        once(status="sleeping")


@pytest.mark.parametrize(
    "tz",
    [ZoneInfo("Europe/Berlin"), timezone(timedelta(hours=5, minutes=30)), ZoneInfo("UTC")],
    ids=["berlin", "plus-0530", "zoneinfo-utc"],
)
def test_non_utc_aware_datetimes_are_converted_to_utc(tz: Any) -> None:
    local = datetime(2026, 3, 8, 8, 0, tzinfo=tz)
    prompt = cron(
        created_at=local, updated_at=local, next_run_at=local, start_at=local, end_at=local
    )
    for name in ("created_at", "updated_at", "next_run_at", "start_at", "end_at"):
        value = getattr(prompt, name)
        assert value.tzinfo is UTC, name
        assert value == local  # same instant
    assert prompt.next_run_at == local.astimezone(UTC)


def test_berlin_morning_is_stored_as_the_utc_instant() -> None:
    local = datetime(2026, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # CEST, UTC+2
    prompt = once(schedule_time=local, next_run_at=local)
    assert prompt.schedule_time == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
    assert prompt.schedule_time is not None
    assert prompt.schedule_time.tzinfo is UTC


# --- JSON form -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [once, cron], ids=["once", "cron"])
def test_json_round_trip_gives_an_equal_record(make: Any) -> None:
    prompt = make()
    assert ScheduledPrompt.from_json(prompt.to_json()) == prompt


@pytest.mark.parametrize("make", [once, cron], ids=["once", "cron"])
def test_json_round_trip_from_utf8_bytes_gives_an_equal_record(make: Any) -> None:
    prompt = make()
    assert ScheduledPrompt.from_json(prompt.to_json().encode("utf-8")) == prompt


@pytest.mark.parametrize(
    "number", [-(2**63) - 1, 2**64, 2**70, -(10**30), 2**63 - 1, 2**64 - 1, -(2**63)]
)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_integers_of_any_size_in_metadata_read_back_exactly(number: int, as_bytes: bool) -> None:
    # orjson writes at most 64-bit integers and reads larger ones as floats: the record
    # must still read back with the very integer it was written with.
    prompt = once(metadata={"n": number, "list": [number]})
    text = prompt.to_json()
    back = ScheduledPrompt.from_json(text.encode() if as_bytes else text)
    assert back.metadata == {"n": number, "list": [number]}
    assert type(back.metadata["n"]) is int and back == prompt


def test_huge_floats_in_metadata_stay_floats() -> None:
    # A float that large sends the record to the stdlib reader too: it stays a float.
    prompt = once(metadata={"f": 1e30, "g": -9.3e18, "n": 2**70})
    back = ScheduledPrompt.from_json(prompt.to_json())
    assert back.metadata == {"f": 1e30, "g": -9.3e18, "n": 2**70}
    assert [type(back.metadata[k]) for k in ("f", "g", "n")] == [float, float, int]


def test_round_trip_keeps_unicode_and_nested_metadata() -> None:
    prompt = cron()
    back = ScheduledPrompt.from_json(prompt.to_json())
    assert back.prompt == "Fasse meinen Posteingang zusammen — täglich ☕"
    assert back.metadata["nested"]["list"][4] == {"deep": "日本語"}
    assert back.metadata["emoji"] == "🗓️"
    assert back.kind is Kind.CRON
    assert back.status is Status.ACTIVE


STORED_DEFAULTS = {
    "timezone": "UTC",
    "run_count": 0,
    "failure_count": 0,
    "trigger_count": 0,
    "overlap": "skip",
    "skipped_runs": 0,
    "metadata": {},
    "version": 1,
}


def test_to_json_leaves_out_none_and_default_fields_and_stores_epoch_ms() -> None:
    prompt = once()
    data = json.loads(prompt.to_json())
    for name in ("cron_expression", "last_execution", "max_runs", "start_at", "end_at"):
        assert name not in data
    assert "last_error" not in data
    assert None not in data.values()
    assert data["schedule_time"] == 1772953200000  # 2026-03-08T07:00:00Z in epoch ms
    at_default = {
        name for name, default in STORED_DEFAULTS.items() if getattr(prompt, name) == default
    }
    assert at_default == {
        "run_count",
        "failure_count",
        "trigger_count",
        "version",
        "overlap",
        "skipped_runs",
    }
    assert not at_default & set(data)
    assert ScheduledPrompt.from_json(prompt.to_json()) == prompt


def test_to_json_keeps_every_field_that_differs_from_its_default() -> None:
    prompt = cron()
    data = json.loads(prompt.to_json())
    expected = {
        f.name
        for f in dataclasses.fields(prompt)
        if getattr(prompt, f.name) is not None
        and not (f.name in STORED_DEFAULTS and getattr(prompt, f.name) == STORED_DEFAULTS[f.name])
    }
    assert set(data) == expected | {"schema"}


@pytest.mark.parametrize("make", [once, cron], ids=["once", "cron"])
def test_to_json_is_compact(make: Any) -> None:
    text = make().to_json()
    assert "\n" not in text
    assert text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)


def test_to_json_writes_unicode_as_is_not_escaped() -> None:
    text = cron().to_json()
    assert "täglich ☕" in text
    assert "\\u" not in text


@pytest.mark.parametrize("make", [once, cron], ids=["once", "cron"])
def test_to_dict_is_json_safe_and_carries_schema_2(make: Any) -> None:
    prompt = make()
    data = prompt.to_dict()
    assert data["schema"] == 2
    assert json.loads(json.dumps(data)) == data
    assert set(data) == set(SPEC_FIELDS + EXTRA_FIELDS) | {"schema"}
    assert type(data["kind"]) is str
    assert type(data["status"]) is str
    assert data["created_at"] == "2026-03-01T12:00:00.000Z"


def test_from_dict_inverts_to_dict() -> None:
    prompt = cron()
    assert ScheduledPrompt.from_dict(prompt.to_dict()) == prompt


def test_from_json_refuses_schema_3_and_names_the_version() -> None:
    data = json.loads(once().to_json())
    data["schema"] = 3
    with pytest.raises(RecordError, match=r"schema version 3 is not supported .* reads 1, 2"):
        ScheduledPrompt.from_json(json.dumps(data))


def test_a_schema_1_record_still_loads_as_one_without_jitter() -> None:
    data = json.loads(once().to_json())
    data["schema"] = 1
    loaded = ScheduledPrompt.from_json(json.dumps(data))
    assert loaded == once() and loaded.jitter_seconds is None
    assert json.loads(loaded.to_json())["schema"] == 2  # written back as version 2


def test_from_json_refuses_a_record_without_schema() -> None:
    data = json.loads(once().to_json())
    del data["schema"]
    with pytest.raises(RecordError, match="schema version None"):
        ScheduledPrompt.from_json(json.dumps(data))


def test_record_error_is_a_value_error() -> None:
    assert issubclass(RecordError, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "",
        "[1, 2, 3]",
        "[]",
        '"just a string"',
        "null",
        "42",
        b"\xff\xfe\x00garbage",
        once().to_json()[:-7],
    ],
    ids=["corrupt", "empty", "list", "empty-list", "string", "null", "number", "bytes", "cut"],
)
def test_from_json_refuses_unreadable_input_with_record_error(text: str | bytes) -> None:
    with pytest.raises(RecordError):
        ScheduledPrompt.from_json(text)


def test_from_json_refuses_a_record_missing_a_required_field() -> None:
    data = json.loads(once().to_json())
    del data["user_id"]
    with pytest.raises(RecordError, match="unreadable record"):
        ScheduledPrompt.from_json(json.dumps(data))


def test_from_json_refuses_a_stored_timestamp_without_offset() -> None:
    data = json.loads(once().to_json())
    data["created_at"] = "2026-03-01T12:00:00.000"
    with pytest.raises(RecordError):
        ScheduledPrompt.from_json(json.dumps(data))


def test_from_json_refuses_a_record_that_breaks_an_invariant() -> None:
    data = json.loads(once().to_json())
    data["status"] = "active"
    with pytest.raises(RecordError):
        ScheduledPrompt.from_json(json.dumps(data))


# --- property: any record survives the stored form ---------------------------------------

aware_utc_ms = st.datetimes(timezones=st.just(UTC)).map(truncate_ms)
prompt_text = st.text(min_size=1, max_size=300).filter(lambda s: s.strip() != "")
ids = st.text(min_size=1, max_size=64)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
metadata = st.dictionaries(st.text(max_size=16), json_values, max_size=6)


@st.composite
def records(draw: st.DrawFn) -> ScheduledPrompt:
    kind = draw(st.sampled_from(Kind))
    if kind is Kind.ONCE:
        status = draw(st.sampled_from([s for s in Status if s is not Status.ACTIVE]))
        schedule: dict[str, Any] = {"schedule_time": draw(aware_utc_ms)}
    else:
        status = draw(st.sampled_from([s for s in Status if s is not Status.SCHEDULED]))
        schedule = {
            "cron_expression": draw(st.sampled_from(["0 9 * * 1-5", "*/5 * * * *", "@daily"])),
            "start_at": draw(st.none() | aware_utc_ms),
            "end_at": draw(st.none() | aware_utc_ms),
            "max_runs": draw(st.none() | st.integers(min_value=1, max_value=10**6)),
        }
    next_run = draw(aware_utc_ms) if status.is_live else draw(st.none() | aware_utc_ms)
    return ScheduledPrompt(
        id=draw(ids),
        prompt=draw(prompt_text),
        user_id=draw(ids),
        platform=draw(st.sampled_from(["telegram", "slack", "web", "discord"])),
        channel_id=draw(st.none() | ids),
        kind=kind,
        status=status,
        created_at=draw(aware_utc_ms),
        updated_at=draw(aware_utc_ms),
        timezone=draw(st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"])),
        next_run_at=next_run,
        last_execution=draw(st.none() | aware_utc_ms),
        run_count=draw(st.integers(min_value=0, max_value=10**6)),
        misfire_grace_seconds=draw(
            st.none() | st.floats(min_value=0, max_value=86_400, allow_nan=False)
        ),
        last_error=draw(st.none() | st.text(max_size=100)),
        failure_count=draw(st.integers(min_value=0, max_value=100)),
        metadata=draw(metadata),
        version=draw(st.integers(min_value=1, max_value=10**6)),
        **schedule,
    )


@given(records())
def test_any_record_round_trips_through_json(prompt: ScheduledPrompt) -> None:
    text = prompt.to_json()
    assert ScheduledPrompt.from_json(text) == prompt
    assert ScheduledPrompt.from_json(text.encode("utf-8")) == prompt


@given(records())
def test_any_record_to_dict_is_json_safe(prompt: ScheduledPrompt) -> None:
    data = prompt.to_dict()
    assert data["schema"] == 2
    assert ScheduledPrompt.from_dict(json.loads(json.dumps(data))) == prompt
