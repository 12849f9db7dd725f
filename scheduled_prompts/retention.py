"""Retention: delete finished prompts past the window (beat runs the cleanup hourly)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from . import store
from ._time import to_ms
from .models import ScheduledPrompt
from .plans import Plan
from .store import Scope


def cleanup(ctx: Scope, days_to_keep: object, now: datetime) -> Plan[dict[str, Any]]:
    """Delete terminal prompts finished more than ``days_to_keep`` days ago: O(expired)."""
    if (
        isinstance(days_to_keep, bool)
        or not isinstance(days_to_keep, int | float)
        or not 0 <= days_to_keep <= 36_500
    ):
        return {
            "error": f"days_to_keep must be a number of days from 0 to 36500, got {days_to_keep!r}"
        }
    cutoff = to_ms(now - timedelta(days=days_to_keep))
    deleted = 0
    for shard in ctx.every_shard():
        deleted += yield from _cleanup_shard(shard, cutoff)
    return {
        "success": True,
        "message": f"deleted {deleted} prompt(s) finished more than {days_to_keep} day(s) ago",
        "days_kept": days_to_keep,
        "deleted": deleted,
    }


def _cleanup_shard(ctx: Scope, cutoff: int) -> Plan[int]:
    deleted = skipped = 0
    while True:
        rows = yield store.RangeByScore(ctx.keys.finished, cutoff, skipped, 500)
        if not rows:
            break
        ids = [str(member) for member, _ in rows]
        keys = [ctx.keys.prompt(i) for i in ids]
        raws = yield store.Read(keys)
        doomed: list[tuple[ScheduledPrompt, str]] = []
        for key, raw in zip(keys, raws, strict=True):
            record = store.parse_record(key, raw)
            # Only terminal records whose own finish time is past the window go; live
            # prompts and unreadable records (dates included) are left alone.
            if (
                record is not None
                and raw is not None
                and record.status.is_terminal
                and to_ms(record.updated_at) <= cutoff
            ):
                doomed.append((record, raw))
        if doomed:
            deleted += int((yield store.delete_op(ctx.keys, doomed)))
        skipped += len(rows) - len(doomed)
    return deleted


def report(ctx: Scope, days_to_keep: object, now: datetime) -> Plan[str]:
    """:func:`cleanup` answered as the JSON text ``cleanup_expired_prompts`` returns."""
    return json.dumps((yield from cleanup(ctx, days_to_keep, now)))
