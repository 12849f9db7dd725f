"""The seed's original design as a peer: one JSON record per key, no index, a tick that
SCANs, MGETs and parses every record (a lower bound on that design's cost).
Method and figures: docs/performance.md, "Methods"."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis

PREFIX = "seed:prompt:"
LIVE = frozenset({"scheduled", "active"})


def key(prompt_id: str) -> str:
    return f"{PREFIX}{prompt_id}"


def load(client: redis.Redis, records: Iterable[tuple[str, str]], *, batch: int = 5_000) -> int:
    """Store ``(id, record JSON)`` pairs, one ``SET`` each, pipelined ``batch`` at a time."""
    written = 0
    pipe = client.pipeline(transaction=False)
    for prompt_id, text in records:
        pipe.set(key(prompt_id), text)
        written += 1
        if written % batch == 0:
            pipe.execute()
    pipe.execute()
    return written


def tick(client: redis.Redis, now_ms: int, *, count: int = 1_000) -> list[dict[str, Any]]:
    """The records due at ``now_ms`` (epoch ms), found by reading every record."""
    due: list[dict[str, Any]] = []
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, match=f"{PREFIX}*", count=count)
        if keys:
            for raw in client.mget(keys):
                if raw is None:  # deleted between SCAN and MGET
                    continue
                record = json.loads(raw)
                next_run = record.get("next_run_at")
                if record.get("status") in LIVE and next_run is not None and next_run <= now_ms:
                    due.append(record)
        if cursor == 0:
            return due
