"""Redis persistence: the atomic scripts and the operations that run them.

Operations are small objects that can run on a synchronous ``redis.Redis`` or an
asynchronous ``redis.asyncio.Redis`` alike (:meth:`Op.run` / :meth:`Op.arun`), so the
public verbs are written once (``verbs.py``, see ``plans.py``) and driven by either client.

Every write that touches several keys is one Lua script, so a crash, a timeout or an
error leaves either the whole change or none of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from ._time import to_ms
from .keys import Keys, shard_of
from .models import RecordError, ScheduledPrompt
from .settings import Settings

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

log = logging.getLogger("scheduled_prompts.store")

#: Compare-and-set rounds a record write gets before it gives up on a record that keeps
#: changing under it.
CAS_ATTEMPTS = 50


@dataclass(frozen=True)
class Wait:
    """Replicas that must acknowledge a write (``WAIT``, on the write's own connection)
    before it counts as done (``SCHEDULED_PROMPTS_MIN_REPLICAS``)."""

    replicas: int
    timeout_ms: int

    def check(self, reply: Any) -> None:
        acknowledged = int(reply)
        if acknowledged < self.replicas:
            raise NotReplicated(acknowledged, self)


class NotReplicated(RedisConnectionError):
    """A write reached fewer replicas than required in time.

    It is applied on the primary, but a failover now could lose it; it is a connection
    error so that callers which retry a write while Redis is away (a commit) retry it.
    """

    def __init__(self, acknowledged: int, wait: Wait) -> None:
        self.acknowledged = acknowledged
        self.wait = wait
        super().__init__(
            f"the write reached {acknowledged} of the {wait.replicas} replica(s) "
            f"SCHEDULED_PROMPTS_MIN_REPLICAS requires within {wait.timeout_ms} ms; it is "
            "applied on the primary, but a failover now could lose it"
        )


W = TypeVar("W", "Eval", "Stream", "Pipeline")

#: Scripts a waiting call has run in this process: the next goes without SCRIPT LOAD (a
#: new primary after a failover answers NOSCRIPT once, and the call is sent again).
_LOADED: set[str] = set()


@dataclass(frozen=True)
class Scope:
    """What every store operation needs: the key names of one shard, and the settings.

    ``Scope(Keys(prefix), settings)`` is shard 0; :meth:`shard`, :meth:`of_user` and
    :meth:`every_shard` give the others. With one shard on one Redis, ``keys`` are
    ``root`` itself: the names a single Redis has always had.
    """

    root: Keys
    settings: Settings
    number: int = 0
    keys: Keys = field(init=False, compare=False)

    def __post_init__(self) -> None:
        tagged = self.settings.cluster
        keys = self.root.shard(self.number, self.settings.shard_count, tagged=tagged)
        object.__setattr__(self, "keys", keys)

    @property
    def shards(self) -> int:
        return self.settings.shard_count

    def shard(self, number: int) -> Scope:
        """Shard ``number``'s scope."""
        return self if number == self.number else Scope(self.root, self.settings, number)

    def of_user(self, user_id: str) -> Scope:
        """The scope of the shard that holds ``user_id``'s prompts."""
        return self.shard(shard_of(user_id, self.shards))

    def every_shard(self) -> list[Scope]:
        """Every shard's scope, in shard order (``[self]`` with one shard)."""
        return [self.shard(n) for n in range(self.shards)]

    def durable(self, op: W) -> W:
        """``op`` (a create, change, claim or commit), made to wait for
        ``SCHEDULED_PROMPTS_MIN_REPLICAS`` replicas; ``op`` itself when that is 0."""
        replicas = self.settings.min_replicas
        if not replicas:
            return op
        return dataclasses.replace(op, wait=Wait(replicas, self.settings.min_replicas_timeout_ms))


#: Most occurrences one CLAIM or COMMIT call takes; a larger batch is split into calls
#: sent in one round trip. Each occurrence costs Redis some 20-120 µs in these scripts
#: (the most with a million prompts stored and the server short of CPU), and a script
#: blocks every other client of the server while it runs: a lot of 25 keeps a call to a
#: few milliseconds (docs/decisions.md, "Short script calls").
LOT = 25
#: Most records one CREATE call writes: some 10-40 µs of Redis each (more as the indexes
#: grow to millions), so a call stays within a few milliseconds.
WRITE_LOT = 100
#: Most occurrences one PROMOTE call moves to in-flight (some 8-40 µs each, the most with
#: a million prompts stored and the server short of CPU).
PROMOTE_LOT = 100


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# Prompts by status (``P:counts``): status_change() notes one record's move from one
# status to another ('' = none: created, deleted) and flush_statuses() writes the sums once
# per call. While a recount runs (its cursor key exists, ``metrics.recount``), the move of
# a record the recount has passed (id <= cursor, bytewise) goes to the hash being rebuilt
# too; a record it has not passed yet is counted when the recount reaches it.
_STATUS = """
local status_moves, recounted_moves, recount_at = {}, {}, nil
local function passed(id, cursor)
  for i = 1, math.min(#id, #cursor) do
    local x, y = string.byte(id, i), string.byte(cursor, i)
    if x ~= y then return x < y end
  end
  return #id <= #cursor
end
local function move(t, from, to)
  if from ~= '' then t[from] = (t[from] or 0) - 1 end
  if to ~= '' then t[to] = (t[to] or 0) + 1 end
end
local function status_change(cursor_key, id, from, to)
  if from == to then return end
  if recount_at == nil then recount_at = redis.call('GET', cursor_key) end
  move(status_moves, from, to)
  if recount_at and passed(id, recount_at) then move(recounted_moves, from, to) end
end
-- Before the first write to an empty store: nothing to recount, the counts start complete.
local function count_from_empty(ids, counts)
  if redis.call('EXISTS', ids) == 0 and redis.call('HEXISTS', counts, 'counted') == 0 then
    local now = redis.call('TIME')
    redis.call('DEL', counts)
    redis.call('HSET', counts, 'counted', now[1] * 1000 + math.floor(now[2] / 1000))
  end
end
local function flush_statuses(counts, rebuilt)
  for s, n in pairs(status_moves) do
    if n ~= 0 then redis.call('HINCRBY', counts, s, n) end
  end
  for s, n in pairs(recounted_moves) do
    if n ~= 0 then redis.call('HINCRBY', rebuilt, s, n) end
  end
end
"""

# Writes one record and every index entry derived from it (the status counts too).
# Shared by PUT and COMMIT so the indexes are maintained by exactly one piece of code.
_WRITE_RECORD = (
    _STATUS
    + """
-- ix: the index keys {ids, due, finished, open, counts, cursor, rebuilt}.
-- indexed: the record is stored already (a commit), so it is in the id and user indexes.
local function write_record(ix, rkey, ukey, id, user, json, due_score, fin_score, delta,
                            indexed, from, to)
  redis.call('SET', rkey, json)
  if not indexed then
    redis.call('ZADD', ix.ids, 0, id)
    redis.call('ZADD', ukey, 0, id)
  end
  if due_score ~= '' then redis.call('ZADD', ix.due, due_score, id)
  else redis.call('ZREM', ix.due, id) end
  if fin_score ~= '' then redis.call('ZADD', ix.finished, fin_score, id)
  else redis.call('ZREM', ix.finished, id) end
  delta = tonumber(delta)
  if delta ~= 0 and redis.call('HINCRBY', ix.open, user, delta) <= 0 then
    redis.call('HDEL', ix.open, user)
  end
  status_change(ix.cursor, id, from, to)
end
local function index_keys(at)
  return {ids = KEYS[at], due = KEYS[at + 1], finished = KEYS[at + 2], open = KEYS[at + 3],
          counts = KEYS[at + 4], cursor = KEYS[at + 5], rebuilt = KEYS[at + 6]}
end
"""
)

# The delivery log (``history.py``): every step a runner call decided goes to a capped
# stream, failed and retried ones to a second; ARGV[1] and ARGV[2] of the calling script
# are their lengths (0 = not kept).
_LOG = """
local function log_step(log, failures, entry, failed)
  if entry == '' then return end
  if tonumber(ARGV[1]) > 0 then
    redis.call('XADD', log, 'MAXLEN', '~', ARGV[1], '*', 'e', entry)
  end
  if failed == '1' and tonumber(ARGV[2]) > 0 then
    redis.call('XADD', failures, 'MAXLEN', '~', ARGV[2], '*', 'e', entry)
  end
end
"""

# Metrics (``metrics.Batch``): the call's last argument lists its distinct fields (JSON
# [["i"|"f", field], ...]); count() adds up one applied step's "index:amount;..." and
# flush_counts() writes each field once at the end (a batch of 200 deliveries shares a
# handful of fields).
_COUNT = """
local counted_ints, counted_floats = {}, {}
local counted_fields = nil
local function count(spec)
  if spec == nil or spec == '' then return end
  if counted_fields == nil then counted_fields = cjson.decode(ARGV[#ARGV]) end
  for at, amount in string.gmatch(spec, '(%d+):([^;]+)') do
    local f = counted_fields[tonumber(at) + 1]
    local into = counted_ints
    if f[1] == 'f' then into = counted_floats end
    into[f[2]] = (into[f[2]] or 0) + tonumber(amount)
  end
end
local function flush_counts(metrics)
  for f, v in pairs(counted_ints) do redis.call('HINCRBY', metrics, f, v) end
  for f, v in pairs(counted_floats) do
    redis.call('HINCRBYFLOAT', metrics, f, string.format('%.17g', v))
  end
end
"""

PUT = Script(
    _WRITE_RECORD
    + """
-- Writes a batch of records and their index entries, all or nothing.
-- KEYS: ids, due, finished, open-counts, status counts, recount cursor, recount hash,
--       then per record: record key, user index key, lease key.
-- ARGV: quota ('' = none), then per record 9 values:
--   id, user_id, expected ('' = must not exist; else the exact stored JSON),
--   new JSON, due score ('' = not due), finished score ('' = not finished),
--   open delta (-1, 0, 1: change of the user's live+paused count),
--   stored status ('' = none), new status.
-- Order: every check first (existence/compare-and-set, no delivery in progress, quota),
-- then every write. A change never lands while a delivery of the prompt holds its lease,
-- so once a cancel, pause or update returns, no delivery of the old state can follow.
-- Returns {'ok'} | {'exists', i, stored} | {'changed', i, stored or ''}
--       | {'leased', i, pttl} | {'quota', user}.
local quota = ARGV[1]
local ix = index_keys(1)
local n = (#KEYS - 7) / 3
for i = 1, n do
  local a = 1 + (i - 1) * 9
  local k = 5 + 3 * i
  local stored = redis.call('GET', KEYS[k])
  local expected = ARGV[a + 3]
  if expected == '' then
    if stored then return {'exists', i, stored} end
  elseif stored ~= expected then
    return {'changed', i, stored or ''}
  else
    local held = redis.call('PTTL', KEYS[k + 2])
    if held ~= -2 then return {'leased', i, held} end
  end
end
if quota ~= '' then
  local adds = {}
  for i = 1, n do
    local a = 1 + (i - 1) * 9
    local delta = tonumber(ARGV[a + 7])
    if delta > 0 then adds[ARGV[a + 2]] = (adds[ARGV[a + 2]] or 0) + delta end
  end
  for user, delta in pairs(adds) do
    local have = tonumber(redis.call('HGET', ix.open, user) or '0')
    if have + delta > tonumber(quota) then return {'quota', user} end
  end
end
count_from_empty(ix.ids, ix.counts)
for i = 1, n do
  local a = 1 + (i - 1) * 9
  local k = 5 + 3 * i
  write_record(ix, KEYS[k], KEYS[k + 1], ARGV[a + 1], ARGV[a + 2], ARGV[a + 4], ARGV[a + 5],
               ARGV[a + 6], ARGV[a + 7], false, ARGV[a + 8], ARGV[a + 9])
end
flush_statuses(ix.counts, ix.rebuilt)
return {'ok'}
"""
)

CREATE = Script(
    _STATUS
    + """
-- Creates new live records and their index entries, all or nothing: the PUT of a
-- prompt that does not exist yet, with fewer arguments (a new record is live, due, and
-- opens one slot of its user's quota), so that schedule_many spends little per prompt.
-- KEYS: ids, due, open-counts, status counts, recount cursor, recount hash, then per
--       record: record key, user index key.
-- ARGV: quota ('' = none), then per record 5 values: id, user_id, JSON, due score, status.
-- Returns {'ok'} | {'exists', i, stored} | {'quota', user}.
local n = (#KEYS - 6) / 2
for i = 1, n do
  local stored = redis.call('GET', KEYS[5 + 2 * i])
  if stored then return {'exists', i, stored} end
end
local adds, users = {}, {}
for i = 1, n do
  local user = ARGV[5 * i - 2]
  if not adds[user] then adds[user] = 0; users[#users + 1] = user end
  adds[user] = adds[user] + 1
end
if ARGV[1] ~= '' then
  for _, user in ipairs(users) do
    local have = tonumber(redis.call('HGET', KEYS[3], user) or '0')
    if have + adds[user] > tonumber(ARGV[1]) then return {'quota', user} end
  end
end
count_from_empty(KEYS[1], KEYS[4])
-- Index entries go in variadic ZADDs, in chunks that stay within Lua's stack.
local ids, due = {}, {}
local function flush()
  if #ids > 0 then
    redis.call('ZADD', KEYS[1], unpack(ids)); redis.call('ZADD', KEYS[2], unpack(due))
    ids, due = {}, {}
  end
end
for i = 1, n do
  local a = 5 * (i - 1) + 1
  local id = ARGV[a + 1]
  redis.call('SET', KEYS[5 + 2 * i], ARGV[a + 3])
  redis.call('ZADD', KEYS[6 + 2 * i], 0, id)
  ids[#ids + 1] = 0; ids[#ids + 1] = id
  due[#due + 1] = ARGV[a + 4]; due[#due + 1] = id
  status_change(KEYS[5], id, '', ARGV[a + 5])
  if #ids >= 2000 then flush() end
end
flush()
for _, user in ipairs(users) do redis.call('HINCRBY', KEYS[3], user, adds[user]) end
flush_statuses(KEYS[4], KEYS[6])
return {'ok'}
"""
)

COMMIT = Script(
    _WRITE_RECORD
    + _COUNT
    + _LOG
    + """
-- Records the outcomes of deliveries: per outcome the new record and the end of the
-- occurrence's claim, in one step. Compare-and-set against the JSON the deliverer read.
-- KEYS: ids, due, finished, open-counts, status counts, recount cursor, recount hash,
--       inflight, metrics, delivery log, failure log, then per outcome: record, user
--       index, lease, done; last, for a detached run, its lease.
-- ARGV: delivery log length, failure log length, then per outcome 15 values: expected
--       JSON, id, user_id, new JSON, due score, finished score, open delta, lease token,
--       in-flight key, done TTL ms ('' = no done marker), metrics ('' = none), stored
--       status, new status, log entry ('' = none), '1' if a failure; then, for a
--       detached run, JSON [in-flight key, deadline ms, lease ms, running zset or ''];
--       last, the metrics fields.
-- Writes: record + indexes, then the lease is dropped if still ours, the occurrence
-- leaves the in-flight set, (triggers, detached runs) the done marker is set, the
-- metrics counted and the step logged. A detached run (``overlap="allow"``: one outcome,
-- the record moved on as the run starts) takes over the claim: in flight by its
-- deadline, its lease taken with the same token, counted running for a concurrency cap.
-- Returns per outcome 'ok' | 'changed' ('ok' too when the record already is the new
-- JSON: a retry after a lost reply does not apply the outcome, nor count it, twice).
local ix = index_keys(1)
local out = {}
local outcomes = math.floor((#KEYS - 11) / 4)
local run = nil
if #KEYS > 11 + 4 * outcomes then run = cjson.decode(ARGV[#ARGV - 1]) end
for i = 1, outcomes do
  local k = 11 + 4 * (i - 1)
  local a = 2 + 15 * (i - 1)
  local stored = redis.call('GET', KEYS[k + 1])
  if stored == ARGV[a + 4] then
    out[i] = 'ok'
  elseif stored ~= ARGV[a + 1] then
    out[i] = 'changed'
  else
    write_record(ix, KEYS[k + 1], KEYS[k + 2], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
                 ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], true, ARGV[a + 12], ARGV[a + 13])
    if redis.call('GET', KEYS[k + 3]) == ARGV[a + 8] then redis.call('DEL', KEYS[k + 3]) end
    redis.call('ZREM', KEYS[8], ARGV[a + 9])
    if ARGV[a + 10] ~= '' then redis.call('SET', KEYS[k + 4], '1', 'PX', ARGV[a + 10]) end
    if run then
      redis.call('ZADD', KEYS[8], run[2], run[1])
      redis.call('SET', KEYS[#KEYS], ARGV[a + 8], 'PX', run[3])
      if run[4] ~= '' then redis.call('ZADD', run[4], run[2], run[1]) end
    end
    count(ARGV[a + 11])
    log_step(KEYS[10], KEYS[11], ARGV[a + 14], ARGV[a + 15])
    out[i] = 'ok'
  end
end
flush_counts(KEYS[9])
flush_statuses(ix.counts, ix.rebuilt)
return out
"""
)

CLAIM = Script(
    """
-- Claims occurrences for delivery. Guarantees: at most one holder of a prompt's lease at
-- a time; a claim succeeds only while the record still schedules this occurrence (live,
-- next_run_at equal to it) - or, for a trigger or a detached run (``overlap="allow"``),
-- while the prompt is not cancelled and it was not delivered before - and while its
-- platform is within its limits
-- (``limits.py``: on Redis's clock, so one clock for every worker).
-- KEYS: inflight, metrics, then per occurrence: record, lease (the prompt's, or a
--       detached run's own), done.
-- ARGV: token, lease ms, re-drive deadline ms, the newest schema version this code reads
--       (it reads every version from 1 to it),
--       platform limits (JSON {platform: [interval ms, burst tolerance ms, concurrency]},
--       '' = none), key prefix, then per occurrence: expected next_run_at epoch ms (''
--       for a trigger or a detached run), in-flight key, the rate slot it holds (ms,
--       '' = none).
-- Returns per occurrence two values: 'ok', record JSON | 'busy', lease pttl
--   | 'wait', 'ms:slot' (over a limit: come back in ms, holding that rate slot, '' if
--   none) | 'stale', '' | 'gone', '' | 'done', '' | 'unreadable', '' (not JSON, or
--   another schema version: left as it is). Every outcome but 'ok', 'busy' and 'wait'
--   takes the key out of the in-flight set; 'ok' moves its re-drive deadline, 'wait'
--   pushes it back by the wait. Metrics: 'redelivered' for every message of an
--   occurrence delivered already (a broker handing it out again), 'skipped' once per
--   occurrence no longer due (by the step that takes it out of the in-flight set),
--   'limited' per wait.
local inflight, metrics, token, lease, deadline = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local schema = tonumber(ARGV[4])
local limits = nil
if ARGV[5] ~= '' then limits = cjson.decode(ARGV[5]) end
local prefix = ARGV[6]
local clock = nil
local function now_ms()
  if clock == nil then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end
local function drop(key, outcome, platform)
  if redis.call('ZREM', inflight, key) == 1 or outcome == 'redelivered' then
    redis.call('HINCRBY', metrics, cjson.encode({'deliveries', outcome, platform or ''}), 1)
  end
end
-- The generic cell rate algorithm on one key: when the next event may go (ms) and, if
-- that is now (or ``only_if_now`` is false: a reservation), the key moved past it.
local function gcra(key, limit, now, only_if_now)
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
  local at = tat - limit[2]
  if only_if_now and at > now then return at end
  redis.call('SET', key, string.format('%.3f', tat + limit[1]), 'PX',
             math.ceil(tat + limit[1] - now) + 1000)
  return at
end
-- Whether a platform limit holds this occurrence back: nil, or which limit, how many ms
-- to wait and the rate slot it holds meanwhile.
local function limited(platform, slot)
  local limit = limits and limits[platform]
  if not limit then return nil end
  local now = now_ms()
  if limit[3] > 0 then
    -- Its prompts whose lease is still held (claimed, not yet committed or released).
    local running = prefix .. 'running:' .. platform
    local held = 0
    for _, other in ipairs(redis.call('ZRANGE', running, 0, -1)) do
      if redis.call('EXISTS', prefix .. 'lease:' .. other) == 1 then held = held + 1
      else redis.call('ZREM', running, other) end
    end
    if held >= limit[3] then return 'concurrency', 500, slot end
  end
  if limit[1] > 0 then
    local key = prefix .. 'rate:' .. platform
    if slot ~= '' then
      local left = tonumber(slot) - now
      if left > 0 then return 'rate', left, slot end
    else
      -- Reserve the next free slot: so occurrences over the rate come back in the order
      -- they were claimed. A generic cell rate algorithm (tat: the theoretical arrival
      -- time of the next one); up to the burst tolerance of it may be taken ahead.
      local at = gcra(key, limit, now)
      slot = string.format('%d', math.floor(at))
      if at > now then return 'rate', at - now, string.format('%d', math.ceil(at)) end
    end
    -- Admit: the same algorithm over the claims that actually go, so occurrences that
    -- come back late (a busy worker) cannot bunch up above the rate.
    local at = gcra(key .. ':admitted', limit, now, true)
    if at > now then return 'rate', at - now, slot end
  end
  return nil
end
local function claim(rkey, lkey, dkey, expected, key, slot)
  local raw = redis.call('GET', rkey)
  if not raw then drop(key, 'skipped'); return 'gone', '' end
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' then rec = {} end
  if redis.call('EXISTS', dkey) == 1 then
    drop(key, 'redelivered', rec.platform); return 'done', ''
  end
  if not ok or type(rec.schema) ~= 'number' or rec.schema < 1 or rec.schema > schema then
    drop(key, 'skipped', rec.platform); return 'unreadable', ''
  end
  local live = rec.status == 'scheduled' or rec.status == 'active'
  -- An accepted trigger is delivered unless the prompt was cancelled since (a one-time
  -- prompt that executed meanwhile still gets it).
  if expected == '' then live = rec.status ~= 'cancelled'
  else live = live and rec.next_run_at == tonumber(expected) end
  if not live then
    -- Ran at or after this occurrence's time: it was delivered (a message seen again).
    local ran = expected ~= '' and type(rec.last_execution) == 'number'
      and rec.last_execution >= tonumber(expected)
    drop(key, ran and 'redelivered' or 'skipped', rec.platform); return 'stale', ''
  end
  if redis.call('EXISTS', lkey) == 1 then
    return 'busy', tostring(redis.call('PTTL', lkey))
  end
  local why, wait, held = limited(rec.platform, slot)
  if why then
    redis.call('ZADD', inflight, 'XX', tonumber(deadline) + math.ceil(wait), key)
    redis.call('HINCRBY', metrics, cjson.encode({'limited', rec.platform, why}), 1)
    return 'wait', string.format('%d', math.ceil(wait)) .. ':' .. held
  end
  redis.call('SET', lkey, token, 'PX', lease)
  if limits and limits[rec.platform] and limits[rec.platform][3] > 0 then
    -- The member is what follows 'lease:' in the lease key: the id, or a detached run's
    -- key (``overlap="allow"``), so the count above finds its lease again.
    local member = string.sub(lkey, #prefix + 7)
    redis.call('ZADD', prefix .. 'running:' .. rec.platform, now_ms(), member)
  end
  redis.call('ZADD', inflight, deadline, key)
  return 'ok', raw
end
local out = {}
for i = 1, (#KEYS - 2) / 3 do
  local a = 4 + 3 * i
  local state, detail = claim(KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2], ARGV[a],
                              ARGV[a + 1], ARGV[a + 2])
  out[#out + 1] = state
  out[#out + 1] = detail
end
return out
"""
)

RENEW = Script(
    """
-- Extends the leases still held with ARGV[1] (a long runner call, and a batch's later
-- occurrences, stay claimed) and moves their re-drive deadlines (so a delivery still in
-- progress is not re-driven; only ever later). KEYS: inflight, then the lease keys.
-- ARGV: token, lease ms, re-drive deadline ms, then per lease its in-flight key.
-- Returns per lease 1 (renewed) or 0 (lost: it expired, another deliverer may hold it).
local out = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    redis.call('ZADD', KEYS[1], 'XX', 'GT', ARGV[3], ARGV[i + 2])
    out[i - 1] = 1
  else out[i - 1] = 0 end
end
return out
"""
)

RELEASE = Script(
    _COUNT
    + _LOG
    + """
-- Gives a claim back (the runner failed or is missing): deletes the lease only if the
-- token is ours (and then counts and logs the step: once, even if this is sent again),
-- and moves the occurrence's re-drive deadline ('' = keep it).
-- KEYS: lease, inflight, metrics, delivery log, failure log.
-- ARGV: delivery log length, failure log length, token, idempotency key, deadline ms,
--       metrics, log entry ('' = none), '1' if a failure, metrics fields.
if redis.call('GET', KEYS[1]) == ARGV[3] then
  redis.call('DEL', KEYS[1])
  count(ARGV[6])
  flush_counts(KEYS[3])
  log_step(KEYS[4], KEYS[5], ARGV[7], ARGV[8])
end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[2], 'XX', ARGV[5], ARGV[4]) end
return 1
"""
)

TICKED = Script(
    _COUNT
    + """
-- A tick finished: records when (for doctor and the exporter) and how long it took.
-- KEYS: beat, metrics, status counts. ARGV: epoch ms, metrics, metrics fields.
-- Returns 1 if the status counts are complete, 0 if a recount is still to do.
redis.call('SET', KEYS[1], ARGV[1])
count(ARGV[2])
flush_counts(KEYS[2])
return redis.call('HEXISTS', KEYS[3], 'counted')
"""
)

PROMOTE = Script(
    """
-- Moves occurrences due by ARGV[1] from the due index to the in-flight set, so each is
-- handed to Celery once. An occurrence already in flight is not returned again.
-- KEYS: due, inflight. ARGV: until ms, limit, re-drive delay ms, now ms, [ids...].
-- With ids, only those are considered (a just-written prompt); else the earliest due.
-- The re-drive deadline counts from the occurrence, or from now for an overdue one (so
-- the same tick's re-drive does not publish it a second time).
-- Returns a flat list: how many due entries were taken, then id, occurrence ms, ...
local until_ms = tonumber(ARGV[1])
local now_ms = tonumber(ARGV[4])
local rows
if #ARGV > 4 then
  rows = {}
  for i = 5, #ARGV do
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if score and tonumber(score) <= until_ms then
      rows[#rows + 1] = ARGV[i]; rows[#rows + 1] = score
    end
  end
else
  rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', until_ms, 'WITHSCORES', 'LIMIT', 0,
                    ARGV[2])
end
local out = {#rows / 2}
for i = 1, #rows, 2 do
  local id, score = rows[i], rows[i + 1]
  redis.call('ZREM', KEYS[1], id)
  local key = id .. ':' .. string.format('%d', tonumber(score))
  if not redis.call('ZSCORE', KEYS[2], key) then
    redis.call('ZADD', KEYS[2], math.max(tonumber(score), now_ms) + tonumber(ARGV[3]), key)
    out[#out + 1] = id; out[#out + 1] = string.format('%d', tonumber(score))
  end
end
return out
"""
)

TRACK = Script(
    """
-- Puts a trigger in flight unless that key is in flight or was delivered already.
-- KEYS: inflight, done marker. ARGV: deadline ms, idempotency key. Returns 1 if added.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2])
"""
)

REDRIVE = Script(
    """
-- Takes occurrences whose re-drive deadline passed (their task was lost, or their
-- deliverer died) and moves each deadline to ARGV[3], so one tick re-drives each.
-- KEYS: inflight. ARGV: now ms, limit, new deadline ms. Returns the idempotency keys.
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, key in ipairs(rows) do redis.call('ZADD', KEYS[1], ARGV[3], key) end
return rows
"""
)

SIBLINGS = Script(
    """
-- Takes up to ARGV[2] scheduled occurrences due at the instant ARGV[3] that still wait in
-- flight for tasks of their own (re-drive deadline ARGV[1]: set by PROMOTE, not moved by
-- a claim), other than ARGV[4], and moves each deadline to ARGV[5] (a later one): two
-- tasks looking at once take different ones. One taken by a task that dies before
-- claiming it is still delivered by its own task, or re-driven after ARGV[5].
-- ARGV[4] itself is taken the same way first (its task claims it next); when another
-- task's lookup or claim took it already, one more is taken in its place: the batch
-- stays full.
-- KEYS: inflight. Returns the idempotency keys taken.
local suffix = ':' .. ARGV[3]
local limit = tonumber(ARGV[2])
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[4]) or '-1') == tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[5], ARGV[4])
else
  limit = limit + 1
end
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'LIMIT', 0, limit)
local out = {}
for _, key in ipairs(rows) do
  -- '{id}:{ms}' only: a trigger ('{id}:trigger:{ms}') or a detached run ('...:run') is
  -- never taken along.
  local colon = string.find(key, ':', 1, true)
  if colon == #key - #suffix + 1 and string.sub(key, colon) == suffix then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[5], key)
    out[#out + 1] = key
  end
end
return out
"""
)

LOCK = Script(
    """
-- Token-checked lock. KEYS: lock. ARGV: token, ttl ms ('' = release).
if ARGV[2] == '' then
  if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
  return 0
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
)

DELETE = Script(
    _STATUS
    + """
-- Deletes terminal records that are still exactly as read, with their index entries.
-- KEYS: ids, due, finished, status counts, recount cursor, recount hash, then per
--       record: record key, user index key.
-- ARGV: per record 3 values: id, expected JSON, its status. A record that changed is kept.
-- Returns the number deleted.
local deleted = 0
local n = (#KEYS - 6) / 2
for i = 1, n do
  local id = ARGV[3 * i - 2]
  if redis.call('GET', KEYS[5 + 2 * i]) == ARGV[3 * i - 1] then
    redis.call('DEL', KEYS[5 + 2 * i])
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZREM', KEYS[6 + 2 * i], id)
    status_change(KEYS[5], id, ARGV[3 * i], '')
    deleted = deleted + 1
  end
end
flush_statuses(KEYS[4], KEYS[6])
return deleted
"""
)

RECOUNT = Script(
    """
-- One page of a recount of the prompts by status (``metrics.recount``): counts the
-- records after the cursor into the hash being rebuilt and moves the cursor; after the
-- last page the rebuilt hash replaces the counts, stamped with ARGV[3] ('counted').
-- Writes meanwhile keep both hashes right (``_STATUS``).
-- KEYS: ids, status counts, recount cursor, recount hash.
-- ARGV: page size, record key prefix, now ms, '1' to start (over).
-- Returns {'idle' | 'more' | 'done', records counted}.
if ARGV[4] == '1' then
  redis.call('SET', KEYS[3], ''); redis.call('DEL', KEYS[4])
end
local cursor = redis.call('GET', KEYS[3])
if not cursor then return {'idle', 0} end
local from = '-'
if cursor ~= '' then from = '(' .. cursor end
local ids = redis.call('ZRANGEBYLEX', KEYS[1], from, '+', 'LIMIT', 0, ARGV[1])
local tally = {}
for _, id in ipairs(ids) do
  local raw = redis.call('GET', ARGV[2] .. id)
  if raw then
    local ok, rec = pcall(cjson.decode, raw)
    local status = 'unreadable'
    if ok and type(rec) == 'table' and type(rec.status) == 'string' then status = rec.status end
    tally[status] = (tally[status] or 0) + 1
  end
end
for status, n in pairs(tally) do redis.call('HINCRBY', KEYS[4], status, n) end
if #ids == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[3], ids[#ids])
  return {'more', #ids}
end
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('RENAME', KEYS[4], KEYS[2])
else redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[2], 'counted', ARGV[3])
redis.call('DEL', KEYS[3])
return {'done', #ids}
"""
)


def as_text(value: str | bytes | int) -> str:
    """A reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def as_mapping(reply: Any) -> dict[str, str]:
    """A field/value reply (HGETALL, a stream entry's fields) as text: redis-py gives a
    dict, a bare command (a pipeline, the asyncio driver) a flat list of pairs."""
    if isinstance(reply, Mapping):
        return {as_text(k): as_text(v) for k, v in reply.items()}
    items = list(reply or [])
    return {as_text(k): as_text(v) for k, v in zip(items[::2], items[1::2], strict=True)}


def as_scored(reply: Any) -> list[tuple[str, float]]:
    """A ``WITHSCORES`` reply as (member, score) pairs: redis-py pairs them up, or a flat
    list when no callback knew the command."""
    items = list(reply or [])
    if items and not isinstance(items[0], list | tuple):
        items = list(zip(items[::2], items[1::2], strict=True))
    return [(as_text(m), float(sc)) for m, sc in items]


def first_scored(key: str, max_score: int, count: int) -> tuple[str | int, ...]:
    """The command for :class:`RangeByScore`'s first page, for a :class:`Commands` that
    reads several keys in one round trip (its reply goes through :func:`as_scored`)."""
    return ("ZRANGEBYSCORE", key, "-inf", max_score, "WITHSCORES", "LIMIT", 0, count)


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster's (sync or asyncio), typed as ``Redis``."""
    return isinstance(client, RedisCluster | AsyncRedisCluster)


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
    """One script call; with ``wait``, followed by ``WAIT`` in the same round trip."""

    script: Script
    keys: Sequence[str]
    args: Sequence[str | int | float]
    wait: Wait | None = None

    def run(self, redis: Redis) -> Any:
        if self.wait is not None:
            return self._run_waiting(redis, self.wait)
        try:
            return redis.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args)
        except NoScriptError:
            redis.script_load(self.script.source)
            return redis.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args)

    async def arun(self, redis: AsyncRedis) -> Any:
        if self.wait is not None:
            return await self._arun_waiting(redis, self.wait)
        try:
            return await redis.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args)
        except NoScriptError:
            await redis.script_load(self.script.source)
            return await redis.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args)

    # WAIT counts the replicas that acknowledged the writes of *its own connection*: the
    # script and WAIT go down one connection, as a pipeline. A script this process has not
    # run yet is loaded in the same round trip (a NOSCRIPT would cost a second WAIT).

    def _waiting_pipe(self, redis: Any, wait: Wait, load: bool) -> Any:
        pipe = redis.pipeline(transaction=False)
        if load:
            pipe.script_load(self.script.source)
        pipe.evalsha(self.script.sha, len(self.keys), *self.keys, *self.args)
        pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
        return pipe

    def _waited(self, replies: list[Any], wait: Wait) -> Any:
        *_, result, acknowledged = replies
        _LOADED.add(self.script.sha)
        wait.check(acknowledged)
        return result

    def _run_waiting(self, redis: Redis, wait: Wait) -> Any:
        load = self.script.sha not in _LOADED
        try:
            return self._waited(self._waiting_pipe(redis, wait, load).execute(), wait)
        except NoScriptError:  # a new primary without the script: the call did not run
            return self._waited(self._waiting_pipe(redis, wait, True).execute(), wait)

    async def _arun_waiting(self, redis: AsyncRedis, wait: Wait) -> Any:
        load = self.script.sha not in _LOADED
        try:
            return self._waited(await self._waiting_pipe(redis, wait, load).execute(), wait)
        except NoScriptError:
            return self._waited(await self._waiting_pipe(redis, wait, True).execute(), wait)


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
        return [as_text(m) for m in redis.zrangebylex(self.key, low, high, start=0, num=self.count)]

    async def arun(self, redis: AsyncRedis) -> list[str]:
        low, high = self._bounds()
        members = await redis.zrangebylex(self.key, low, high, start=0, num=self.count)
        return [as_text(m) for m in members]


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
        return [(as_text(m), float(s)) for m, s in cast(list[tuple[Any, Any]], rows)]

    async def arun(self, redis: AsyncRedis) -> list[tuple[str, float]]:
        rows = await redis.zrangebyscore(
            self.key, "-inf", self.max_score, start=self.offset, num=self.count, withscores=True
        )
        return [(as_text(m), float(s)) for m, s in cast(list[tuple[Any, Any]], rows)]


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
class Command(Op):
    """One plain command (``GET``, ``SET``, ``ZCARD``, ``ZRANGE``…); the reply as the
    client gives it (text or bytes, as the client decodes)."""

    args: Sequence[str | int | float]

    def run(self, redis: Redis) -> Any:
        return redis.execute_command(*self.args)  # type: ignore[no-untyped-call]

    async def arun(self, redis: AsyncRedis) -> Any:
        return await redis.execute_command(*self.args)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Refusable(Op):
    """``op``, whose refusal by Redis (an error reply, e.g. a disabled command) is its
    result instead of an error; a lost connection still raises."""

    op: Op

    def run(self, redis: Redis) -> Any:
        try:
            return self.op.run(redis)
        except ResponseError as exc:
            return exc

    async def arun(self, redis: AsyncRedis) -> Any:
        try:
            return await self.op.arun(redis)
        except ResponseError as exc:
            return exc


@dataclass(frozen=True)
class Sleep(Op):
    """Wait (no Redis): lets a plan back off, blocking a thread or yielding to a loop."""

    seconds: float

    def run(self, redis: Redis) -> None:
        time.sleep(self.seconds)

    async def arun(self, redis: AsyncRedis) -> None:
        await asyncio.sleep(self.seconds)


@dataclass(frozen=True)
class Pipeline(Op):
    """Several operations in one round trip (no transaction: each is atomic by itself).
    A single one goes as itself: an ``EVALSHA`` without the pipeline's ``SCRIPT LOAD``."""

    ops: Sequence[Eval]
    wait: Wait | None = None

    # SCRIPT LOAD goes first in the same pipeline, so no EVALSHA can meet NOSCRIPT.

    def _fill(self, pipe: Any) -> None:
        for source in {op.script.source for op in self.ops}:
            pipe.script_load(source)
        for op in self.ops:
            pipe.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)
        if self.wait is not None:
            pipe.execute_command("WAIT", self.wait.replicas, self.wait.timeout_ms)

    def _results(self, replies: list[Any]) -> list[Any]:
        if not self.ops:
            return []
        if self.wait is not None:
            self.wait.check(replies.pop())
        return replies[-len(self.ops) :]

    def _alone(self) -> Eval | None:
        if len(self.ops) != 1:
            return None
        return dataclasses.replace(self.ops[0], wait=self.wait)

    def run(self, redis: Redis) -> list[Any]:
        if (alone := self._alone()) is not None:
            return [alone.run(redis)]
        if is_cluster(redis):
            return _cluster_evals(redis, self.ops)
        pipe = redis.pipeline(transaction=False)
        self._fill(pipe)
        return self._results(list(pipe.execute()))

    async def arun(self, redis: AsyncRedis) -> list[Any]:
        if (alone := self._alone()) is not None:
            return [await alone.arun(redis)]
        if is_cluster(redis):
            return await _acluster_evals(redis, self.ops)
        pipe = redis.pipeline(transaction=False)
        self._fill(pipe)
        return self._results(list(await pipe.execute()))


# A Redis Cluster pipeline sends each call to the node of its keys' slot, and cannot
# carry SCRIPT LOAD: scripts are loaded on every primary first (once per process), and a
# call a primary answers NOSCRIPT (one promoted since) did not run — it is run again
# alone, which loads the script where it is missing.


def _not_loaded(ops: Sequence[Eval]) -> dict[str, str]:
    return {op.script.sha: op.script.source for op in ops if op.script.sha not in _LOADED}


def _cluster_replies(ops: Sequence[Eval], replies: list[Any]) -> list[tuple[Eval, Any]]:
    """(op, reply) pairs; raises the first error other than NOSCRIPT."""
    for reply in replies:
        if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
            raise reply
    return list(zip(ops, replies, strict=True))


def _cluster_evals(redis: Any, ops: Sequence[Eval]) -> list[Any]:
    for sha, source in _not_loaded(ops).items():
        redis.script_load(source)
        _LOADED.add(sha)
    pipe = redis.pipeline(transaction=False)
    for op in ops:
        pipe.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)
    pairs = _cluster_replies(ops, list(pipe.execute(raise_on_error=False)) if ops else [])
    return [op.run(redis) if isinstance(r, NoScriptError) else r for op, r in pairs]


async def _acluster_evals(redis: Any, ops: Sequence[Eval]) -> list[Any]:
    for sha, source in _not_loaded(ops).items():
        await redis.script_load(source)
        _LOADED.add(sha)
    pipe = redis.pipeline(transaction=False)
    for op in ops:
        pipe.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)
    replies = list(await pipe.execute(raise_on_error=False)) if ops else []
    return [
        (await op.arun(redis)) if isinstance(r, NoScriptError) else r
        for op, r in _cluster_replies(ops, replies)
    ]


@dataclass(frozen=True)
class Commands(Op):
    """Plain commands in one round trip per Redis node (a pipeline, no transaction): how
    a read spans shards, whose keys a Redis Cluster keeps on different nodes."""

    commands: Sequence[Sequence[str | int | float]]

    def run(self, redis: Redis) -> list[Any]:
        if not self.commands:
            return []
        pipe: Any = redis.pipeline(transaction=False)
        for command in self.commands:
            pipe.execute_command(*command)
        return list(pipe.execute())

    async def arun(self, redis: AsyncRedis) -> list[Any]:
        if not self.commands:
            return []
        pipe = redis.pipeline(transaction=False)
        for command in self.commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())


@dataclass(frozen=True)
class Stream(Op):
    """Script calls sent as ``ops`` yields them, replies read after the last one.

    A pipeline whose building overlaps its execution: Redis runs one call while Python
    builds the next (``ops`` is typically a generator serialising records), so bulk
    writes cost max(Python, Redis) rather than their sum. Each call is atomic by itself.
    """

    ops: Iterable[Eval]
    wait: Wait | None = None

    def run(self, redis: Redis) -> list[Any]:
        if is_cluster(redis):  # no one connection: calls go to their nodes
            return Pipeline(list(self.ops), self.wait).run(redis)
        pool = redis.connection_pool
        conn: Any = pool.get_connection()  # redis-py's Connection is untyped
        wanted: list[bool] = []  # per command sent: is its reply one to return
        loaded: set[str] = set()
        try:
            for op in self.ops:
                if op.script.sha not in loaded:  # so that no EVALSHA meets NOSCRIPT
                    conn.send_command("SCRIPT", "LOAD", op.script.source)
                    loaded.add(op.script.sha)
                    wanted.append(False)
                conn.send_command("EVALSHA", op.script.sha, len(op.keys), *op.keys, *op.args)
                wanted.append(True)
            wait = self.wait if wanted else None  # nothing written: nothing to wait for
            if wait is not None:
                conn.send_command("WAIT", wait.replicas, wait.timeout_ms)
            replies = [conn.read_response() for _ in wanted]
            acknowledged = conn.read_response() if wait is not None else None
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse this connection
            raise
        finally:
            pool.release(conn)
        if wait is not None:
            wait.check(acknowledged)
        return [reply for reply, keep in zip(replies, wanted, strict=True) if keep]

    async def arun(self, redis: AsyncRedis) -> list[Any]:
        return await Pipeline(list(self.ops), self.wait).arun(redis)


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


def record_indexes(keys: Keys) -> list[str]:
    """The index keys a record write maintains, in the order ``index_keys`` reads them."""
    return [keys.ids, keys.due, keys.finished, keys.open_counts, *status_keys(keys)]


def status_keys(keys: Keys) -> list[str]:
    """The status counts, the recount cursor and the hash a recount rebuilds."""
    return [keys.counts, keys.recount_cursor, keys.recount_next]


def put_op(keys: Keys, puts: Sequence[Put], quota: int | None) -> Eval:
    """The :data:`PUT` script call writing ``puts`` atomically."""
    script_keys = record_indexes(keys)
    args: list[str | int | float] = ["" if quota is None else str(quota)]
    for put in puts:
        rec, old = put.record, put.old
        if (old is None) != (put.expected is None):
            raise ValueError("a Put replacing a record carries the record it read (old)")
        due, finished = index_entries(rec)
        delta = int(rec.status.is_open) - int(old is not None and old.status.is_open)
        was = "" if old is None else old.status.value
        script_keys += [keys.prompt(rec.id), keys.user(rec.user_id), keys.lease(rec.id)]
        args += [rec.id, rec.user_id, put.expected or "", rec.to_json(), due, finished, delta,
                 was, rec.status.value]  # fmt: skip
    return Eval(PUT, script_keys, args)


def create_op(keys: Keys, records: Sequence[ScheduledPrompt], quota: int | None) -> Eval:
    """The :data:`CREATE` script call writing new live ``records`` atomically."""
    script_keys = [keys.ids, keys.due, keys.open_counts, *status_keys(keys)]
    args: list[str | int | float] = ["" if quota is None else str(quota)]
    prompt_key, user_key = keys.prompt, keys.user
    for rec in records:
        if not rec.status.is_live or rec.next_run_at is None:
            raise ValueError(f"create_op writes live records only, not {rec.status}")
        script_keys += [prompt_key(rec.id), user_key(rec.user_id)]
        args += [rec.id, rec.user_id, rec.to_json(), to_ms(rec.next_run_at), rec.status.value]
    return Eval(CREATE, script_keys, args)


def delete_op(keys: Keys, items: Sequence[tuple[ScheduledPrompt, str]]) -> Eval:
    """The :data:`DELETE` script call for (record, stored JSON) pairs."""
    script_keys = [keys.ids, keys.due, keys.finished, *status_keys(keys)]
    args: list[str | int | float] = []
    for record, raw in items:
        script_keys += [keys.prompt(record.id), keys.user(record.user_id)]
        args += [record.id, raw, record.status.value]
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
