"""Every Redis key the project writes, in one place.

Layout (``P`` is the configured prefix, default ``sp``):

=========================  =======  ====================================================
key                        type     holds
=========================  =======  ====================================================
``P:prompt:{id}``          string   the record, compact JSON (one per prompt)
``P:ids``                  zset     every id, score 0: lexicographic pages (cursor = id)
``P:due``                  zset     live prompts, scored by next occurrence (epoch ms)
``P:user:{user_id}``       zset     one user's ids, score 0: listing is O(that user)
``P:open``                 hash     user_id -> count of live + paused prompts (quota)
``P:finished``             zset     terminal prompts, scored by finish time (epoch ms)
``P:inflight``             zset     occurrences handed to Celery, by re-drive deadline
``P:lease:{id}``           string   the claim of the delivery in progress (token), expires
``P:lease:{id}:{ms}:run``  string   the claim of an ``overlap="allow"`` run in progress
``P:done:{occurrence}``    string   a delivered trigger or ``allow`` run (the schedule did
                                    not move as it ended)
``P:lock:hydrate``         string   hydration lock (token), expires by itself
``P:beat``                 string   epoch ms of the last tick (for ``doctor``)
``P:metrics``              hash     delivery and tick counters (``metrics.py``)
``P:counts``               hash     prompts by status, kept by every write (``metrics.py``)
``P:counts:cursor``        string   a recount's position in ``P:ids`` (while one runs)
``P:counts:next``          hash     the counts a recount is rebuilding (while one runs)
``P:rate:{platform}``      string   a rate-limited platform's next free slot (``limits.py``)
``P:running:{platform}``   zset     a concurrency-limited platform's prompts in delivery
``P:log``                  stream   recent delivery steps, capped (``history.py``)
``P:log:failures``         stream   recent failed and retried steps, capped
=========================  =======  ====================================================

With ``SHARDS`` > 1, or on a Redis Cluster, every name above is under ``P:{n}`` (shard
``n``'s hash tag, see :meth:`Keys.shard`); with one shard on one Redis the names are
exactly these.

``{occurrence}`` is an in-flight key: ``{prompt_id}:{epoch_ms}``,
``{prompt_id}:trigger:{epoch_ms}`` for a :func:`trigger_prompt` delivery, or
``{prompt_id}:{epoch_ms}:run`` for an ``overlap="allow"`` run.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


def shard_of(user_id: str, shards: int) -> int:
    """The shard a user's prompts live in (0 with one shard): CRC-32 of the id, the same
    in every process and release."""
    return 0 if shards <= 1 else zlib.crc32(user_id.encode()) % shards


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix. Build with ``Keys("sp")``."""

    prefix: str = "sp"

    def __post_init__(self) -> None:
        p = self.prefix
        if not p or p.endswith(":") or "::" in p or any(c.isspace() for c in p):
            raise ValueError(
                f"key prefix must be non-empty, without spaces, '::' or a trailing ':', "
                f"got {self.prefix!r}"
            )

    def shard(self, number: int, shards: int, *, tagged: bool = False) -> Keys:
        """The names of shard ``number`` of ``shards``: with one shard (and not
        ``tagged``) these names themselves; else every name under ``P:{number}`` — one
        hash tag, so a Redis Cluster keeps all of a shard's keys in one slot and a script
        can touch any of them (a cluster store is tagged even with one shard)."""
        if not 0 <= number < max(shards, 1):
            raise ValueError(f"shard must be in [0, {shards}), got {number}")
        if shards <= 1 and not tagged:
            return self
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(
                f"a sharded key prefix must not contain '{{' or '}}' (they make Redis "
                f"Cluster hash tags), got {self.prefix!r}"
            )
        return Keys(f"{self.prefix}:{{{number}}}")

    def prompt(self, prompt_id: str) -> str:
        return f"{self.prefix}:prompt:{prompt_id}"

    @property
    def prompt_pattern(self) -> str:
        return f"{self.prefix}:prompt:*"

    @property
    def ids(self) -> str:
        return f"{self.prefix}:ids"

    @property
    def due(self) -> str:
        return f"{self.prefix}:due"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}"

    @property
    def open_counts(self) -> str:
        return f"{self.prefix}:open"

    @property
    def finished(self) -> str:
        return f"{self.prefix}:finished"

    @property
    def inflight(self) -> str:
        return f"{self.prefix}:inflight"

    def lease(self, prompt_id: str) -> str:
        """One lease per prompt: one delivery at a time, and changes wait for it."""
        return f"{self.prefix}:lease:{prompt_id}"

    def done(self, idempotency_key: str) -> str:
        return f"{self.prefix}:done:{idempotency_key}"

    @property
    def hydrate_lock(self) -> str:
        return f"{self.prefix}:lock:hydrate"

    @property
    def beat(self) -> str:
        return f"{self.prefix}:beat"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}:metrics"

    @property
    def counts(self) -> str:
        return f"{self.prefix}:counts"

    @property
    def recount_cursor(self) -> str:
        return f"{self.prefix}:counts:cursor"

    @property
    def recount_next(self) -> str:
        return f"{self.prefix}:counts:next"

    @property
    def log(self) -> str:
        return f"{self.prefix}:log"

    @property
    def failures(self) -> str:
        return f"{self.prefix}:log:failures"

    def rate(self, platform: str) -> str:
        """Written by CLAIM, which builds the name the same way."""
        return f"{self.prefix}:rate:{platform}"

    def running(self, platform: str) -> str:
        """Written by CLAIM, which builds the name the same way."""
        return f"{self.prefix}:running:{platform}"
