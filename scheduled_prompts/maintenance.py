"""Hydration: after workers (re)start, hand surviving occurrences to Celery again."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import datetime

import redis

from . import store
from ._time import to_ms, utcnow
from .occurrences import Delivery, Publish, parse_promoted, promote_op
from .store import Context

log = logging.getLogger("scheduled_prompts.maintenance")

LOCK_TTL_MS = 60_000
_CHUNK = 500


def hydrate(
    client: redis.Redis,
    ctx: Context,
    publish: Publish,
    *,
    active_platforms: Iterable[str] | None = None,
    limit: int | None = None,
    now: datetime | None = None,
) -> int:
    """Re-publish in-flight occurrences and promote those due within the horizon.

    ETA tasks held by a worker that died are gone from the broker until its visibility
    timeout; hydration hands them to Celery again at once. Only one worker hydrates at a
    time (a token-checked lock); running it again or concurrently only produces
    duplicate messages, which delivery collapses. Returns how many it published.
    """
    now = now or utcnow()
    platforms = set(active_platforms) if active_platforms is not None else None
    if platforms is None and ctx.settings.active_platforms is not None:
        platforms = set(ctx.settings.active_platforms)
    budget = ctx.settings.hydrate_limit if limit is None else limit
    token = secrets.token_hex(8)
    lock = [ctx.keys.hydrate_lock]
    if not store.Eval(store.LOCK, lock, [token, LOCK_TTL_MS]).run(client):
        log.info("hydration skipped: another worker holds the lock")
        return 0
    try:
        count = 0
        # 1. Occurrences already handed to Celery whose task may have been lost.
        offset = 0
        while count < budget:
            keys = client.zrange(ctx.keys.inflight, offset, offset + _CHUNK - 1)
            if not keys:
                break
            offset += len(keys)
            batch = [Delivery.from_key(str(k)) for k in keys]
            batch = _on_platforms(client, ctx, batch, platforms)[: budget - count]
            if batch:
                publish(batch)
            count += len(batch)
        # 2. Occurrences due within the horizon that no tick promoted yet.
        until = to_ms(now) + int(ctx.settings.horizon_seconds * 1000)
        offset = 0
        while count < budget:
            ids = client.zrangebyscore(ctx.keys.due, "-inf", until, start=offset, num=_CHUNK)
            if not ids:
                break
            wanted = [
                d.prompt_id
                for d in _on_platforms(client, ctx, [Delivery(str(i), 0) for i in ids], platforms)
            ][: budget - count]
            # PROMOTE takes every wanted id out of the due index (those already in flight
            # too); what stays is what was skipped, so the next page starts after it.
            offset += len(ids) - len(wanted)
            if not wanted:
                continue
            batch = parse_promoted(promote_op(ctx, now, wanted).run(client))
            if batch:
                publish(batch)
            count += len(batch)
        log.info("hydration published %d occurrence(s)", count)
        return count
    finally:
        store.Eval(store.LOCK, lock, [token, ""]).run(client)


def _on_platforms(
    client: redis.Redis, ctx: Context, batch: list[Delivery], platforms: set[str] | None
) -> list[Delivery]:
    if platforms is None or not batch:
        return batch
    keys = [ctx.keys.prompt(d.prompt_id) for d in batch]
    out = []
    for delivery, key, raw in zip(batch, keys, client.mget(keys), strict=True):
        record = store.parse_record(key, raw)
        if record is not None and record.platform in platforms:
            out.append(delivery)
    return out
