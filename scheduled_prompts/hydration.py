"""Hydration: after workers (re)start, hand surviving occurrences to Celery again."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import datetime

from . import store
from .occurrences import Delivery, horizon_ms, parse_promoted, promote_op
from .plans import Enqueue, Plan
from .store import Scope

log = logging.getLogger("scheduled_prompts.hydration")

#: How long the hydration lock lives if its holder never releases it (a lost worker).
LOCK_TTL_MS = 60_000
_CHUNK = 500


def hydrate(
    ctx: Scope,
    now: datetime,
    *,
    active_platforms: Iterable[str] | None = None,
    limit: int | None = None,
) -> Plan[int]:
    """Re-publish in-flight occurrences and promote those due within the horizon.

    ETA tasks held by a worker that died are gone from the broker until its visibility
    timeout; hydration hands them to Celery again at once. Only one process hydrates at
    a time (a token-checked lock, expiring after :data:`LOCK_TTL_MS` if its holder is
    lost); running it again or concurrently only produces duplicate messages, which
    delivery collapses. Returns how many occurrences were published.
    """
    platforms = set(active_platforms) if active_platforms is not None else None
    if platforms is None and ctx.settings.active_platforms is not None:
        platforms = set(ctx.settings.active_platforms)
    budget = ctx.settings.hydrate_limit if limit is None else limit
    token = secrets.token_hex(8)
    lock = [ctx.keys.hydrate_lock]
    if not (yield store.Eval(store.LOCK, lock, [token, LOCK_TTL_MS])):
        log.info("hydration skipped: another worker holds the lock")
        return 0
    taken = published = 0
    shards = ctx.every_shard()
    for i, shard in enumerate(shards):
        share = -(-(budget - taken) // (len(shards) - i))  # what is left, spread evenly
        if share <= 0:
            break
        took, sent = yield from _hydrate_shard(shard, now, platforms, share)
        taken += took
        published += sent
    yield store.Eval(store.LOCK, lock, [token, ""])
    log.info("hydration published %d occurrence(s)", published)
    return published


def _hydrate_shard(
    ctx: Scope, now: datetime, platforms: set[str] | None, budget: int
) -> Plan[tuple[int, int]]:
    """(occurrences taken, published) of one shard, at most ``budget`` taken."""
    taken = published = 0
    # 1. Occurrences already handed to Celery whose task may have been lost.
    offset = 0
    while taken < budget:
        keys = yield store.Command(("ZRANGE", ctx.keys.inflight, offset, offset + _CHUNK - 1))
        if not keys:
            break
        offset += len(keys)
        batch = [Delivery.from_key(store.as_text(k), ctx.number) for k in keys]
        batch = (yield from _on_platforms(ctx, batch, platforms))[: budget - taken]
        taken += len(batch)
        if batch:
            published += yield Enqueue(batch)
    # 2. Occurrences due within the horizon that no tick promoted yet.
    offset = 0
    while taken < budget:
        rows = yield store.RangeByScore(ctx.keys.due, horizon_ms(ctx, now), offset, _CHUNK)
        if not rows:
            break
        due = [Delivery(member, 0) for member, _ in rows]
        wanted = [d.prompt_id for d in (yield from _on_platforms(ctx, due, platforms))]
        wanted = wanted[: budget - taken]
        # PROMOTE takes every wanted id out of the due index (those already in flight
        # too); what stays is what was skipped, so the next page starts after it.
        offset += len(rows) - len(wanted)
        if not wanted:
            continue
        batch = parse_promoted((yield promote_op(ctx, now, wanted)), ctx.number)
        taken += len(batch)
        if batch:
            published += yield Enqueue(batch)
    return taken, published


def _on_platforms(
    ctx: Scope, batch: list[Delivery], platforms: set[str] | None
) -> Plan[list[Delivery]]:
    if platforms is None or not batch:
        return batch
    keys = [ctx.keys.prompt(d.prompt_id) for d in batch]
    raws = yield store.Read(keys)
    out = []
    for delivery, key, raw in zip(batch, keys, raws, strict=True):
        record = store.parse_record(key, raw)
        if record is not None and record.platform in platforms:
            out.append(delivery)
    return out
