"""The LLM tools against a real redis-server: schemas in three formats, a handler that
never raises, identity taken only from the ToolContext, and the guardrails of settings."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import scheduled_prompts as sp
from scheduled_prompts._time import from_iso, to_ms, utcnow
from scheduled_prompts.keys import Keys
from scheduled_prompts.tools import (
    ToolContext,
    handle_tool_call,
    handle_tool_call_async,
    tool_definitions,
)

K = Keys("sp")
TOOL_NAMES = [
    "schedule_prompt",
    "list_scheduled_prompts",
    "cancel_scheduled_prompt",
    "pause_scheduled_prompt",
    "resume_scheduled_prompt",
    "cleanup_expired_prompts",
]
FORMATS = ["openai", "anthropic", "mcp"]
ANA = ToolContext("ana", "telegram", channel_id="chat-1", timezone="America/New_York")
BOB = ToolContext("bob", "telegram")
ANA_ON_SLACK = ToolContext("ana", "slack")
ADMIN = ToolContext("root", "ops", is_admin=True)


def call(name: object, arguments: object = None, context: object = ANA) -> dict[str, Any]:
    """Run a tool call; the result is always a JSON object string."""
    out = handle_tool_call(name, arguments, context=context)
    assert isinstance(out, str)
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


def ok(name: str, arguments: object = None, context: object = ANA) -> dict[str, Any]:
    result = call(name, arguments, context)
    assert result.get("success") is True, result
    return result


def error(name: object, arguments: object = None, context: object = ANA) -> str:
    result = call(name, arguments, context)
    assert set(result) == {"error"}, result
    assert isinstance(result["error"], str) and result["error"]
    return str(result["error"])


def remind(context: ToolContext = ANA, delay: float = 1200, text: str = "call Ana") -> str:
    """Schedule a one-time prompt through the tool; returns its prompt_id."""
    result = ok("schedule_prompt", {"prompt": text, "delay_seconds": delay}, context)
    return str(result["prompt_id"])


def stored(prompt_id: str) -> sp.ScheduledPrompt:
    """The stored record (through the sync API), which must exist."""
    record = sp.get_prompt(prompt_id)
    assert record is not None, f"no record {prompt_id!r}"
    return record


def schemas(format: str = "openai", **kw: Any) -> dict[str, dict[str, Any]]:
    """Tool name -> (description, JSON Schema of its arguments), whatever the format."""
    out = {}
    for entry in tool_definitions(format, **kw):  # type: ignore[arg-type]
        tool = entry["function"] if format == "openai" else entry
        schema = tool.get("parameters") or tool.get("input_schema") or tool.get("inputSchema")
        out[tool["name"]] = {"description": tool["description"], "schema": schema}
    return out


def iso(instant: datetime, zone: str = "Europe/Berlin") -> str:
    return instant.astimezone(ZoneInfo(zone)).isoformat(timespec="seconds")


# --- definitions ----------------------------------------------------------------------


def test_openai_format_wraps_each_tool_as_a_function() -> None:
    tools = tool_definitions("openai")
    for tool in tools:
        assert set(tool) == {"type", "function"} and tool["type"] == "function"
        assert set(tool["function"]) == {"name", "description", "parameters"}
    assert [t["function"]["name"] for t in tools] == TOOL_NAMES


def test_anthropic_format_has_name_description_input_schema() -> None:
    tools = tool_definitions("anthropic")
    assert all(set(t) == {"name", "description", "input_schema"} for t in tools)
    assert [t["name"] for t in tools] == TOOL_NAMES


def test_mcp_format_has_name_description_input_schema_camel_case() -> None:
    tools = tool_definitions("mcp")
    assert all(set(t) == {"name", "description", "inputSchema"} for t in tools)
    assert [t["name"] for t in tools] == TOOL_NAMES


def test_the_three_formats_carry_the_same_descriptions_and_schemas() -> None:
    assert schemas("openai") == schemas("anthropic") == schemas("mcp")


@pytest.mark.parametrize("format", FORMATS)
def test_every_schema_is_a_valid_closed_object_schema(format: str) -> None:
    for name, tool in schemas(format).items():
        schema = tool["schema"]
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object", name
        assert schema["additionalProperties"] is False, name
        assert set(schema.get("required", [])) <= set(schema["properties"]), name
        for prop, spec in schema["properties"].items():
            assert spec.get("description"), f"{name}.{prop} has no description"
        json.dumps(schema)  # plain JSON, as every SDK sends it


def test_arguments_named_in_spec_are_the_schema_properties() -> None:
    tools = schemas()
    props = {name: set(t["schema"]["properties"]) for name, t in tools.items()}
    assert props["schedule_prompt"] == {
        "prompt",
        "at",
        "delay_seconds",
        "cron",
        "timezone",
        "end_at",
        "max_runs",
        "jitter_seconds",  # beyond SPEC §6: the delivery-policies issue adds both
        "overlap",
    }
    assert tools["schedule_prompt"]["schema"]["required"] == ["prompt"]
    assert props["list_scheduled_prompts"] == {"status"}
    for name in ("cancel_scheduled_prompt", "pause_scheduled_prompt", "resume_scheduled_prompt"):
        assert props[name] == {"prompt_id"}
        assert tools[name]["schema"]["required"] == ["prompt_id"]
    assert props["cleanup_expired_prompts"] == {"days_to_keep"}
    statuses = tools["list_scheduled_prompts"]["schema"]["properties"]["status"]["enum"]
    assert set(statuses) == {s.value for s in sp.Status}


def test_descriptions_give_each_format_with_working_examples() -> None:
    props = schemas()["schedule_prompt"]["schema"]["properties"]
    at = props["at"]["description"]
    assert "ISO-8601" in at
    examples = re.findall(r"'(\d{4}-[^']+)'", at)
    assert examples and all(datetime.fromisoformat(e).utcoffset() is not None for e in examples)
    assert any(re.search(r"[+-]\d\d:\d\d$", e) for e in examples)  # an explicit offset
    delay = props["delay_seconds"]["description"]
    assert "seconds" in delay and re.search(r"\b1200\b.*20 minutes", delay)
    cron = props["cron"]["description"]
    assert "5-field" in cron
    cron_examples = re.findall(r"'([0-9*/,\- ]+)'", cron)
    assert len(cron_examples) >= 2
    for expr in cron_examples:
        assert len(expr.split()) == 5 and sp.preview_schedule(expr, count=1)
    timezone = props["timezone"]["description"]
    assert "IANA" in timezone
    zones = re.findall(r"'([A-Z][a-z]+/[A-Za-z_]+)'", timezone)
    assert zones and all(ZoneInfo(z) for z in zones)
    assert "ISO-8601" in props["end_at"]["description"]


def test_every_description_says_what_the_result_contains() -> None:
    tools = schemas()
    for name, tool in tools.items():
        assert "Returns" in tool["description"], name
    assert "prompt_id" in tools["schedule_prompt"]["description"]
    assert "timezone" in tools["schedule_prompt"]["description"]
    assert "id" in tools["list_scheduled_prompts"]["description"]
    assert "status" in tools["cancel_scheduled_prompt"]["description"]
    assert "deleted" in tools["cleanup_expired_prompts"]["description"]


@pytest.mark.parametrize("format", FORMATS)
def test_include_admin_false_leaves_out_cleanup(format: str) -> None:
    assert list(schemas(format, include_admin=False)) == TOOL_NAMES[:-1]
    assert list(schemas(format, include_admin=True)) == TOOL_NAMES


@pytest.mark.parametrize("bad", ["gemini", "OpenAI", "", None])
def test_unknown_format_raises_value_error(bad: Any) -> None:
    with pytest.raises(ValueError, match="openai"):
        tool_definitions(bad)


def test_schemas_follow_the_tool_settings(redis_url: str) -> None:
    sp.configure(
        redis_url=redis_url,
        tool_max_prompt_chars=50,
        tool_min_cron_interval_seconds=600,
        tool_max_days_ahead=10,
    )
    props = schemas()["schedule_prompt"]["schema"]["properties"]
    assert props["prompt"]["maxLength"] == 50
    assert "10 minutes" in props["cron"]["description"]
    assert props["delay_seconds"]["maximum"] == 10 * 86400


def test_description_examples_are_accepted_by_the_handler(r: redis.Redis) -> None:
    props = schemas()["schedule_prompt"]["schema"]["properties"]
    expr = re.findall(r"'([0-9*/,\- ]+)'", props["cron"]["description"])[0]
    zone = re.findall(r"'([A-Z][a-z]+/[A-Za-z_]+)'", props["timezone"]["description"])[0]
    args = {"prompt": "Summarise my unread email", "cron": expr, "timezone": zone}
    jsonschema.validate(args, schemas()["schedule_prompt"]["schema"])
    result = ok("schedule_prompt", args)
    assert stored(result["prompt_id"]).cron_expression == expr


# --- arguments in every form, and a result that is always JSON ------------------------


@pytest.mark.parametrize(
    "form",
    [
        lambda a: a,
        json.dumps,
        lambda a: json.dumps(a).encode(),
        lambda a: json.dumps(a, ensure_ascii=False).encode("utf-8"),
    ],
    ids=["dict", "json-str", "json-bytes", "utf8-bytes"],
)
def test_arguments_as_dict_json_string_or_bytes(r: redis.Redis, form: Any) -> None:
    result = ok("schedule_prompt", form({"prompt": "lembra-me às 9 ☕", "delay_seconds": 600}))
    assert stored(result["prompt_id"]).prompt == "lembra-me às 9 ☕"


@pytest.mark.parametrize("empty", [None, "", "{}", {}])
def test_empty_arguments_mean_no_arguments(redis_url: str, empty: object) -> None:
    assert ok("list_scheduled_prompts", empty)["count"] == 0
    assert error("schedule_prompt", empty) == (
        "invalid arguments for schedule_prompt: 'prompt' is a required property"
    )


def test_empty_bytes_mean_no_arguments_like_the_empty_string(redis_url: str) -> None:
    # "" is accepted as {}; an empty body read from a socket is b"".
    assert ok("list_scheduled_prompts", b"")["count"] == 0


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
PLAUSIBLE = st.one_of(
    JSON_VALUES,
    st.sampled_from(
        [
            "remind me",
            "0 9 * * 1-5",
            "*/5 * * * *",
            "* * * * *",
            "0 0 9 * * *",
            "Europe/Berlin",
            "Mars/Base",
            "2031-01-01T09:00:00+01:00",
            "2020-01-01T00:00:00Z",
            "active",
            "no-such-id",
            600,
            2,
            -1,
            1e300,
        ]
    ),
)
PLAUSIBLE_ARGUMENTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "schedule_prompt": st.one_of(
        st.fixed_dictionaries(
            {"prompt": st.text(min_size=1, max_size=30), "delay_seconds": st.integers(1, 10**6)}
        ),
        st.fixed_dictionaries(
            {"prompt": st.just("daily"), "cron": st.sampled_from(["0 9 * * *", "*/5 * * * *"])},
            optional={
                "timezone": st.sampled_from(["Europe/Berlin", "UTC"]),
                "max_runs": st.integers(1, 9),
            },
        ),
    ),
    "list_scheduled_prompts": st.fixed_dictionaries(
        {}, optional={"status": st.sampled_from(["active", "scheduled", "paused"])}
    ),
    "cleanup_expired_prompts": st.fixed_dictionaries(
        {}, optional={"days_to_keep": st.integers(0, 60)}
    ),
}
ARGUMENT_DICTS = st.dictionaries(
    st.sampled_from(
        [
            "prompt",
            "at",
            "delay_seconds",
            "cron",
            "timezone",
            "end_at",
            "max_runs",
            "status",
            "prompt_id",
            "days_to_keep",
            "user_id",
        ]
    )
    | st.text(max_size=10),
    PLAUSIBLE,
    max_size=5,
)
GARBAGE_ARGUMENTS = st.one_of(
    st.none(),
    st.just(""),
    st.text(),
    st.binary(),
    st.integers(),
    st.floats(),
    st.lists(JSON_VALUES, max_size=4),
    ARGUMENT_DICTS,
    ARGUMENT_DICTS.map(json.dumps),
    ARGUMENT_DICTS.map(lambda d: json.dumps(d).encode()),
    st.integers(0, 200_000).map(lambda n: "x" * n),
    st.integers(0, 200_000).map(lambda n: json.dumps({"prompt": "y" * n, "delay_seconds": 60})),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
)
NAMES = st.one_of(
    st.sampled_from([*TOOL_NAMES, "Schedule_Prompt", "", "delete_everything"]),
    st.text(max_size=30),
    st.none(),
    st.integers(),
    st.binary(max_size=8),
    st.lists(st.text(max_size=5), max_size=2),
)
TOOL_CONTEXTS = st.builds(
    ToolContext,
    user_id=st.sampled_from(["ana", "bob", ""]),
    platform=st.sampled_from(["telegram", "slack"]),
    channel_id=st.sampled_from([None, "chat-1"]),
    timezone=st.sampled_from(["UTC", "America/New_York", "Not/AZone"]),
    is_admin=st.booleans(),
    in_scheduled_run=st.booleans(),
)
CONTEXTS = st.one_of(
    TOOL_CONTEXTS,
    st.none(),
    st.text(max_size=10),
    st.just({"user_id": "ana", "platform": "telegram"}),
    st.just(("ana", "telegram")),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_handle_tool_call_always_returns_a_json_object_and_never_raises(
    redis_url: str, data: st.DataObject
) -> None:
    # Half the calls are plausible (a real tool, a ToolContext, JSON-ish arguments) so
    # that valid calls reach Redis too; the rest is garbage in every position.
    if data.draw(st.booleans(), label="plausible"):
        name = data.draw(st.sampled_from(TOOL_NAMES), label="name")
        if name in PLAUSIBLE_ARGUMENTS:
            arguments: object = data.draw(PLAUSIBLE_ARGUMENTS[name], label="arguments")
        else:  # an id the store holds, whoever owns it, or none
            ids = [p.id for p in sp.list_prompts(limit=20).items]
            index = data.draw(st.integers(0, 20), label="prompt index")
            arguments = {"prompt_id": ids[index] if index < len(ids) else "no-such-id"}
        if data.draw(st.booleans(), label="as JSON"):
            arguments = json.dumps(arguments)
        context: object = data.draw(
            st.builds(
                ToolContext,
                user_id=st.sampled_from(["ana", "bob"]),
                platform=st.just("telegram"),
                timezone=st.sampled_from(["UTC", "Asia/Kolkata"]),
                is_admin=st.booleans(),
            ),
            label="context",
        )
    else:
        name = data.draw(NAMES, label="name")
        arguments = data.draw(GARBAGE_ARGUMENTS, label="arguments")
        context = data.draw(CONTEXTS, label="context")
    out = handle_tool_call(name, arguments, context=context)
    assert isinstance(out, str)
    result = json.loads(out)
    assert isinstance(result, dict)
    if "error" in result:
        assert set(result) == {"error"} and isinstance(result["error"], str)
        event("error")
    else:
        assert result["success"] is True
        event(f"success: {name}")
    if not isinstance(context, ToolContext):
        assert "ToolContext" in result["error"]


def test_huge_integer_tool_name_returns_an_error_instead_of_raising(redis_url: str) -> None:
    # repr() of an int with more than 4,300 digits raises ValueError (Python >= 3.11).
    assert "unknown tool" in error(10**5000, {})


def test_context_from_the_model_is_refused(r: redis.Redis) -> None:
    before = r.dbsize()
    message = error(
        "schedule_prompt",
        {"prompt": "x", "delay_seconds": 60},
        {"user_id": "ana", "platform": "telegram"},
    )
    assert "ToolContext" in message and r.dbsize() == before


# --- errors say what to change --------------------------------------------------------

ERRORS: list[tuple[str, object, list[str]]] = [
    ("six-field cron", {"prompt": "x", "cron": "0 0 9 * * *"}, ["5 fields", "got 6"]),
    ("three-field cron", {"prompt": "x", "cron": "0 9 *"}, ["5 fields", "got 3"]),
    (
        "unknown timezone",
        {"prompt": "x", "cron": "0 9 * * *", "timezone": "Berlin"},
        ["'Berlin'", "IANA", "Europe/Berlin"],
    ),
    ("delay as text", {"prompt": "x", "delay_seconds": "600"}, ["delay_seconds", "number"]),
    ("delay as bool", {"prompt": "x", "delay_seconds": True}, ["delay_seconds"]),
    ("negative delay", {"prompt": "x", "delay_seconds": -5}, ["delay_seconds"]),
    (
        "at and delay",
        {"prompt": "x", "at": "2031-01-01T09:00:00Z", "delay_seconds": 60},
        ["exactly one of", "at", "delay_seconds"],
    ),
    ("no schedule", {"prompt": "x"}, ["exactly one of", "got none"]),
    (
        "end_at without cron",
        {"prompt": "x", "delay_seconds": 60, "end_at": "2031-01-01T00:00:00Z"},
        ["end_at", "cron"],
    ),
    ("max_runs without cron", {"prompt": "x", "delay_seconds": 60, "max_runs": 3}, ["max_runs"]),
    ("max_runs zero", {"prompt": "x", "cron": "0 9 * * *", "max_runs": 0}, ["max_runs"]),
    ("at in the past", {"prompt": "x", "at": "2020-01-01T00:00:00Z"}, ["in the past"]),
    ("at not a date", {"prompt": "x", "at": "tomorrow at 9"}, ["ISO-8601"]),
    ("empty prompt", {"prompt": "", "delay_seconds": 60}, ["prompt"]),
    ("malformed JSON", '{"prompt": "x", ', ["JSON object"]),
    ("JSON array", '["prompt"]', ["JSON object", "list"]),
    ("list: bad status", {"status": "done"}, ["status", "'active'"]),
    ("cancel: no prompt_id", {}, ["prompt_id", "required"]),
    ("cancel: prompt_id not a string", {"prompt_id": 7}, ["prompt_id", "string"]),
    ("cleanup: days_to_keep text", {"days_to_keep": "7"}, ["days_to_keep", "integer"]),
]


@pytest.mark.parametrize(("case", "arguments", "needles"), ERRORS, ids=[e[0] for e in ERRORS])
def test_error_tells_the_model_what_to_change(
    r: redis.Redis, case: str, arguments: object, needles: list[str]
) -> None:
    tools = {
        "list": "list_scheduled_prompts",
        "cancel": "cancel_scheduled_prompt",
        "cleanup": "cleanup_expired_prompts",
    }
    name = tools.get(case.partition(":")[0], "schedule_prompt")
    context = ADMIN if name == "cleanup_expired_prompts" else ANA
    before = r.dbsize()
    message = error(name, arguments, context)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "internal error" not in message
    assert r.dbsize() == before


def test_unknown_tool_lists_the_available_tools(redis_url: str) -> None:
    message = error("delete_everything", {})
    assert "'delete_everything'" in message
    for name in TOOL_NAMES:
        assert name in message


def test_unencodable_prompt_is_explained_not_an_internal_error(r: redis.Redis) -> None:
    # Valid JSON: "\ud800" decodes to a lone surrogate, which UTF-8 cannot store.
    before = r.dbsize()
    message = error("schedule_prompt", '{"prompt": "call \\ud800 Ana", "delay_seconds": 600}')
    assert "internal error" not in message and "try again later" not in message
    assert "prompt" in message
    assert r.dbsize() == before


def test_at_beyond_year_9999_is_explained_not_an_internal_error(r: redis.Redis) -> None:
    before = r.dbsize()
    message = error("schedule_prompt", {"prompt": "x", "at": "9999-12-31T23:59:59-01:00"})
    assert "internal error" not in message and "try again later" not in message
    assert "too far ahead" in message or message.startswith("at ")
    assert r.dbsize() == before


# --- success results ------------------------------------------------------------------


def test_schedule_result_has_id_status_and_next_run_in_utc_and_users_offset(
    r: redis.Redis,
) -> None:
    before = utcnow()
    result = ok("schedule_prompt", {"prompt": "call Ana", "delay_seconds": 1200})
    after = utcnow()
    assert result["status"] == "scheduled" and result["prompt"] == "call Ana"
    assert result["next_run_utc"].endswith("Z")
    utc = from_iso(result["next_run_utc"])
    assert before + timedelta(seconds=1200) <= utc <= after + timedelta(seconds=1200)
    offset = ZoneInfo("America/New_York").utcoffset(utc.replace(tzinfo=None))
    hours = int(offset.total_seconds() // 3600)
    assert result["next_run_local"].endswith(f"{hours:+03d}:00")  # -05:00 or -04:00
    assert datetime.fromisoformat(result["next_run_local"]) == utc.replace(microsecond=0)
    local = utc.astimezone(ZoneInfo("America/New_York"))
    assert result["next_run"].startswith(local.strftime("%a %d %b %Y %H:%M"))
    assert local.tzname() in result["next_run"]  # EST or EDT
    assert result["next_run"].endswith("(in 20 min)")
    record = stored(result["prompt_id"])
    assert record.status is sp.Status.SCHEDULED and record.next_run_at == utc


def test_scheduled_record_belongs_to_the_context(r: redis.Redis) -> None:
    result = ok("schedule_prompt", {"prompt": "summarise my inbox", "cron": "0 9 * * 1-5"})
    record = stored(result["prompt_id"])
    assert (record.user_id, record.platform, record.channel_id) == ("ana", "telegram", "chat-1")
    assert record.timezone == "America/New_York"  # the context's timezone by default
    assert record.kind is sp.Kind.CRON and record.status is sp.Status.ACTIVE
    assert record.metadata == {"source": "tool"}
    assert result["status"] == "active"
    assert result["schedule"] == "cron '0 9 * * 1-5' in America/New_York"
    assert record.next_run_at is not None
    local = record.next_run_at.astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute, local.weekday() < 5) == (9, 0, True)
    assert [p.id for p in sp.list_prompts(user_id="ana", platform="telegram").items] == [record.id]


def test_cron_timezone_and_bounds_from_arguments(r: redis.Redis) -> None:
    end = utcnow() + timedelta(days=30)
    result = ok(
        "schedule_prompt",
        {
            "prompt": "water the plants",
            "cron": "30 18 * * *",
            "timezone": "Europe/Berlin",
            "end_at": iso(end),
            "max_runs": 5,
        },
    )
    record = stored(result["prompt_id"])
    assert record.timezone == "Europe/Berlin" and record.next_run_at is not None
    assert (record.max_runs, record.end_at) == (5, end.replace(microsecond=0))
    assert record.next_run_at.astimezone(ZoneInfo("Europe/Berlin")).hour == 18


def test_at_with_offset_is_stored_as_that_instant(r: redis.Redis) -> None:
    when = (utcnow() + timedelta(days=2)).replace(microsecond=0)
    result = ok("schedule_prompt", {"prompt": "x", "at": iso(when, "Asia/Kolkata")})
    assert from_iso(result["next_run_utc"]) == when
    assert stored(result["prompt_id"]).schedule_time == when


@pytest.mark.parametrize(
    "extra",
    [{"user_id": "bob"}, {"platform": "slack"}, {"channel_id": "other"}, {"prompt_id": "mine"}],
)
def test_identity_in_arguments_is_rejected_and_nothing_written(
    r: redis.Redis, extra: dict[str, str]
) -> None:
    before = r.dbsize()
    message = error("schedule_prompt", {"prompt": "x", "delay_seconds": 60, **extra})
    assert f"'{next(iter(extra))}' was unexpected" in message
    assert r.dbsize() == before
    assert sp.list_prompts().items == []


def test_list_pause_resume_cancel_results(r: redis.Redis) -> None:
    pid = ok("schedule_prompt", {"prompt": "stand-up", "cron": "0 9 * * 1-5"})["prompt_id"]
    listed = ok("list_scheduled_prompts", {})
    assert (listed["count"], listed["more"]) == (1, False)
    assert listed["prompts"][0]["prompt_id"] == pid
    assert listed["prompts"][0]["schedule"] == "cron '0 9 * * 1-5' in America/New_York"
    paused = ok("pause_scheduled_prompt", {"prompt_id": pid})
    assert paused["status"] == "paused" and "next_run_utc" not in paused
    assert ok("list_scheduled_prompts", {"status": "paused"})["count"] == 1
    assert ok("list_scheduled_prompts", {"status": "active"})["count"] == 0
    resumed = ok("resume_scheduled_prompt", {"prompt_id": pid})
    assert resumed["status"] == "active" and resumed["next_run_utc"].endswith("Z")
    cancelled = ok("cancel_scheduled_prompt", {"prompt_id": pid})
    assert cancelled["status"] == "cancelled" and cancelled["prompt_id"] == pid
    assert stored(pid).status is sp.Status.CANCELLED
    message = error("pause_scheduled_prompt", {"prompt_id": pid})
    assert "cancelled" in message


def test_list_shows_waiting_prompts_by_default_and_finished_on_request(r: redis.Redis) -> None:
    made = [
        sp.schedule_prompt(f"p{i}", user_id="ana", platform="telegram", delay=600)
        for i in range(55)
    ]
    for old in made[:10]:
        sp.cancel_prompt(old.id)
    listed = ok("list_scheduled_prompts", {})
    assert listed["count"] == 45 and listed["more"] is False
    shown = [p["prompt_id"] for p in listed["prompts"]]
    assert shown == [p.id for p in made[10:]]  # oldest first, the newest included
    cancelled = ok("list_scheduled_prompts", {"status": "cancelled"})
    assert [p["prompt_id"] for p in cancelled["prompts"]] == [p.id for p in made[:10]]
    for p in made[10:]:
        sp.cancel_prompt(p.id)
    many = [
        sp.schedule_prompt(f"q{i}", user_id="ana", platform="telegram", delay=600)
        for i in range(51)
    ]
    page = ok("list_scheduled_prompts", {})
    assert page["count"] == 50 and page["more"] is True
    assert page["prompts"][0]["prompt_id"] == many[0].id


# --- identity -------------------------------------------------------------------------


def test_other_users_see_nothing_and_change_nothing(r: redis.Redis) -> None:
    pid = remind(ANA)
    raw = r.get(K.prompt(pid))
    for other in (BOB, ANA_ON_SLACK):
        assert ok("list_scheduled_prompts", {}, other)["count"] == 0
        for verb in ("cancel", "pause", "resume"):
            message = error(f"{verb}_scheduled_prompt", {"prompt_id": pid}, other)
            assert "no scheduled prompt" in message
    assert r.get(K.prompt(pid)) == raw  # untouched, version included
    assert ok("list_scheduled_prompts", {}, ANA)["prompts"][0]["prompt_id"] == pid
    assert ok("pause_scheduled_prompt", {"prompt_id": pid}, ANA)["status"] == "paused"


def test_another_users_prompt_looks_exactly_like_no_prompt(r: redis.Redis) -> None:
    pid = remind(ANA)
    verbs = ["cancel_scheduled_prompt", "pause_scheduled_prompt", "resume_scheduled_prompt"]
    calls = [(verb, who) for verb in verbs for who in (BOB, ANA_ON_SLACK)]
    while_it_exists = [handle_tool_call(v, {"prompt_id": pid}, context=w) for v, w in calls]
    # The same id once no prompt has it: ana cancels it, an administrator deletes it.
    ok("cancel_scheduled_prompt", {"prompt_id": pid}, ANA)
    assert ok("cleanup_expired_prompts", {"days_to_keep": 0}, ADMIN)["deleted"] == 1
    assert sp.get_prompt(pid) is None
    once_gone = [handle_tool_call(v, {"prompt_id": pid}, context=w) for v, w in calls]
    assert [o.encode() for o in while_it_exists] == [o.encode() for o in once_gone]
    assert all(json.loads(o) == {"error": json.loads(once_gone[0])["error"]} for o in once_gone)


# --- guardrails -----------------------------------------------------------------------


def test_quota_refuses_the_extra_prompt_and_a_cancel_frees_a_slot(r: redis.Redis) -> None:
    sp.configure(redis_url=sp.get_settings().redis_url, tool_max_active_prompts=2)
    first = remind()
    second = ok("schedule_prompt", {"prompt": "weekly", "cron": "0 9 * * 1"})["prompt_id"]
    ok("pause_scheduled_prompt", {"prompt_id": second})  # paused still counts
    before = r.dbsize()
    state = r.get(K.prompt(first)), r.hgetall(K.open_counts)
    message = error("schedule_prompt", {"prompt": "third", "delay_seconds": 60})
    assert "2" in message and "cancel one" in message and "list_scheduled_prompts" in message
    assert r.dbsize() == before
    assert (r.get(K.prompt(first)), r.hgetall(K.open_counts)) == state
    assert remind(BOB)  # bob has his own quota
    ok("cancel_scheduled_prompt", {"prompt_id": first})
    assert remind(text="third")


def test_quota_refusal_is_actionable_from_the_same_context(r: redis.Redis) -> None:
    # The error tells the model to cancel one of the prompts list_scheduled_prompts
    # shows; that must be possible from the context that was refused. The quota counts
    # what that context's tools can see (user and platform), so the same user on another
    # platform, who could neither list nor cancel these, is not refused because of them.
    sp.configure(redis_url=sp.get_settings().redis_url, tool_max_active_prompts=2)
    mine = {remind(ANA), remind(ANA)}
    elsewhere = ok("schedule_prompt", {"prompt": "x", "delay_seconds": 60}, ANA_ON_SLACK)
    assert stored(elsewhere["prompt_id"]).platform == "slack"
    message = error("schedule_prompt", {"prompt": "x", "delay_seconds": 60}, ANA)
    assert "cancel one" in message and "list_scheduled_prompts" in message
    listed = ok("list_scheduled_prompts", {"status": "scheduled"}, ANA)
    assert {p["prompt_id"] for p in listed["prompts"]} == mine and listed["count"] == 2
    ok("cancel_scheduled_prompt", {"prompt_id": listed["prompts"][0]["prompt_id"]}, ANA)
    assert remind(ANA, text="fits now") not in mine


@pytest.mark.parametrize("expr", ["* * * * *", "0,1 9 * * *", "*/2 * * * *", "58,59 * * * *"])
def test_cron_more_often_than_the_minimum_interval_is_refused(r: redis.Redis, expr: str) -> None:
    before = r.dbsize()
    message = error("schedule_prompt", {"prompt": "x", "cron": expr})
    assert "300 s" in message and "*/5 * * * *" in message
    assert r.dbsize() == before


@pytest.mark.parametrize("expr", ["*/5 * * * *", "0,5 9 * * *", "0 * * * *", "@daily"])
def test_cron_at_the_minimum_interval_is_accepted(r: redis.Redis, expr: str) -> None:
    result = ok("schedule_prompt", {"prompt": "x", "cron": expr, "timezone": "UTC"})
    assert stored(result["prompt_id"]).cron_expression == expr


def test_minimum_cron_interval_follows_settings(r: redis.Redis) -> None:
    sp.configure(redis_url=sp.get_settings().redis_url, tool_min_cron_interval_seconds=3600)
    before = r.dbsize()
    assert "3600 s" in error("schedule_prompt", {"prompt": "x", "cron": "*/30 * * * *"})
    assert r.dbsize() == before
    ok("schedule_prompt", {"prompt": "x", "cron": "0 * * * *"})


def test_prompt_longer_than_the_tool_limit_is_refused(r: redis.Redis) -> None:
    sp.configure(redis_url=sp.get_settings().redis_url, tool_max_prompt_chars=50)
    before = r.dbsize()
    message = error("schedule_prompt", {"prompt": "x" * 51, "delay_seconds": 60})
    assert "prompt" in message and "too long" in message
    assert r.dbsize() == before
    assert stored(remind(text="y" * 50)).prompt == "y" * 50


def test_prompt_over_the_default_4000_chars_is_refused_saying_so(r: redis.Redis) -> None:
    before = r.dbsize()
    message = error("schedule_prompt", {"prompt": "x" * 4001, "delay_seconds": 60})
    assert r.dbsize() == before
    remind(text="x" * 4000)
    # The model must learn what was wrong and the limit, not only see its prompt echoed.
    assert "too long" in message, message[:80] + "..."
    assert "4000" in message or "4,000" in message


def test_one_time_prompt_beyond_366_days_is_refused(r: redis.Redis) -> None:
    before = r.dbsize()
    message = error("schedule_prompt", {"prompt": "x", "delay_seconds": 366 * 86400 + 60})
    assert "delay_seconds" in message and "maximum" in message
    far = utcnow() + timedelta(days=367)
    message = error("schedule_prompt", {"prompt": "x", "at": iso(far)})
    assert "too far ahead" in message and "366 days" in message
    assert r.dbsize() == before
    near = utcnow() + timedelta(days=365)
    assert ok("schedule_prompt", {"prompt": "x", "at": iso(near)})["status"] == "scheduled"
    assert remind(delay=365 * 86400)


def test_in_scheduled_run_cannot_schedule_but_can_list_and_cancel(r: redis.Redis) -> None:
    pid = remind(ANA)
    in_run = ToolContext("ana", "telegram", timezone="America/New_York", in_scheduled_run=True)
    before = r.dbsize()
    for args in (
        {"prompt": "again", "delay_seconds": 60},
        {"prompt": "again", "cron": "0 9 * * *"},
    ):
        message = error("schedule_prompt", args, in_run)
        assert "scheduled run" in message
    assert r.dbsize() == before
    assert ok("list_scheduled_prompts", {}, in_run)["prompts"][0]["prompt_id"] == pid
    assert ok("pause_scheduled_prompt", {"prompt_id": pid}, in_run)["status"] == "paused"
    assert ok("cancel_scheduled_prompt", {"prompt_id": pid}, in_run)["status"] == "cancelled"


def age(r: redis.Redis, prompt_id: str, days: int) -> None:
    """Move a terminal prompt's finish time ``days`` back (record and index)."""
    record = sp.get_prompt(prompt_id)
    assert record is not None
    aged = record.replace(updated_at=record.updated_at - timedelta(days=days))
    r.set(K.prompt(prompt_id), aged.to_json())
    r.zadd(K.finished, {prompt_id: to_ms(aged.updated_at)})


def test_cleanup_is_refused_for_users_and_deletes_for_admins(r: redis.Redis) -> None:
    old = remind()
    ok("cancel_scheduled_prompt", {"prompt_id": old})
    age(r, old, 40)
    recent = remind()
    ok("cancel_scheduled_prompt", {"prompt_id": recent})
    live = remind()
    before = r.dbsize()
    for user in (ANA, ToolContext("ana", "telegram", in_scheduled_run=True)):
        assert "administrators only" in error("cleanup_expired_prompts", {}, user)
    assert "cleanup_expired_prompts" in error("cleanup_expired_prompts", None, BOB)
    assert r.dbsize() == before and sp.get_prompt(old) is not None
    result = ok("cleanup_expired_prompts", {}, ADMIN)  # default: keep 30 days
    assert (result["deleted"], result["days_kept"]) == (1, 30)
    assert sp.get_prompt(old) is None
    assert sp.get_prompt(recent) is not None and sp.get_prompt(live) is not None
    assert ok("cleanup_expired_prompts", {"days_to_keep": 0}, ADMIN)["deleted"] == 1
    assert sp.get_prompt(live) is not None


# --- async ----------------------------------------------------------------------------

IN_RUN = dataclasses.replace(ANA, in_scheduled_run=True)
SAME_EITHER_WAY: list[tuple[object, object, object]] = [
    ("schedule_prompt", {"prompt": "x", "cron": "* * * * *"}, ANA),
    ("schedule_prompt", {"prompt": "x", "cron": "0 0 9 * * *"}, ANA),
    ("schedule_prompt", {"prompt": "x", "delay_seconds": "9"}, ANA),
    ("schedule_prompt", '{"prompt": ', ANA),
    ("schedule_prompt", {"prompt": "x", "delay_seconds": 9}, IN_RUN),
    ("schedule_prompt", {"prompt": "x", "delay_seconds": 9}, None),
    ("nope", {}, ANA),
    ("cleanup_expired_prompts", {}, ANA),
    ("cancel_scheduled_prompt", {"prompt_id": "no-such-id"}, ANA),
    ("list_scheduled_prompts", {"status": "paused"}, ANA),
    ("list_scheduled_prompts", None, ANA),
    ("list_scheduled_prompts", b"{}", BOB),
]


def without_countdown(out: str) -> Any:
    """A result without its relative '(in 20 min)' text, which depends on the clock."""
    return json.loads(re.sub(r" \(in [^)]*\)", "", out))


def in_loop(*calls: tuple[object, object, object]) -> list[str]:
    """``handle_tool_call_async`` for each call, in order, inside one asyncio.run."""

    async def main() -> list[str]:
        return [await handle_tool_call_async(n, a, context=c) for n, a, c in calls]

    return asyncio.run(main())


def test_async_handler_gives_the_same_results_as_the_sync_one(r: redis.Redis) -> None:
    remind(ANA)
    paused = remind(ANA, text="paused one")
    ok("pause_scheduled_prompt", {"prompt_id": paused})
    sync = [handle_tool_call(n, a, context=c) for n, a, c in SAME_EITHER_WAY]
    before = r.dbsize()
    got = in_loop(*SAME_EITHER_WAY)
    assert [without_countdown(o) for o in got] == [without_countdown(o) for o in sync]
    assert r.dbsize() == before


def test_async_handler_writes_what_the_sync_handler_reads(r: redis.Redis) -> None:
    args = {"prompt": "from the loop", "delay_seconds": 600}
    (out,) = in_loop(("schedule_prompt", args, ANA))
    made = json.loads(out)
    assert made["success"] is True and made["next_run_utc"].endswith("Z")
    assert set(made) == set(ok("schedule_prompt", args))
    record = stored(made["prompt_id"])
    assert (record.user_id, record.platform) == ("ana", "telegram")
    listed = ok("list_scheduled_prompts", {})
    assert made["prompt_id"] in {p["prompt_id"] for p in listed["prompts"]}
    pid = {"prompt_id": made["prompt_id"]}
    outs = in_loop(
        ("pause_scheduled_prompt", pid, ANA),
        ("pause_scheduled_prompt", pid, BOB),
        ("resume_scheduled_prompt", pid, ANA),
        ("cancel_scheduled_prompt", pid, ANA),
    )
    statuses = [json.loads(o).get("status") for o in outs]
    assert statuses == ["paused", None, "scheduled", "cancelled"]
    assert outs[1] == handle_tool_call("pause_scheduled_prompt", pid, context=BOB)
    assert stored(made["prompt_id"]).status is sp.Status.CANCELLED
