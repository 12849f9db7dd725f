"""The delivery log: recent delivery steps, kept in two capped Redis streams.

Every step that called a runner (delivered, failed, retried) or found its occurrence
missed is added, in the same script that commits or gives back its claim, to ``P:log``
(``delivery_log_length`` entries, default 10,000); failed and retried steps also go to
``P:log:failures`` (``failure_log_length``, default 1,000), so a burst of successes does
not push the failures out. Both are trimmed as they grow (``XADD MAXLEN ~``): their memory
is fixed, whatever the number of stored prompts. An entry is one field, ``e``: compact
JSON of the step; its time is the stream id's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from . import shards, store
from ._time import from_ms

if TYPE_CHECKING:
    from .metrics import Observation
    from .plans import Plan
    from .store import Scope

#: Outcomes that go to the failure log too.
FAILURES = ("failed", "retried")
#: Entries read per round trip when looking for one prompt's steps.
_PAGE = 500


@dataclass(frozen=True)
class Entry:
    """One logged delivery step."""

    at: datetime  # when the step was recorded (UTC)
    prompt_id: str
    user_id: str
    platform: str
    outcome: str  # delivered | failed | retried | skipped (a missed occurrence)
    occurrence: datetime  # the nominal time of the occurrence (UTC)
    trigger: bool  # a trigger_prompt delivery
    lateness: float | None  # seconds
    runner_seconds: float | None
    error: str | None
    #: Occurrences that came due during this run and were skipped (its overlap policy).
    skipped: int = 0


def encode(step: Observation) -> tuple[str, str]:
    """The log entry of a step and its failure flag ('1' or ''), as a script takes them;
    ('', '') for a step that is not logged (one without a prompt: a tick's)."""
    if not step.prompt_id:
        return "", ""
    data: dict[str, Any] = {
        "id": step.prompt_id,
        "user": step.user_id,
        "platform": step.platform,
        "outcome": step.outcome,
        "occurrence": step.occurrence_ms,
    }
    if step.trigger:
        data["trigger"] = 1
    if step.lateness is not None:
        data["late_ms"] = round(step.lateness * 1000, 1)
    if step.runner_seconds is not None:
        data["runner_ms"] = round(step.runner_seconds * 1000, 1)
    if step.error:
        data["error"] = step.error
    if step.skipped:
        data["skipped"] = step.skipped
    try:
        text = orjson.dumps(data).decode()
    except TypeError:  # an error text with an unpaired surrogate: written escaped
        text = json.dumps(data, separators=(",", ":"))
    return text, "1" if step.outcome in FAILURES else ""


def decode(stream_id: str | bytes, fields: Mapping[str, str]) -> Entry | None:
    """An entry read back from a stream (None if it is not one of ours)."""
    raw = fields.get("e")
    try:
        data = json.loads(raw or "")
        at_ms = int(store.as_text(stream_id).split("-", 1)[0])
        late, runner = data.get("late_ms"), data.get("runner_ms")
        return Entry(
            at=from_ms(at_ms),
            prompt_id=str(data["id"]),
            user_id=str(data.get("user", "")),
            platform=str(data.get("platform", "")),
            outcome=str(data["outcome"]),
            occurrence=from_ms(int(data["occurrence"])),
            trigger=bool(data.get("trigger")),
            lateness=None if late is None else float(late) / 1000,
            runner_seconds=None if runner is None else float(runner) / 1000,
            error=data.get("error"),
            skipped=int(data.get("skipped", 0)),
        )
    except (TypeError, ValueError, KeyError):
        return None


def recent(ctx: Scope, prompt_id: str | None = None, limit: int = 10) -> Plan[list[Entry]]:
    """The newest steps of ``ctx``'s shard, newest first; with ``prompt_id``, that prompt's
    only (``ctx`` is then the prompt's shard; read from the whole log at most: a prompt not
    delivered lately has none)."""
    found: list[Entry] = []
    end = "+"
    while len(found) < limit:
        rows = yield store.Command(("XREVRANGE", ctx.keys.log, end, "-", "COUNT", _PAGE))
        found += _matching(rows, prompt_id)
        if len(rows) < _PAGE:
            break
        end = "(" + store.as_text(rows[-1][0])
    return found[:limit]


def failures(ctx: Scope, limit: int = 50) -> Plan[list[Entry]]:
    """The newest failed and retried steps of every shard, newest first."""
    per_shard, _ = yield from shards.each_read(
        ctx, lambda keys: [("XREVRANGE", keys.failures, "+", "-", "COUNT", limit)]
    )
    found = [entry for (rows,) in per_shard for entry in _matching(rows, None)]
    found.sort(key=lambda entry: entry.at, reverse=True)  # stable: a shard's order stays
    return found[:limit]


def _matching(rows: Sequence[Any], prompt_id: str | None) -> list[Entry]:
    out = []
    for stream_id, fields in rows:
        entry = decode(stream_id, store.as_mapping(fields))
        if entry is not None and (prompt_id is None or entry.prompt_id == prompt_id):
            out.append(entry)
    return out
