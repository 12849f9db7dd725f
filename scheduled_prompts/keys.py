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
=========================  =======  ====================================================
"""

from __future__ import annotations

from dataclasses import dataclass


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
