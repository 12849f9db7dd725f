"""What ``doctor`` says of a replicated deployment: sentinels, primary, replicas, lag.

A failover promotes a replica, and with asynchronous replication the writes it had not
received are gone: these checks fail on what would lose data (no replica to promote or
to acknowledge ``SCHEDULED_PROMPTS_MIN_REPLICAS`` writes, sentinels short of quorum) and
report the rest (replication lag, the primary's own ``min-replicas-to-write``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis
from redis.exceptions import RedisError, ResponseError

from .connection import UNREACHABLE, scope, sentinel_link
from .operations import Check, config_checks
from .settings import SentinelTarget, Settings, sentinel_target
from .store import is_cluster


def checks(settings: Settings, client: redis.Redis, timeout: float) -> list[Check]:
    """The topology checks for ``settings``; ``client`` talks to the primary (or, for a
    Redis Cluster, to the cluster)."""
    if is_cluster(client):
        return _cluster(settings, client)
    found: list[Check] = []
    target = sentinel_target(settings.redis_url)
    if target is not None:
        found += _sentinels(settings, target, timeout)
    found += _replication(settings, client, sentinel=target is not None)
    return found


def _sentinels(settings: Settings, target: SentinelTarget, timeout: float) -> list[Check]:
    answers: list[tuple[str, dict[str, Any]]] = []
    silent: list[str] = []
    for address in target.sentinels:
        where = "{}:{}".format(*address)
        link = sentinel_link(settings, target, address, timeout)
        try:
            master: dict[str, Any] = link.sentinel_master(target.service)  # type: ignore[assignment]
            answers.append((where, master))
        except (RedisError, OSError) as exc:
            silent.append(f"{where} ({_reason(exc)})")
        finally:
            link.close()
    total = len(target.sentinels)
    if not answers:
        detail = f"none of {total} answers for {target.service!r}: " + ", ".join(silent)
        return [Check("sentinels", False, detail)]
    quorum = max(int(master.get("quorum", 1)) for _, master in answers)
    detail = f"{len(answers)} of {total} answer (quorum {quorum})"
    if silent:
        detail += "; silent: " + ", ".join(silent)
    named = Counter(f"{m.get('ip')}:{m.get('port')}" for _, m in answers)
    (primary, votes), *others = named.most_common()
    down = [w for w, m in answers if "down" in str(m.get("flags", ""))]
    primary_detail = f"{primary}, named by {votes} of {len(answers)} sentinel(s)"
    if others:
        primary_detail += "; others name " + ", ".join(f"{a} ({n})" for a, n in others)
    if down:
        primary_detail += "; seen down by " + ", ".join(down)
    return [
        Check("sentinels", len(answers) >= quorum, detail),
        Check("primary", not others and not down, primary_detail),
    ]


def _replication(settings: Settings, client: redis.Redis, *, sentinel: bool) -> list[Check]:
    try:
        info: dict[str, Any] = client.info("replication")
    except (RedisError, OSError) as exc:
        return [Check("replicas", False, f"INFO replication failed: {_reason(exc)}")]
    wanted = settings.min_replicas
    if info.get("role") != "master":
        role = info.get("role", "?")
        return [Check("replicas", False, f"the store's node is a {role}, not the primary")]
    offset = int(info.get("master_repl_offset", 0))
    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    if not (replicas or wanted or sentinel):
        return []  # one Redis, and nothing asks for replicas: nothing to say
    online = [r for r in replicas if r.get("state") == "online"]
    shown = [
        f"{r.get('ip')}:{r.get('port')} {r.get('state')}, last ack {r.get('lag', '?')}s ago, "
        f"{max(0, offset - int(r.get('offset', 0)))} bytes behind"
        for r in replicas
    ]
    detail = f"{len(online)} online" + (": " + "; ".join(shown) if shown else "")
    if wanted:
        ok = len(online) >= wanted
        detail += f" (SCHEDULED_PROMPTS_MIN_REPLICAS={wanted}"
        detail += ")" if ok else ": every create, change and commit fails until enough are back)"
    else:
        ok = bool(online) or not sentinel
        if not ok:
            detail += ": the sentinels have no replica to promote"
    found = [Check("replicas", ok, detail)]
    if wanted or replicas:
        found.append(_alignment(client, wanted))
    return found


def _alignment(client: redis.Redis, wanted: int) -> Check:
    """The primary's own ``min-replicas-to-write`` beside ``SCHEDULED_PROMPTS_MIN_REPLICAS``."""
    try:
        reply = client.config_get("min-replicas-to-write")
    except ResponseError as exc:  # managed services often refuse CONFIG
        return Check("min-replicas", True, f"CONFIG GET refused ({exc}); check by hand")
    server = int(reply.get("min-replicas-to-write", 0) or 0)
    setting = f"SCHEDULED_PROMPTS_MIN_REPLICAS={wanted}, primary's min-replicas-to-write {server}"
    if wanted == 0:
        advice = ": a failover may lose the last acknowledged writes (set MIN_REPLICAS to wait)"
    elif server < wanted:
        advice = (
            ": a write without enough replicas is applied on the primary, then reported as "
            f"failed (min-replicas-to-write {wanted} refuses it up front)"
        )
    else:
        advice = ": writes without enough replicas are refused up front"
    return Check("min-replicas", True, setting + advice)


def _cluster(settings: Settings, client: Any) -> list[Check]:
    """A Redis Cluster: its state, where the shards' slots live, each primary's replicas,
    and each primary's eviction policy and persistence."""
    try:
        state = {str(k): str(v) for k, v in _reply(client.cluster_info()).items()}
        primaries = client.get_primaries()
        slots = {
            n: client.get_node_from_key(shard.keys.due).name
            for n, shard in enumerate(scope(settings).every_shard())
        }
        roles = {p.name: client.info("replication", target_nodes=p) for p in primaries}
        config = {p.name: client.config_get("*", target_nodes=p) for p in primaries}
    except UNREACHABLE as exc:
        return [Check("cluster", False, f"cannot read the cluster: {_reason(exc)}")]
    per_node = Counter(slots.values())
    spread = ", ".join(f"{name} {per_node.get(name, 0)}" for name in sorted(roles))
    ok = state.get("cluster_state") == "ok" and state.get("cluster_slots_ok") == "16384"
    detail = (
        f"state {state.get('cluster_state', '?')}, {state.get('cluster_slots_ok', '?')} of "
        f"16384 slots served; {len(slots)} shard(s) over {len(primaries)} primaries ({spread})"
    )
    idle = [name for name in roles if not per_node.get(name)]
    if idle:
        detail += f"; {', '.join(sorted(idle))} hold(s) no shard: raise SCHEDULED_PROMPTS_SHARDS"
    found = [Check("cluster", ok and not idle, detail)]
    lonely = [
        name for name, role in roles.items()
        if not any(k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
                   for k, v in _reply(role).items())
    ]  # fmt: skip
    found.append(
        Check(
            "cluster replicas",
            not lonely,
            f"every primary has a replica online ({len(primaries)} primaries)"
            if not lonely
            else f"no replica online for {', '.join(sorted(lonely))}: losing it loses its "
            "shards' prompts until it returns; give every primary a replica",
        )
    )
    judged = {name: config_checks(_reply(c)) for name, c in sorted(config.items())}
    for at, check in enumerate(next(iter(judged.values()), [])):
        failing = [(name, checks[at]) for name, checks in judged.items() if not checks[at].ok]
        detail = (
            f"every primary: {check.detail}"
            if not failing
            else "; ".join(f"{name}: {c.detail}" for name, c in failing)
        )
        found.append(Check(check.name, not failing, detail))
    return found


def _reply(reply: Any) -> dict[str, Any]:
    """One node's reply, where the cluster client may key it by node name."""
    if isinstance(reply, dict) and len(reply) == 1:
        (only,) = reply.values()
        if isinstance(only, dict):
            return only
    return dict(reply)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
