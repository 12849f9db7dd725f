"""Plans that span the store's shards: finding a prompt by id alone, and reading every
prompt in id order.

A prompt lives in its user's shard (``keys.shard_of``), so a call that names the user
goes straight there. A call by id alone asks every shard at once — one pipelined round
trip, one per node on a Redis Cluster — and with one shard it is the plain read it
always was.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

from . import store
from .keys import Keys
from .plans import Plan
from .store import Scope


def find(ctx: Scope, prompt_id: str, user_id: str | None = None) -> Plan[tuple[Scope, str | None]]:
    """(the shard holding ``prompt_id``, its stored JSON or None).

    With ``user_id`` only that user's shard is read; without, every shard (a record not
    found anywhere is reported in the user's shard, or shard 0).
    """
    if user_id is not None or ctx.shards == 1:
        home = ctx.of_user(user_id) if user_id is not None else ctx.shard(0)
        (raw,) = yield store.Read([home.keys.prompt(prompt_id)])
        return home, _text(raw)
    shards = ctx.every_shard()
    raws = yield store.Commands([("GET", s.keys.prompt(prompt_id)) for s in shards])
    for shard, raw in zip(shards, raws, strict=True):
        if raw is not None:
            return shard, _text(raw)
    return ctx.shard(0), None


def each(ops: Sequence[store.Eval]) -> Plan[list[Any]]:
    """The replies of script calls on several shards, in order: one round trip (per node
    on a Redis Cluster)."""
    replies: list[Any] = yield store.Pipeline(ops)
    return replies


Command = Sequence[str | int | float]


def each_read(
    ctx: Scope, commands_of: Callable[[Keys], Sequence[Command]], *also: Command
) -> Plan[tuple[list[list[Any]], list[Any]]]:
    """(each shard's replies to ``commands_of(its keys)``, the replies to ``also``), all
    in one round trip (per node): how a read covers every shard."""
    per_shard = [list(commands_of(shard.keys)) for shard in ctx.every_shard()]
    flat = [command for commands in per_shard for command in commands]
    replies: list[Any] = yield store.Commands([*flat, *also])
    grouped: list[list[Any]] = []
    at = 0
    for commands in per_shard:
        grouped.append(replies[at : at + len(commands)])
        at += len(commands)
    return grouped, replies[at:]


def ids_after(ctx: Scope, after: str | None, count: int) -> Plan[list[tuple[str, Scope]]]:
    """Up to ``count`` stored ids after ``after`` in id order, over every shard, each with
    its shard: the shards' id indexes merged (``count`` ids read from each)."""
    shards = ctx.every_shard()
    if len(shards) == 1:
        ids = yield store.RangeByLex(ctx.keys.ids, after, count)
        return [(i, shards[0]) for i in ids]
    low = "-" if after is None else "(" + after
    pages = yield store.Commands(
        [("ZRANGEBYLEX", s.keys.ids, low, "+", "LIMIT", 0, count) for s in shards]
    )
    runs = [[(store.as_text(i), n) for i in page] for n, page in enumerate(pages)]
    return [(i, shards[n]) for i, n in heapq.merge(*runs)][:count]


def read(rows: Sequence[tuple[str, Scope]]) -> Plan[list[str | None]]:
    """The stored JSON of each (id, shard), in order: one round trip (per node)."""
    if not rows:
        return []
    shard = rows[0][1]
    if all(s is shard for _, s in rows):
        raws = yield store.Read([shard.keys.prompt(i) for i, _ in rows])
    else:
        raws = yield store.Commands([("GET", s.keys.prompt(i)) for i, s in rows])
    return [_text(raw) for raw in raws]


def _text(raw: str | bytes | None) -> str | None:
    return None if raw is None else store.as_text(raw)
