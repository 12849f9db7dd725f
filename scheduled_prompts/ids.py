"""Prompt ids: 26 characters, time-ordered, so the lexicographic indexes list oldest first."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = range(120, -1, -10)

_last_id = 0
_id_lock = threading.Lock()


def new_prompt_ids(count: int) -> list[str]:
    """``count`` new ids in ascending order (48-bit milliseconds + 80 random bits, base32).

    One clock read and one random draw for the lot: the ids after the first count up
    from it, as ULID's monotonic mode does within one millisecond; a process's next call
    in the same millisecond continues after its last id.
    """
    global _last_id
    if count <= 0:
        return []
    with _id_lock:
        value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
        if value >> 80 == _last_id >> 80 and value <= _last_id:
            value = _last_id + 1
        _last_id = value + count - 1
    return _encode(range(value, value + count))


def _encode(values: Iterable[int]) -> list[str]:
    # Each 128-bit value as 26 Crockford base32 digits (130 bits, the first 2 zero), two
    # digits per lookup: lexicographic order is numeric order.
    return ["".join([_PAIRS[v >> s & 1023] for s in _SHIFTS]) for v in values]
