"""Turning caller input into records: every check of a create or update, pure, no Redis.

A call is validated completely before anything is written, so a rejected call writes
nothing. Every message says what was wrong and what is accepted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from .errors import InvalidSchedule
from .ids import new_prompt_ids
from .models import Kind, Overlap, ScheduledPrompt, Status, make_record
from .schedules import (
    CronSchedule,
    check_jitter,
    first_cron_run,
    get_zone,
    jitter_offset,
    parse_cron,
    parse_instant,
    resolve_at,
    resolve_delay,
)
from .settings import Settings

_PROMPT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$")
_MAX_NAME_CHARS = 256

#: Keyword arguments of ``schedule_prompt`` after the prompt text.
SCHEDULE_ARGS = (
    "user_id",
    "platform",
    "channel_id",
    "at",
    "delay",
    "cron",
    "timezone",
    "start_at",
    "end_at",
    "max_runs",
    "misfire_grace_seconds",
    "metadata",
    "jitter_seconds",
    "overlap",
    "prompt_id",
)
#: Keyword arguments ``update_prompt`` accepts: all but the identity of the prompt.
UPDATABLE = frozenset({"prompt", *SCHEDULE_ARGS} - {"user_id", "platform", "prompt_id"})


class ScheduleRequest(NamedTuple):
    """The schedule part of a request, as given (before it is resolved against a clock).

    A named tuple rather than a dataclass: one is built for every prompt scheduled.
    """

    at: Any = None
    delay: Any = None
    cron: Any = None
    timezone: Any = "UTC"
    start_at: Any = None
    end_at: Any = None
    max_runs: Any = None

    @classmethod
    def of(cls, values: Mapping[str, Any], **defaults: Any) -> ScheduleRequest:
        """The schedule arguments among ``values``; ``defaults`` for those it lacks."""
        given = {**defaults, **{k: values[k] for k in _SCHEDULE_FIELDS if k in values}}
        given.setdefault("timezone", "UTC")
        return cls(**given)


_SCHEDULE_FIELDS = ScheduleRequest._fields


def check_text(name: str, value: object, *, limit: int, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        kind = "a string or None" if optional else "a string"
        raise InvalidSchedule(f"{name} must be {kind}, got {type(value).__name__}")
    if not value.strip():
        raise InvalidSchedule(f"{name} must not be empty")
    if len(value) > limit:
        raise InvalidSchedule(f"{name} must be at most {limit:,} characters, got {len(value):,}")
    _check_utf8(name, value)
    return value


def _check_utf8(name: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidSchedule(
            f"{name} must be valid Unicode text; it has an unpaired surrogate at {exc.start}"
        ) from None


def check_prompt_id(value: object) -> str:
    if not isinstance(value, str) or not _PROMPT_ID.match(value):
        raise InvalidSchedule(
            "prompt_id must be 1-128 characters of letters, digits and ._:@/+=- "
            f"starting with a letter or digit, got {value!r}"
        )
    if value.endswith(":trigger"):
        # "{id}:trigger:{ms}" is a trigger's idempotency key: such an id would be ambiguous.
        raise InvalidSchedule(f"prompt_id must not end with ':trigger', got {value!r}")
    return value


def check_record(record: ScheduledPrompt, settings: Settings) -> ScheduledPrompt:
    """Apply the API's input checks to a record from elsewhere (an import): raises
    :class:`InvalidSchedule` for what ``schedule_prompt`` would have refused."""
    check_prompt_id(record.id)
    check_text("prompt", record.prompt, limit=settings.max_prompt_chars)
    check_text("user_id", record.user_id, limit=_MAX_NAME_CHARS)
    check_text("platform", record.platform, limit=_MAX_NAME_CHARS)
    check_text("channel_id", record.channel_id, limit=_MAX_NAME_CHARS, optional=True)
    check_metadata(record.metadata, settings)
    schedule = None
    if record.cron_expression is not None:
        schedule = parse_cron(record.cron_expression, record.timezone)
    else:
        get_zone(record.timezone)
    check_jitter(record.jitter_seconds, schedule, record.updated_at)
    return record


def check_metadata(value: object, settings: Settings) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSchedule(
            f"metadata must be a JSON object (a dict with string keys), got {type(value).__name__}"
        )
    try:
        text = json.dumps(dict(value), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidSchedule(
            f"metadata must be JSON-serialisable (strings, numbers, booleans, None, lists "
            f"and dicts with string keys): {exc}"
        ) from None
    if any(not isinstance(k, str) for k in value):
        raise InvalidSchedule("metadata keys must be strings")
    _check_utf8("metadata", json.dumps(dict(value), ensure_ascii=False))
    size = len(text.encode())
    if size > settings.max_metadata_bytes:
        raise InvalidSchedule(
            f"metadata must be at most {settings.max_metadata_bytes:,} bytes of JSON, got {size:,}"
        )
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def check_grace(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSchedule(
            f"misfire_grace_seconds must be a number of seconds or None, got {type(value).__name__}"
        )
    if not math.isfinite(value) or value <= 0:
        raise InvalidSchedule(f"misfire_grace_seconds must be > 0, got {value!r}")
    return float(value)


def check_overlap(value: object, kind: Kind) -> Overlap:
    """``overlap`` as an :class:`Overlap` (None: the default, ``skip``); a cron prompt's
    setting only."""
    if value is None:
        return Overlap.SKIP
    accepted = ", ".join(repr(o.value) for o in Overlap)
    if not isinstance(value, str) or value not in {o.value for o in Overlap}:
        raise InvalidSchedule(f"overlap must be one of {accepted} (or None), got {value!r}")
    if kind is not Kind.CRON:
        raise InvalidSchedule(
            f"overlap only applies to a repeating prompt (cron), got overlap={value!r} "
            "on a one-time prompt"
        )
    return Overlap(value)


def _check_bound(name: str, value: object, schedule_tz: str) -> datetime | None:
    return None if value is None else parse_instant(name, value, get_zone(schedule_tz))


class ResolvedSchedule(NamedTuple):
    kind: Kind
    timezone: str
    next_run_at: datetime | None
    schedule_time: datetime | None = None
    cron: CronSchedule | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    max_runs: int | None = None


def resolve_schedule(req: ScheduleRequest, now: datetime) -> ResolvedSchedule:
    """Check a schedule request against ``now`` and compute its first occurrence."""
    if (req.at is not None) + (req.delay is not None) + (req.cron is not None) != 1:
        given = [n for n in ("at", "delay", "cron") if getattr(req, n) is not None]
        what = "none" if not given else " and ".join(given)
        raise InvalidSchedule(
            f"give exactly one of at= (a time), delay= (seconds from now) or cron= "
            f"(a repeating schedule); got {what}"
        )
    zone = get_zone(req.timezone)
    if req.cron is None:
        bound = next(
            (n for n in ("start_at", "end_at", "max_runs") if getattr(req, n) is not None), None
        )
        if bound is not None:
            raise InvalidSchedule(
                f"{bound} bounds a cron schedule; a one-time prompt (at=/delay=) does not take it"
            )
        if req.at is not None:
            when = resolve_at(req.at, zone.key, now)
        else:
            when = resolve_delay(req.delay, now)
        return ResolvedSchedule(Kind.ONCE, zone.key, when, schedule_time=when)
    cron = parse_cron(req.cron, zone.key)
    start_at = _check_bound("start_at", req.start_at, zone.key)
    end_at = _check_bound("end_at", req.end_at, zone.key)
    max_runs = req.max_runs
    if max_runs is not None and (
        isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1
    ):
        raise InvalidSchedule(f"max_runs must be an integer >= 1 or None, got {max_runs!r}")
    if start_at is not None and end_at is not None and end_at <= start_at:
        raise InvalidSchedule(
            f"end_at ({end_at.isoformat()}) must be after start_at ({start_at.isoformat()})"
        )
    first = first_cron_run(cron, now, start_at=start_at, end_at=end_at)
    if first is None:
        raise InvalidSchedule(
            f"cron {cron.expression!r} in {zone.key} never fires between "
            f"{(start_at or now).isoformat()} and {end_at.isoformat() if end_at else 'the end'}"
        )
    return ResolvedSchedule(
        Kind.CRON,
        zone.key,
        first,
        cron=cron,
        start_at=start_at,
        end_at=end_at,
        max_runs=max_runs,
    )


def build_prompt(
    prompt: object,
    *,
    user_id: object,
    platform: object,
    channel_id: object,
    schedule: ScheduleRequest,
    misfire_grace_seconds: object,
    metadata: object,
    prompt_id: object,
    now: datetime,
    settings: Settings,
    fresh_id: str | None = None,
    jitter_seconds: object = None,
    overlap: object = None,
) -> ScheduledPrompt:
    """Validate a create request and return the new record (version 1).

    Without ``prompt_id`` the record gets ``fresh_id``, or a new id when that is None.
    """
    text = check_text("prompt", prompt, limit=settings.max_prompt_chars)
    owner = check_text("user_id", user_id, limit=_MAX_NAME_CHARS)
    where = check_text("platform", platform, limit=_MAX_NAME_CHARS)
    channel = check_text("channel_id", channel_id, limit=_MAX_NAME_CHARS, optional=True)
    pid = check_prompt_id(prompt_id) if prompt_id is not None else fresh_id or new_prompt_ids(1)[0]
    grace = check_grace(misfire_grace_seconds)
    meta = check_metadata(metadata, settings)
    resolved = resolve_schedule(schedule, now)
    jitter = check_jitter(jitter_seconds, resolved.cron, now)
    policy = check_overlap(overlap, resolved.kind)
    offset = jitter_offset(pid, jitter)
    assert resolved.next_run_at is not None
    fire: datetime | None = resolved.next_run_at + offset
    if resolved.cron is not None and offset:
        # The first occurrence that *fires* after now: its nominal time may be just past.
        fire = first_cron_run(
            resolved.cron, now, start_at=resolved.start_at, end_at=resolved.end_at, offset=offset
        )
    assert text is not None and owner is not None and where is not None
    assert fire is not None
    return make_record(
        {
            "id": pid,
            "prompt": text,
            "user_id": owner,
            "platform": where,
            "channel_id": channel,
            "kind": resolved.kind,
            "status": Status.SCHEDULED if resolved.kind is Kind.ONCE else Status.ACTIVE,
            "created_at": now,
            "updated_at": now,
            "schedule_time": resolved.schedule_time,
            "cron_expression": resolved.cron.expression if resolved.cron else None,
            "timezone": resolved.timezone,
            "next_run_at": fire,
            "max_runs": resolved.max_runs,
            "start_at": resolved.start_at,
            "end_at": resolved.end_at,
            "misfire_grace_seconds": grace,
            "metadata": meta,
            "jitter_seconds": jitter,
            "overlap": policy,
        }
    )


def same_request(existing: ScheduledPrompt, new: ScheduledPrompt, req: ScheduleRequest) -> bool:
    """Whether an idempotent create (same ``prompt_id``) asks for the stored prompt.

    Compared: prompt, owner, platform, channel and kind, plus ``at``/``cron``/``timezone``
    where the request gave them; ``delay`` always matches (it is relative to the call).
    """
    if (
        existing.prompt,
        existing.user_id,
        existing.platform,
        existing.channel_id,
        existing.jitter_seconds,
        existing.overlap,
    ) != (
        new.prompt,
        new.user_id,
        new.platform,
        new.channel_id,
        new.jitter_seconds,
        new.overlap,
    ) or existing.kind is not new.kind:
        return False
    if req.at is not None and existing.schedule_time != new.schedule_time:
        return False
    if req.cron is not None and existing.cron_expression != new.cron_expression:
        return False
    return req.delay is not None or existing.timezone == new.timezone


def apply_update(
    record: ScheduledPrompt, changes: Mapping[str, Any], now: datetime, settings: Settings
) -> ScheduledPrompt:
    """The record after ``update_prompt(**changes)``; ``record`` itself if nothing changes."""
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise InvalidSchedule(
            f"cannot update {', '.join(sorted(unknown))}; updatable fields are "
            + ", ".join(sorted(UPDATABLE))
        )
    new: dict[str, Any] = {}
    if "prompt" in changes:
        new["prompt"] = check_text("prompt", changes["prompt"], limit=settings.max_prompt_chars)
    if "channel_id" in changes:
        new["channel_id"] = check_text(
            "channel_id", changes["channel_id"], limit=_MAX_NAME_CHARS, optional=True
        )
    if "metadata" in changes:
        new["metadata"] = check_metadata(changes["metadata"], settings)
    if "misfire_grace_seconds" in changes:
        new["misfire_grace_seconds"] = check_grace(changes["misfire_grace_seconds"])
    schedule_keys = {"at", "delay", "cron", "timezone", "start_at", "end_at", "max_runs"}
    if schedule_keys & set(changes):
        new.update(_reschedule(record, changes, now))
    if schedule_keys & set(changes) or "jitter_seconds" in changes:
        jitter = changes.get("jitter_seconds", record.jitter_seconds)
        new.update(_rejitter(record, new, jitter, now))
    kind = new.get("kind", record.kind)
    if "overlap" in changes:
        new["overlap"] = check_overlap(changes["overlap"], kind)
    elif kind is not Kind.CRON:
        new["overlap"] = Overlap.SKIP  # a prompt made one-time drops its cron setting
    new = {k: v for k, v in new.items() if getattr(record, k) != v}
    if not new:
        return record
    return record.replace(**new, updated_at=now, version=record.version + 1)


def _reschedule(
    record: ScheduledPrompt, changes: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    timezone = changes.get("timezone", record.timezone)
    if not {"at", "delay", "cron"} & set(changes):
        if record.kind is Kind.ONCE:
            # Only the display timezone (or a cron-only bound) changes for a one-time prompt.
            bounds = {k: changes[k] for k in ("start_at", "end_at", "max_runs") if k in changes}
            resolve_schedule(ScheduleRequest.of(bounds, delay=0, timezone=timezone), now)
            return {"timezone": get_zone(timezone).key}
        changes = {"cron": record.cron_expression, **changes}
    cron = changes.get("cron")
    is_cron = cron is not None or ("at" not in changes and "delay" not in changes)
    keep = record.kind is Kind.CRON and is_cron
    kept = {"start_at": record.start_at, "end_at": record.end_at, "max_runs": record.max_runs}
    req = ScheduleRequest.of({**(kept if keep else {}), **changes}, cron=cron, timezone=timezone)
    resolved = resolve_schedule(req, now)
    if resolved.max_runs is not None and resolved.max_runs <= record.scheduled_runs and keep:
        raise InvalidSchedule(
            f"max_runs must be greater than the {record.scheduled_runs} runs already made"
        )
    live_status = Status.SCHEDULED if resolved.kind is Kind.ONCE else Status.ACTIVE
    return {
        "kind": resolved.kind,
        "status": record.status if record.status is Status.PAUSED else live_status,
        "timezone": resolved.timezone,
        "schedule_time": resolved.schedule_time,
        "cron_expression": resolved.cron.expression if resolved.cron else None,
        "start_at": resolved.start_at,
        "end_at": resolved.end_at,
        "max_runs": resolved.max_runs,
        "next_run_at": None if record.status is Status.PAUSED else resolved.next_run_at,
    }


def _rejitter(
    record: ScheduledPrompt, new: Mapping[str, Any], jitter_seconds: object, now: datetime
) -> dict[str, Any]:
    """The jitter (checked against the schedule the record will have) and the next run
    it gives: a rescheduled nominal time, or the current one, plus the prompt's offset."""
    expression = new.get("cron_expression", record.cron_expression)
    kind = new.get("kind", record.kind)
    zone = new.get("timezone", record.timezone)
    schedule = parse_cron(expression, zone) if kind is Kind.CRON and expression else None
    jitter = check_jitter(jitter_seconds, schedule, now)
    offset = jitter_offset(record.id, jitter)
    if "next_run_at" in new:
        nominal = new["next_run_at"]
        after = now  # a new schedule: its first occurrence that fires after now
    else:
        nominal = None if record.next_run_at is None else record.next_run_at - record.offset
        # The same schedule: never before the occurrence it was waiting for (delivered
        # ones stay delivered), and firing after now.
        after = max(now, nominal + offset - timedelta(milliseconds=1)) if nominal else now
    fire = None if nominal is None else nominal + offset
    if fire is not None and schedule is not None:
        start_at, end_at = new.get("start_at", record.start_at), new.get("end_at", record.end_at)
        fire = first_cron_run(schedule, after, start_at=start_at, end_at=end_at, offset=offset)
    return {"jitter_seconds": jitter, "next_run_at": fire}


_SPEC_KEYS = frozenset({"prompt", *SCHEDULE_ARGS})


def build_from_spec(
    spec: Mapping[str, Any], now: datetime, settings: Settings, fresh_id: str | None = None
) -> tuple[ScheduledPrompt, ScheduleRequest]:
    """Validate one ``schedule_prompt`` keyword set; return the record and its request
    (with ``fresh_id`` as its id when the spec gives no ``prompt_id``)."""
    unknown = spec.keys() - _SPEC_KEYS
    if unknown:
        raise InvalidSchedule(
            f"unknown argument(s) {', '.join(sorted(unknown))}; accepted: prompt, "
            + ", ".join(SCHEDULE_ARGS)
        )
    for name in ("prompt", "user_id", "platform"):
        if name not in spec:
            raise InvalidSchedule(f"{name} is required")
    req = ScheduleRequest.of(spec)
    record = build_prompt(
        spec["prompt"],
        user_id=spec["user_id"],
        platform=spec["platform"],
        channel_id=spec.get("channel_id"),
        schedule=req,
        misfire_grace_seconds=spec.get("misfire_grace_seconds"),
        metadata=spec.get("metadata"),
        prompt_id=spec.get("prompt_id"),
        now=now,
        settings=settings,
        fresh_id=fresh_id,
        jitter_seconds=spec.get("jitter_seconds"),
        overlap=spec.get("overlap"),
    )
    return record, req
