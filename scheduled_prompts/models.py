"""The record: :class:`ScheduledPrompt`, its statuses, and its JSON form."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

from ._time import EPOCH, ONE_MS, from_iso, to_iso
from .schedules import jitter_offset

#: Version of the stored JSON layout written; a record of another version than
#: :data:`READABLE_SCHEMAS` is refused on load. 2 added ``jitter_seconds``, ``overlap`` and
#: ``skipped_runs`` (a version 1 record is a version 2 record with their defaults).
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)


class Kind(StrEnum):
    ONCE = "once"
    CRON = "cron"


class Status(StrEnum):
    SCHEDULED = "scheduled"  # one-time, pending
    ACTIVE = "active"  # cron, firing
    PAUSED = "paused"
    EXECUTED = "executed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def is_live(self) -> bool:
        """Scheduled or active: the prompt has a next occurrence in the due index."""
        return self is Status.SCHEDULED or self is Status.ACTIVE

    @property
    def is_open(self) -> bool:
        """Live or paused: counted against the per-user quota."""
        return self is Status.SCHEDULED or self is Status.ACTIVE or self is Status.PAUSED

    @property
    def is_terminal(self) -> bool:
        return not self.is_open


class Overlap(StrEnum):
    """What a cron prompt does with an occurrence that comes due while the runner call
    of an earlier one is still going on (see docs/design.md, "Overlap")."""

    SKIP = "skip"  # not delivered; counted in skipped_runs
    BUFFER_ONE = "buffer_one"  # the latest of them is delivered when the run ends
    ALLOW = "allow"  # delivered on time, alongside the earlier run


class RecordError(ValueError):
    """A stored record could not be read (corrupt JSON or another schema version)."""


#: The fields holding an instant (stored as epoch ms, shown as ISO-8601).
DATETIME_FIELDS = (
    "schedule_time",
    "created_at",
    "updated_at",
    "next_run_at",
    "last_execution",
    "start_at",
    "end_at",
)


#: Stored-form defaults: a field equal to its default is not written (see ``to_json``).
_DEFAULTS: dict[str, Any] = {
    "timezone": "UTC",
    "run_count": 0,
    "failure_count": 0,
    "trigger_count": 0,
    "overlap": "skip",
    "skipped_runs": 0,
    "metadata": {},
    "version": 1,
}


@dataclass(frozen=True)
class ScheduledPrompt:
    """One scheduled prompt. Immutable: changes go through the API and bump ``version``.

    Datetimes are aware and in UTC. ``kind`` decides which schedule fields are set:
    ``"once"`` has ``schedule_time``; ``"cron"`` has ``cron_expression`` and may have
    ``start_at``, ``end_at`` and ``max_runs``. ``timezone`` is the IANA zone the schedule
    was given in (cron arithmetic happens there; one-time prompts keep it for display).
    """

    id: str
    prompt: str
    user_id: str
    platform: str
    kind: Kind
    status: Status
    created_at: datetime
    updated_at: datetime
    channel_id: str | None = None
    schedule_time: datetime | None = None
    cron_expression: str | None = None
    timezone: str = "UTC"
    next_run_at: datetime | None = None
    last_execution: datetime | None = None
    run_count: int = 0
    max_runs: int | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    misfire_grace_seconds: float | None = None
    last_error: str | None = None
    failure_count: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    #: Deliveries made by ``trigger_prompt``: counted in ``run_count``, not in ``max_runs``.
    trigger_count: int = 0
    #: Every occurrence fires a fixed offset after its nominal time, in [0, this), derived
    #: from the id (``schedules.jitter_offset``); ``next_run_at`` is the jittered instant.
    jitter_seconds: float | None = None
    #: Cron prompts: what an occurrence due while an earlier one still runs does.
    overlap: Overlap = Overlap.SKIP
    #: Occurrences not delivered because an earlier run of this prompt was still going
    #: on (``overlap``); never counted in ``run_count`` nor against ``max_runs``.
    skipped_runs: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Kind):
            object.__setattr__(self, "kind", Kind(self.kind))
        if not isinstance(self.status, Status):
            object.__setattr__(self, "status", Status(self.status))
        if self.overlap.__class__ is not Overlap:
            object.__setattr__(self, "overlap", Overlap(self.overlap))
        # The caller's dict is copied so the record cannot change behind its back.
        meta = copy.deepcopy(self.metadata) if self.metadata else {}
        object.__setattr__(self, "metadata", meta)
        fields = self.__dict__
        for name in DATETIME_FIELDS:
            value = fields[name]
            if value is None or (value.__class__ is datetime and value.tzinfo is UTC):
                continue  # the common case, checked cheaply: every record read runs this
            if not isinstance(value, datetime) or value.utcoffset() is None:
                raise ValueError(f"{name} must be an aware datetime, got {value!r}")
            if value.tzinfo is not UTC:
                object.__setattr__(self, name, value.astimezone(UTC))
        if self.kind is Kind.ONCE:
            if self.schedule_time is None or self.cron_expression is not None:
                raise ValueError("a one-time prompt has schedule_time and no cron_expression")
            if self.status is Status.ACTIVE:
                raise ValueError("a one-time prompt is 'scheduled', never 'active'")
            if self.overlap is not Overlap.SKIP:
                raise ValueError("overlap applies to cron prompts only")
        else:
            if self.cron_expression is None or self.schedule_time is not None:
                raise ValueError("a cron prompt has cron_expression and no schedule_time")
            if self.status is Status.SCHEDULED:
                raise ValueError("a cron prompt is 'active', never 'scheduled'")
        if self.status.is_live and self.next_run_at is None:
            raise ValueError(f"a {self.status} prompt needs next_run_at")
        counts = (self.run_count, self.failure_count, self.trigger_count, self.skipped_runs)
        if min(counts) < 0 or self.version < 1:
            raise ValueError(
                "run_count, failure_count, trigger_count, skipped_runs are >= 0, version >= 1"
            )

    @property
    def scheduled_runs(self) -> int:
        """Runs counted against ``max_runs`` (deliveries other than triggers)."""
        return self.run_count - self.trigger_count

    @property
    def is_live(self) -> bool:
        return self.status.is_live

    @property
    def offset(self) -> timedelta:
        """How long after its nominal time each occurrence fires (0 without jitter)."""
        return jitter_offset(self.id, self.jitter_seconds)

    def replace(self, **changes: Any) -> ScheduledPrompt:
        """A copy with ``changes`` applied (validated like a new record).

        What :func:`dataclasses.replace` does, without re-binding every field through
        ``__init__``: each delivery commits a replaced record.
        """
        unknown = changes.keys() - _FIELD_NAMES
        if unknown:
            raise TypeError(f"ScheduledPrompt has no field(s) {', '.join(sorted(unknown))}")
        new = object.__new__(ScheduledPrompt)
        fields = new.__dict__
        fields.update(self.__dict__)
        fields.update(changes)
        new.__post_init__()
        return new

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field, datetimes as ISO-8601 UTC strings."""
        out: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = to_iso(value)
            elif isinstance(value, StrEnum):
                value = value.value
            elif isinstance(value, dict):
                value = copy.deepcopy(value)
            out[f.name] = value
        return out

    def to_json(self) -> str:
        """The stored form: compact JSON, as small as it can be read back.

        Datetimes are epoch milliseconds, and fields holding their default (None, zero
        counters, empty metadata, UTC, version 1) are left out — a record is stored once
        per prompt, so every byte counts a million times.
        """
        out: dict[str, Any] = {"schema": SCHEMA_VERSION}
        fields = self.__dict__
        for name, kind, default in _STORED:
            value = fields[name]
            if value is None:
                continue
            if kind is _INSTANT:
                out[name] = (value - EPOCH) // ONE_MS
            elif kind is _ENUM:
                out[name] = value.value
            elif default is _NO_DEFAULT or value != default:
                out[name] = value
        try:
            return orjson.dumps(out).decode()
        except TypeError:  # metadata orjson cannot write (an int beyond 64 bits)
            return _COMPACT.encode(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduledPrompt:
        """Inverse of :meth:`to_dict`; refuses another schema version."""
        version = data.get("schema")
        if version not in READABLE_SCHEMAS or isinstance(version, bool):
            raise RecordError(
                f"record schema version {version!r} is not supported (this version of "
                f"scheduled-prompts reads {', '.join(map(str, READABLE_SCHEMAS))})"
            )
        values = {}
        for name, raw in data.items():
            if name in _INSTANT_NAMES:
                if raw.__class__ is int:
                    values[name] = EPOCH + raw * ONE_MS
                    continue
                if isinstance(raw, str):
                    values[name] = from_iso(raw)
                    continue
            elif name not in _FIELD_NAMES:
                continue
            values[name] = raw
        missing = _REQUIRED - values.keys()
        if missing:
            raise RecordError(f"unreadable record: no {', '.join(sorted(missing))}")
        return make_record(values)

    @classmethod
    def from_json(cls, text: str | bytes) -> ScheduledPrompt:
        try:
            data = _loads(text)
            if not isinstance(data, dict):
                raise RecordError("record is not a JSON object")
            return cls.from_dict(data)
        except RecordError:
            raise
        except (ValueError, TypeError) as exc:
            raise RecordError(f"unreadable record: {exc}") from exc


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _loads(text: str | bytes) -> Any:
    """JSON ``text`` read by orjson, or by the stdlib for what orjson does not read
    exactly, so that every record written reads back the same: orjson refuses some
    texts, and reads an integer beyond 64 bits (metadata may hold one) as a float, so a
    record whose metadata holds a float that large is read again by the stdlib."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    if data.__class__ is dict and data.get("metadata") and _holds_huge_float(data["metadata"]):
        return json.loads(text)
    return data


#: The smallest magnitude orjson reads as a float when the text held an integer.
_HUGE = float(2**63)


def _holds_huge_float(value: Any) -> bool:
    """Whether a float of magnitude :data:`_HUGE` or more is anywhere in ``value``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item.__class__ is float:
            if abs(item) >= _HUGE:
                return True
        elif item.__class__ is dict:
            stack.extend(item.values())
        elif item.__class__ is list:
            stack.extend(item)
    return False


_FIELD_ORDER = tuple(f.name for f in dataclasses.fields(ScheduledPrompt))
_FIELD_NAMES = frozenset(_FIELD_ORDER)
_INSTANT_NAMES = frozenset(DATETIME_FIELDS)
_PLAIN, _INSTANT, _ENUM = "plain", "instant", "enum"
_NO_DEFAULT = object()  # equal to nothing stored: the field is always written
#: (name, how it is stored, the default that is left out) per field, in stored order.
_STORED = tuple(
    (
        name,
        _INSTANT if name in DATETIME_FIELDS else _ENUM if name in ("kind", "status") else _PLAIN,
        _DEFAULTS.get(name, _NO_DEFAULT),
    )
    for name in _FIELD_ORDER
)
_REQUIRED = frozenset(
    f.name
    for f in dataclasses.fields(ScheduledPrompt)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
#: Defaults of the optional fields (the one factory field, ``metadata``, defaults to {};
#: ``__post_init__`` replaces it with a fresh copy anyway).
_FIELD_DEFAULTS = {
    f.name: f.default if f.default is not dataclasses.MISSING else dict[str, Any]()
    for f in dataclasses.fields(ScheduledPrompt)
    if f.name not in _REQUIRED
}


def make_record(fields: dict[str, Any]) -> ScheduledPrompt:
    """``ScheduledPrompt(**fields)`` (validated the same way), without the frozen
    ``__init__``'s per-field ``setattr``: every record read and written goes through it.
    ``fields`` must hold every required field and only field names."""
    record = object.__new__(ScheduledPrompt)
    values = record.__dict__
    values.update(_FIELD_DEFAULTS)
    values.update(fields)
    record.__post_init__()
    return record
