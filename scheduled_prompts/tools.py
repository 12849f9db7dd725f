"""Tools an LLM agent calls to schedule prompts.

``tool_definitions(format)`` gives the schemas for OpenAI function calling, Anthropic
tool use or an MCP tool list; ``handle_tool_call(name, arguments, context=...)`` runs one
call and returns a JSON string — it never raises. Identity comes only from the
:class:`ToolContext` the application builds: a model cannot act for another user, see
their prompts, or learn that they exist.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import jsonschema

from . import retention, verbs
from ._time import to_iso, utcnow
from .aio import arun
from .api import run
from .connection import scope
from .errors import (
    ConflictingPrompt,
    InvalidSchedule,
    PromptNotFound,
    QuotaExceeded,
    StoreUnavailable,
)
from .models import Overlap, ScheduledPrompt, Status
from .plans import Plan
from .schedules import get_zone, parse_cron
from .settings import Settings, get_settings
from .validation import build_from_spec

log = logging.getLogger("scheduled_prompts.tools")

Format = Literal["openai", "anthropic", "mcp"]
MAX_ARGUMENT_BYTES = 100_000
LIST_LIMIT = 50


@dataclass(frozen=True)
class ToolContext:
    """Who is calling, from the application (never from the model).

    ``in_scheduled_run`` is true while the agent is answering a scheduled prompt (the
    runner payload has ``"in_scheduled_run": true``): it may not schedule more.
    """

    user_id: str
    platform: str
    channel_id: str | None = None
    timezone: str = "UTC"
    is_admin: bool = False
    in_scheduled_run: bool = False


def _schemas(settings: Settings) -> dict[str, tuple[str, dict[str, Any]]]:
    iso = (
        "ISO-8601 date-time with a UTC offset, e.g. '2026-03-08T09:30:00+01:00' or "
        "'2026-03-08T08:30:00Z'. Without an offset it is read in `timezone`."
    )
    minutes = int(settings.tool_min_cron_interval_seconds // 60)
    prompt_id = {
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "description": "The prompt_id returned by schedule_prompt or list_scheduled_prompts.",
    }
    return {
        "schedule_prompt": (
            "Schedule a prompt to come back to you (the assistant) later, on behalf of the "
            "current user, as if they had sent it then. Use it when the user asks to be "
            "reminded, or wants something done later or regularly ('in 20 minutes remind "
            "me…', 'every weekday at 9 summarise my inbox'). Give exactly one of `at` (one "
            "time), `delay_seconds` (one time, relative) or `cron` (repeating). Returns "
            "prompt_id, status and the next run in UTC and in the user's timezone.",
            {
                "type": "object",
                "properties": {
                    "prompt": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": settings.tool_max_prompt_chars,
                        "description": "What to do when it fires, written as the user's "
                        "request, e.g. 'Remind me to call Ana' or 'Summarise my unread "
                        "email'.",
                    },
                    "at": {"type": "string", "description": "Run once at this time: " + iso},
                    "delay_seconds": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": settings.tool_max_days_ahead * 86400,
                        "description": "Run once this many seconds from now, e.g. 1200 for "
                        "20 minutes, 86400 for tomorrow at this time.",
                    },
                    "cron": {
                        "type": "string",
                        "maxLength": 100,
                        "description": "Run repeatedly: a 5-field cron expression 'minute "
                        "hour day-of-month month day-of-week' evaluated in `timezone`, e.g. "
                        "'0 9 * * 1-5' (weekdays 09:00), '30 18 * * *' (daily 18:30), "
                        "'0 8 1 * *' (the 1st of each month 08:00). At most once every "
                        f"{minutes} minutes.",
                    },
                    "timezone": {
                        "type": "string",
                        "description": "IANA timezone name for `cron` and for an `at` "
                        "without offset, e.g. 'Europe/Berlin'. Default: the user's timezone.",
                    },
                    "end_at": {
                        "type": "string",
                        "description": "With `cron`: stop after this time. " + iso,
                    },
                    "max_runs": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "With `cron`: stop after this many runs.",
                    },
                    "jitter_seconds": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "description": "Optional: fire up to this many seconds after each "
                        "scheduled time, always the same offset for this prompt (spreads "
                        "load, e.g. 300 for a daily digest). Below the cron interval.",
                    },
                    "overlap": {
                        "type": "string",
                        "enum": [o.value for o in Overlap],
                        "description": "With `cron`, for long runs: what happens when a run "
                        "comes due while the previous one is still going on. 'skip' "
                        "(default) drops it, 'buffer_one' runs it once the previous ends, "
                        "'allow' runs it at the same time.",
                    },
                },
                "required": ["prompt"],
                "additionalProperties": False,
            },
        ),
        "list_scheduled_prompts": (
            "List the current user's scheduled prompts, to answer 'what have I scheduled?' "
            "or to find the prompt_id to cancel, pause or resume. By default lists the "
            f"prompts still waiting (scheduled, active, paused), oldest first, at most "
            f"{LIST_LIMIT}. Returns each prompt's id, text, schedule, status and next run, "
            "and `more: true` when there are more than listed.",
            {
                "type": "object",
                "properties": {
                    "status": {
                        "type": "string",
                        "enum": [s.value for s in Status],
                        "description": "Only prompts with this status: 'scheduled' or "
                        "'active' (waiting to run), 'paused', 'executed' (done), "
                        "'cancelled', 'failed'. Default: scheduled, active and paused.",
                    }
                },
                "additionalProperties": False,
            },
        ),
        "cancel_scheduled_prompt": (
            "Cancel one of the user's scheduled prompts for good; it will not run again. "
            "Returns the prompt's new status.",
            _id_schema(prompt_id),
        ),
        "pause_scheduled_prompt": (
            "Pause one of the user's scheduled prompts until resumed; it does not run "
            "meanwhile. Returns the prompt's new status.",
            _id_schema(prompt_id),
        ),
        "resume_scheduled_prompt": (
            "Resume a paused prompt. A repeating prompt continues from now (missed runs "
            "are not replayed). Returns the status and next run.",
            _id_schema(prompt_id),
        ),
        "cleanup_expired_prompts": (
            "Administrators only: delete executed, cancelled and failed prompts that "
            "finished more than `days_to_keep` days ago. Returns how many were deleted.",
            {
                "type": "object",
                "properties": {
                    "days_to_keep": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 36500,
                        "description": "Keep prompts that finished within this many days "
                        "(default 30).",
                    }
                },
                "additionalProperties": False,
            },
        ),
    }


def _id_schema(prompt_id: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"prompt_id": prompt_id},
        "required": ["prompt_id"],
        "additionalProperties": False,
    }


ADMIN_TOOLS = frozenset({"cleanup_expired_prompts"})


def tool_definitions(
    format: Format = "openai", *, include_admin: bool = True
) -> list[dict[str, Any]]:
    """The tools in the shape ``format`` expects.

    ``openai``: ``{"type": "function", "function": {name, description, parameters}}``;
    ``anthropic``: ``{name, description, input_schema}``; ``mcp``: ``{name, description,
    inputSchema}``. ``include_admin=False`` leaves out the administrators' tool.
    """
    tools = []
    for name, (description, schema) in _schemas(get_settings()).items():
        if name in ADMIN_TOOLS and not include_admin:
            continue
        if format == "openai":
            tools.append(
                {
                    "type": "function",
                    "function": {"name": name, "description": description, "parameters": schema},
                }
            )
        elif format == "anthropic":
            tools.append({"name": name, "description": description, "input_schema": schema})
        elif format == "mcp":
            tools.append({"name": name, "description": description, "inputSchema": schema})
        else:
            raise ValueError(f"format must be 'openai', 'anthropic' or 'mcp', got {format!r}")
    return tools


class ToolError(Exception):
    """A message for the model: what was wrong and how to fix it."""


def handle_tool_call(name: object, arguments: object, *, context: object) -> str:
    """Run one tool call; always returns JSON (``{"success": true, …}`` or ``{"error": …}``)."""
    try:
        plan = _plan(name, arguments, context)
        return _dumps(run(plan))
    except Exception as exc:
        return _dumps({"error": _explain(exc, name)})


async def handle_tool_call_async(name: object, arguments: object, *, context: object) -> str:
    """:func:`handle_tool_call` for an event loop (``redis.asyncio``; never blocks it)."""
    try:
        plan = _plan(name, arguments, context)
        return _dumps(await arun(plan))
    except Exception as exc:
        return _dumps({"error": _explain(exc, name)})


def _name(value: object) -> str:
    """A short, safe rendering of whatever the model sent as a tool name."""
    if isinstance(value, str):
        return repr(value[:80])
    return f"<{type(value).__name__}>"


def _dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False, default=str)


def _explain(exc: Exception, name: object) -> str:
    if isinstance(exc, ToolError | InvalidSchedule | ConflictingPrompt):
        return str(exc)
    if isinstance(exc, PromptNotFound):
        return f"{exc}; call list_scheduled_prompts to see the user's prompt ids"
    if isinstance(exc, QuotaExceeded):
        return (
            f"the user already has {exc.limit} scheduled prompts, the most allowed; "
            "cancel one (list_scheduled_prompts shows them) before adding another"
        )
    if isinstance(exc, StoreUnavailable):
        log.warning("tool %s: %s", _name(name), exc)
        return "the scheduler is unavailable right now; tell the user and try again later"
    log.exception("tool %s failed", _name(name))
    return f"internal error in tool {_name(name)}; try again later"


def _plan(name: object, arguments: object, context: object) -> Plan[dict[str, Any]]:
    """Check everything that needs no Redis, then return the plan that does the work."""
    if not isinstance(context, ToolContext):
        raise ToolError("the application passed no ToolContext; cannot act for anyone")
    settings = get_settings()
    schemas = _schemas(settings)
    if not isinstance(name, str) or name not in schemas:
        raise ToolError(f"unknown tool {_name(name)}; available tools: {', '.join(schemas)}")
    args = _arguments(arguments)
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schemas[name][1]).iter_errors(args)
    )
    if error is not None:
        raise ToolError(f"invalid arguments for {name}: {_schema_error(error)}")
    if name in ADMIN_TOOLS and not context.is_admin:
        raise ToolError(f"{name} is for administrators only")
    handler = _HANDLERS[name]
    return handler(args, context, settings)


def _schema_error(error: jsonschema.ValidationError) -> str:
    """Say what is wrong with an argument without echoing a (possibly huge) value."""
    where = "/".join(str(p) for p in error.absolute_path)
    field = f"`{where}`" if where else "the arguments"
    limit: Any = error.validator_value
    value: Any = error.instance
    kind = error.validator
    if kind == "maxLength":
        return f"{field} is too long: {len(value):,} characters, at most {limit:,}"
    if kind == "minLength":
        return f"{field} must not be empty"
    if kind == "type":
        return f"{field} must be of type {limit}, got {type(value).__name__}"
    if kind in ("maximum", "exclusiveMinimum", "minimum"):
        bound = {
            "maximum": "the maximum is",
            "exclusiveMinimum": "it must be more than",
            "minimum": "the minimum is",
        }
        return f"{field} is {value!r:.40}; {bound[str(kind)]} {limit:,}"
    if kind == "enum":
        return f"{field} must be one of {', '.join(map(repr, limit))}"
    if kind == "additionalProperties":
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        properties = schema.get("properties", {})
        extra = sorted(str(k) for k in set(value) - set(properties))
        unexpected = ", ".join(f"{k[:40]!r}" for k in extra[:5])
        verb = "was" if len(extra) == 1 else "were"
        return f"{unexpected} {verb} unexpected; accepted: {', '.join(properties)}"
    if kind == "required":
        return _short(error.message)
    return f"{field}: {_short(error.message)}"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _arguments(arguments: object) -> dict[str, Any]:
    if arguments is None or arguments in ("", b""):
        return {}
    if isinstance(arguments, str | bytes):
        if len(arguments) > MAX_ARGUMENT_BYTES:
            raise ToolError(f"arguments are larger than {MAX_ARGUMENT_BYTES:,} bytes")
        try:
            arguments = json.loads(arguments)
        except ValueError as exc:
            raise ToolError(f"arguments must be a JSON object: {exc}") from None
    if not isinstance(arguments, Mapping):
        raise ToolError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    return dict(arguments)


# --- handlers: each returns a plan ------------------------------------------------------

Handler = Plan[dict[str, Any]]
HandlerFn = Callable[[dict[str, Any], ToolContext, Settings], Handler]


def _schedule(args: dict[str, Any], ctx: ToolContext, settings: Settings) -> Handler:
    if ctx.in_scheduled_run:
        raise ToolError(
            "cannot schedule from inside a scheduled run (this turn was started by a "
            "scheduled prompt); answer the prompt instead"
        )
    given = [k for k in ("at", "delay_seconds", "cron") if k in args]
    if len(given) != 1:
        raise ToolError(
            "give exactly one of at (ISO-8601 time), delay_seconds (seconds from now) or "
            f"cron (5-field expression); got {', '.join(given) or 'none'}"
        )
    for bound in ("end_at", "max_runs", "overlap"):
        if bound in args and "cron" not in args:
            raise ToolError(f"{bound} only applies to a repeating prompt (cron)")
    timezone = args.get("timezone", ctx.timezone)
    get_zone(timezone)
    now = utcnow()
    spec: dict[str, Any] = {
        "prompt": args["prompt"],
        "user_id": ctx.user_id,
        "platform": ctx.platform,
        "channel_id": ctx.channel_id,
        "timezone": timezone,
        "metadata": {"source": "tool"},
        "jitter_seconds": args.get("jitter_seconds"),
    }
    if "cron" in args:
        schedule = parse_cron(args["cron"], timezone)
        _check_interval(schedule.iter_after(now), settings)
        spec.update(
            cron=args["cron"],
            end_at=args.get("end_at"),
            max_runs=args.get("max_runs"),
            overlap=args.get("overlap"),
        )
    elif "at" in args:
        spec["at"] = args["at"]
    else:
        spec["delay"] = args["delay_seconds"]
    record, _ = build_from_spec(spec, now, settings)
    farthest = now + timedelta(days=settings.tool_max_days_ahead)
    if record.schedule_time is not None and record.schedule_time > farthest:
        raise ToolError(
            f"that is too far ahead: a one-time prompt may be at most "
            f"{settings.tool_max_days_ahead:g} days from now (until {to_iso(farthest)})"
        )
    waiting = yield from _count_waiting(ctx, settings.tool_max_active_prompts)
    if waiting >= settings.tool_max_active_prompts:
        raise QuotaExceeded(ctx.user_id, settings.tool_max_active_prompts)
    record = yield from verbs.create(scope(), spec, now)
    return {"success": True, **describe(record, ctx, now)}


def _count_waiting(ctx: ToolContext, enough: int) -> Plan[int]:
    """The user's live and paused prompts on this platform (the identity tools see).

    Checked before the write, so calls racing for one user can pass the limit by the
    number that race; MAX_PROMPTS_PER_USER, if set, is enforced atomically as well.
    """
    count, cursor = 0, None
    while count < enough:
        page = yield from verbs.list_page(
            scope(),
            user_id=ctx.user_id,
            platform=ctx.platform,
            status=WAITING,
            limit=1000,
            cursor=cursor,
        )
        count += len(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    return count


def _check_interval(fires: Any, settings: Settings) -> None:
    minimum = settings.tool_min_cron_interval_seconds
    previous: datetime | None = None
    for count, instant in enumerate(fires):
        if previous is not None and (instant - previous).total_seconds() < minimum:
            gap = (instant - previous).total_seconds()
            raise ToolError(
                f"cron fires {gap:.0f} s apart at times; the shortest allowed interval is "
                f"{minimum:.0f} s ({minimum / 60:g} minutes), e.g. '*/{max(1, int(minimum // 60))} "
                "* * * *' at most"
            )
        previous = instant
        if count >= 200:
            return


WAITING = (Status.SCHEDULED, Status.ACTIVE, Status.PAUSED)


def _list(args: dict[str, Any], ctx: ToolContext, settings: Settings) -> Handler:
    page = yield from verbs.list_page(
        scope(),
        user_id=ctx.user_id,
        platform=ctx.platform,
        status=args.get("status", WAITING),
        limit=LIST_LIMIT,
        cursor=None,
    )
    now = utcnow()
    return {
        "success": True,
        "count": len(page.items),
        "more": page.next_cursor is not None,
        "prompts": [describe(p, ctx, now) for p in page.items],
    }


def owned(prompt_id: str, ctx: ToolContext) -> Plan[ScheduledPrompt]:
    """The caller's prompt; PromptNotFound for an unknown id and for another user's."""
    record = yield from verbs.get(scope(), prompt_id, ctx.user_id)
    # Another user's prompt (or another platform's user) looks exactly like no prompt.
    if record is None or record.user_id != ctx.user_id or record.platform != ctx.platform:
        raise PromptNotFound(prompt_id)
    return record


def _change(verb: Callable[..., Plan[ScheduledPrompt]]) -> HandlerFn:
    def handler(args: dict[str, Any], ctx: ToolContext, settings: Settings) -> Handler:
        prompt_id = args["prompt_id"]
        yield from owned(prompt_id, ctx)
        now = utcnow()
        record = yield from verb(scope(), prompt_id, ctx.user_id, now)
        return {"success": True, **describe(record, ctx, now)}

    return handler


def _cleanup(args: dict[str, Any], ctx: ToolContext, settings: Settings) -> Handler:
    result = yield from retention.cleanup(scope(), args.get("days_to_keep", 30), utcnow())
    return result


_HANDLERS: dict[str, HandlerFn] = {
    "schedule_prompt": _schedule,
    "list_scheduled_prompts": _list,
    "cancel_scheduled_prompt": _change(verbs.cancel),
    "pause_scheduled_prompt": _change(verbs.pause),
    "resume_scheduled_prompt": _change(verbs.resume),
    "cleanup_expired_prompts": _cleanup,
}


def describe(record: ScheduledPrompt, ctx: ToolContext, now: datetime) -> dict[str, Any]:
    """What the model needs to tell the user about a prompt."""
    try:
        zone = ZoneInfo(ctx.timezone)
    except Exception:
        zone = ZoneInfo(record.timezone)
    out: dict[str, Any] = {
        "prompt_id": record.id,
        "status": record.status.value,
        "prompt": _short(record.prompt, 200),
    }
    if record.cron_expression is not None:
        out["schedule"] = f"cron '{record.cron_expression}' in {record.timezone}"
    elif record.schedule_time is not None:
        out["schedule"] = f"once at {_human(record.schedule_time, zone, now)}"
    if record.next_run_at is not None:
        out["next_run_utc"] = to_iso(record.next_run_at)
        out["next_run_local"] = record.next_run_at.astimezone(zone).isoformat(timespec="seconds")
        out["next_run"] = _human(record.next_run_at, zone, now)
    if record.jitter_seconds is not None:
        out["jitter_seconds"] = record.jitter_seconds
    if record.overlap is not Overlap.SKIP:
        out["overlap"] = record.overlap.value
    if record.run_count:
        out["run_count"] = record.run_count
    if record.skipped_runs:
        out["skipped_runs"] = record.skipped_runs
    return out


def _human(instant: datetime, zone: ZoneInfo, now: datetime) -> str:
    local = instant.astimezone(zone)
    text = local.strftime("%a %d %b %Y %H:%M ") + (local.tzname() or zone.key)
    seconds = (instant - now).total_seconds()
    if seconds < 0:
        return text
    days, rest = divmod(int(seconds + 30), 86400)
    hours, rest = divmod(rest, 3600)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if not days:
        parts.append(f"{rest // 60} min")
    return f"{text} (in {' '.join(parts)})"
