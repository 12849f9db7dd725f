"""Redis persistence: the atomic scripts and the operations that run them.

Operations are small objects that can run on a synchronous ``redis.Redis`` or an
asynchronous ``redis.asyncio.Redis`` alike (:meth:`Op.run` / :meth:`Op.arun`), so the
public verbs are written once (``core.py``) and driven by either client.

Every write that touches several keys is one Lua script, so a crash, a timeout or an
error leaves either the whole change or none of it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import NoScriptError

from ._time import to_ms
from .keys import Keys
from .models import RecordError, ScheduledPrompt

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

log = logging.getLogger("scheduled_prompts.store")


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


PUT = Script(
    """
-- Writes a batch of records and their index entries, all or nothing.
-- KEYS: ids, due, finished, open-counts, then per record: record key, user index key.
-- ARGV: quota ('' = none), then per record 7 values:
--   id, user_id, expected ('' = must not exist; else the exact stored JSON),
--   new JSON, due score ('' = not due), finished score ('' = not finished),
--   open delta (-1, 0, 1: change of the user's live+paused count).
-- Order: every check first (existence/compare-and-set, then quota), then every write.
-- Returns {'ok'} | {'exists', i, stored} | {'changed', i, stored or ''} | {'quota', user}.
local quota = ARGV[1]
local n = (#KEYS - 4) / 2
for i = 1, n do
  local a = 1 + (i - 1) * 7
  local stored = redis.call('GET', KEYS[3 + 2 * i])
  local expected = ARGV[a + 3]
  if expected == '' then
    if stored then return {'exists', i, stored} end
  elseif stored ~= expected then
    return {'changed', i, stored or ''}
  end
end
if quota ~= '' then
  local adds = {}
  for i = 1, n do
    local a = 1 + (i - 1) * 7
    local delta = tonumber(ARGV[a + 7])
    if delta > 0 then adds[ARGV[a + 2]] = (adds[ARGV[a + 2]] or 0) + delta end
  end
  for user, delta in pairs(adds) do
    local have = tonumber(redis.call('HGET', KEYS[4], user) or '0')
    if have + delta > tonumber(quota) then return {'quota', user} end
  end
end
for i = 1, n do
  local a = 1 + (i - 1) * 7
  local id = ARGV[a + 1]
  redis.call('SET', KEYS[3 + 2 * i], ARGV[a + 4])
  redis.call('ZADD', KEYS[1], 0, id)
  redis.call('ZADD', KEYS[4 + 2 * i], 0, id)
  if ARGV[a + 5] ~= '' then redis.call('ZADD', KEYS[2], ARGV[a + 5], id)
  else redis.call('ZREM', KEYS[2], id) end
  if ARGV[a + 6] ~= '' then redis.call('ZADD', KEYS[3], ARGV[a + 6], id)
  else redis.call('ZREM', KEYS[3], id) end
  local delta = tonumber(ARGV[a + 7])
  if delta ~= 0 then
    if redis.call('HINCRBY', KEYS[4], ARGV[a + 2], delta) <= 0 then
      redis.call('HDEL', KEYS[4], ARGV[a + 2])
    end
  end
end
return {'ok'}
"""
)

DELETE = Script(
    """
-- Deletes terminal records that are still exactly as read, with their index entries.
-- KEYS: ids, due, finished, then per record: record key, user index key.
-- ARGV: per record 2 values: id, expected JSON. A record that changed is kept.
-- Returns the number deleted.
local deleted = 0
local n = (#KEYS - 3) / 2
for i = 1, n do
  local id = ARGV[2 * i - 1]
  if redis.call('GET', KEYS[2 + 2 * i]) == ARGV[2 * i] then
    redis.call('DEL', KEYS[2 + 2 * i])
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZREM', KEYS[3 + 2 * i], id)
    deleted = deleted + 1
  end
end
return deleted
"""
)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Op:
    """One round trip to Redis, runnable on a sync or an async client."""

    def run(self, redis: Redis) -> Any:
        raise NotImplementedError

    async def arun(self, redis: AsyncRedis) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Read(Op):
    """MGET of record keys; returns the raw values (``None`` for missing)."""

    keys: Sequence[str]

    def run(self, redis: Redis) -> list[Any]:
        return list(redis.mget(self.keys)) if self.keys else []

    async def arun(self, redis: AsyncRedis) -> list[Any]:
        return list(await redis.mget(self.keys)) if self.keys else []


@dataclass(frozen=True)
class Eval(Op):
    script: Script
    keys: Sequence[str]
    args: Sequence[str | int | float]

    def run(self, redis: Redis) -> Any:
        try:
            return redis.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args)
        except NoScriptError:
            redis.script_load(self.script.source)
            return redis.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args)

    async def arun(self, redis: AsyncRedis) -> Any:
        try:
            return await redis.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args)
        except NoScriptError:
            await redis.script_load(self.script.source)
            return await redis.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args)


@dataclass(frozen=True)
class RangeByLex(Op):
    """Up to ``count`` members of a score-0 zset strictly after ``after`` (None: from start)."""

    key: str
    after: str | None
    count: int

    def _bounds(self) -> tuple[str, str]:
        return ("-" if self.after is None else "(" + self.after), "+"

    def run(self, redis: Redis) -> list[str]:
        low, high = self._bounds()
        return [_text(m) for m in redis.zrangebylex(self.key, low, high, start=0, num=self.count)]

    async def arun(self, redis: AsyncRedis) -> list[str]:
        low, high = self._bounds()
        members = await redis.zrangebylex(self.key, low, high, start=0, num=self.count)
        return [_text(m) for m in members]


@dataclass(frozen=True)
class RangeByScore(Op):
    """Members with score <= ``max_score``, oldest first, paged by ``offset``/``count``."""

    key: str
    max_score: int
    offset: int
    count: int

    def run(self, redis: Redis) -> list[tuple[str, float]]:
        rows = redis.zrangebyscore(
            self.key, "-inf", self.max_score, start=self.offset, num=self.count, withscores=True
        )
        return [(_text(m), float(s)) for m, s in cast(list[tuple[Any, Any]], rows)]

    async def arun(self, redis: AsyncRedis) -> list[tuple[str, float]]:
        rows = await redis.zrangebyscore(
            self.key, "-inf", self.max_score, start=self.offset, num=self.count, withscores=True
        )
        return [(_text(m), float(s)) for m, s in cast(list[tuple[Any, Any]], rows)]


@dataclass(frozen=True)
class HashGet(Op):
    key: str
    fields: Sequence[str]

    def run(self, redis: Redis) -> list[Any]:
        return list(redis.hmget(self.key, list(self.fields))) if self.fields else []

    async def arun(self, redis: AsyncRedis) -> list[Any]:
        if not self.fields:
            return []
        return list(await redis.hmget(self.key, list(self.fields)))


@dataclass(frozen=True)
class Pipeline(Op):
    """Several operations in one round trip (no transaction: each is atomic by itself)."""

    ops: Sequence[Eval]

    # SCRIPT LOAD goes first in the same pipeline, so no EVALSHA can meet NOSCRIPT.

    def run(self, redis: Redis) -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        for source in {op.script.source for op in self.ops}:
            pipe.script_load(source)
        for op in self.ops:
            pipe.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)
        return list(pipe.execute())[-len(self.ops) :] if self.ops else []

    async def arun(self, redis: AsyncRedis) -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        for source in {op.script.source for op in self.ops}:
            pipe.script_load(source)
        for op in self.ops:
            pipe.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)
        return list(await pipe.execute())[-len(self.ops) :] if self.ops else []


@dataclass(frozen=True)
class Put:
    """One record write for :func:`put_op`: ``expected`` is the stored JSON (None: create)."""

    record: ScheduledPrompt
    expected: str | None
    old: ScheduledPrompt | None = None


def index_entries(record: ScheduledPrompt) -> tuple[str, str]:
    """Due score and finished score of a record ('' where it has none)."""
    due = str(to_ms(record.next_run_at)) if record.is_live and record.next_run_at else ""
    finished = str(to_ms(record.updated_at)) if record.status.is_terminal else ""
    return due, finished


def put_op(keys: Keys, puts: Sequence[Put], quota: int | None) -> Eval:
    """The :data:`PUT` script call writing ``puts`` atomically."""
    script_keys = [keys.ids, keys.due, keys.finished, keys.open_counts]
    args: list[str | int | float] = ["" if quota is None else str(quota)]
    for put in puts:
        rec = put.record
        due, finished = index_entries(rec)
        was_open = put.old.status.is_open if put.old else False
        delta = int(rec.status.is_open) - int(was_open)
        script_keys += [keys.prompt(rec.id), keys.user(rec.user_id)]
        args += [rec.id, rec.user_id, put.expected or "", rec.to_json(), due, finished, delta]
    return Eval(PUT, script_keys, args)


def delete_op(keys: Keys, items: Sequence[tuple[ScheduledPrompt, str]]) -> Eval:
    """The :data:`DELETE` script call for (record, stored JSON) pairs."""
    script_keys = [keys.ids, keys.due, keys.finished]
    args: list[str | int | float] = []
    for record, raw in items:
        script_keys += [keys.prompt(record.id), keys.user(record.user_id)]
        args += [record.id, raw]
    return Eval(DELETE, script_keys, args)


def parse_record(key: str, raw: str | bytes | None) -> ScheduledPrompt | None:
    """A stored record, or None (with a log line naming the key) when it cannot be read."""
    if raw is None:
        return None
    try:
        return ScheduledPrompt.from_json(raw)
    except RecordError as exc:
        log.warning("skipping unreadable record %s: %s", key, exc)
        return None
