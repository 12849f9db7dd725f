"""The process's Redis client for the store, built from settings, and its errors.

``SCHEDULED_PROMPTS_REDIS_URL`` is any URL redis-py takes (``redis://``, ``rediss://``,
``unix://``), or a Sentinel URL naming the sentinels and the service they watch::

    redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB]
    rediss+sentinel://...   (TLS to the data nodes and to the sentinels)

or a Redis Cluster URL naming some of its nodes (the client learns the others)::

    redis+cluster://[user:password@]host:port[,host:port...]/
    rediss+cluster://...    (TLS)

The user and password are the data nodes'; the sentinels' own password is
``SCHEDULED_PROMPTS_SENTINEL_PASSWORD``. Every client the package makes — the API's, the
asyncio API's, the CLI's, ``doctor``'s — is built here, so each follows the primary the
sentinels name and finds the new one after a failover.
"""

from __future__ import annotations

import threading
from typing import Any, cast

import hiredis
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis._parsers import Encoder
from redis.connection import PythonRespSerializer

from .errors import StoreUnavailable
from .keys import Keys
from .settings import (
    ClusterTarget,
    SentinelTarget,
    Settings,
    cluster_target,
    get_settings,
    mask_url,
    on_reset,
    sentinel_target,
)
from .store import Scope

#: What a store client raises when Redis is away: redis-py's errors, and the cluster
#: client's own (``RedisClusterException`` is not a ``RedisError``: no node reachable).
STORE_ERRORS: tuple[type[Exception], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
)

#: Errors of a write that may not have happened and can be tried again: the connection
#: failed, or a Redis Cluster is failing over (CLUSTERDOWN, TRYAGAIN while a slot moves,
#: no node reachable, a slot without its primary yet).
TRANSIENT: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterUnreachableError,
    redis.exceptions.SlotNotCoveredError,
)

#: What a check that asks one node (a PING, a topology read) meets when it cannot reach it.
UNREACHABLE: tuple[type[Exception], ...] = (*STORE_ERRORS, OSError)

_lock = threading.Lock()
_client: redis.Redis | None = None


class CommandPacker:
    """How the store's connections pack a command: in one call to hiredis.

    redis-py's own packer looks at and encodes every argument in Python before hiredis
    packs them, which costs more than the packing itself for the script calls of a batch
    (the commit of a batch of 200 deliveries carries some 3,000 arguments over its
    calls, a ``CREATE`` of 100 records about 700). What hiredis does not take
    (None, booleans, bytearrays) goes to redis-py's pure-Python packer, which encodes or
    refuses it as redis-py always does.
    """

    def __init__(self) -> None:
        encoder = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]
        self._fallback = PythonRespSerializer(6000, encoder.encode)

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        if (isinstance(name, str) and " " in name) or (isinstance(name, bytes) and b" " in name):
            args = (*name.split(), *args[1:])  # "SCRIPT LOAD" is two words on the wire
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            packed: list[bytes] = self._fallback.pack(*args)  # type: ignore[no-untyped-call]
            return packed


#: The packer of the synchronous clients to one Redis (plain or Sentinel); the cluster
#: client and the asyncio ones take no packer of their own.
PACKER = CommandPacker()


def client_kwargs(settings: Settings, timeout: float | None = None) -> dict[str, Any]:
    """The store clients' options; ``timeout`` replaces the socket timeouts."""
    seconds = settings.redis_timeout_seconds if timeout is None else timeout
    return {
        "decode_responses": True,
        "socket_timeout": seconds,
        "socket_connect_timeout": seconds,
        "health_check_interval": 30,
    }


def _sentinel_kwargs(
    settings: Settings, target: SentinelTarget, kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options of the connections to the sentinels, options of those to the data nodes)."""
    node = dict(kwargs, db=target.db, username=target.username, password=target.password)
    watch: dict[str, Any] = {
        "socket_timeout": kwargs["socket_timeout"],
        "socket_connect_timeout": kwargs["socket_connect_timeout"],
        "password": settings.sentinel_password,
    }
    if target.tls:
        node.update(ssl=True, **target.tls_options)
        watch.update(ssl=True, **target.tls_options)
    return watch, node


def sentinel_link(
    settings: Settings, target: SentinelTarget, address: tuple[str, int], timeout: float
) -> redis.Redis:
    """A client of one sentinel (its password, TLS), to ask it about the service."""
    watch, _ = _sentinel_kwargs(settings, target, client_kwargs(settings, timeout))
    return redis.Redis(host=address[0], port=address[1], decode_responses=True, **watch)


class _SentinelRedis(redis.Redis):
    """A client of the primary a Sentinel names; closing it closes the sentinel links."""

    def close(self) -> None:
        super().close()
        pool: Any = self.connection_pool  # redis-py's SentinelConnectionPool is untyped
        for link in pool.sentinel_manager.sentinels:
            link.close()


class _AsyncSentinelRedis(redis.asyncio.Redis):
    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool: Any = self.connection_pool
        for link in pool.sentinel_manager.sentinels:
            await link.aclose()


def _cluster_kwargs(target: ClusterTarget, kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(kwargs, username=target.username, password=target.password)
    if target.tls:
        options.update(ssl=True, **target.tls_options)
    return options


def new_redis(settings: Settings, *, timeout: float | None = None) -> redis.Redis:
    """A new client for ``settings.redis_url`` (plain, Sentinel or Cluster URL).

    A Redis Cluster's client (``redis.cluster.RedisCluster``) answers every command the
    store sends as ``redis.Redis`` does, each routed to the node of its keys' slot; it
    is typed as one. Raises :class:`StoreUnavailable` for a URL it cannot use, masked.
    """
    kwargs = client_kwargs(settings, timeout)
    try:
        cluster = cluster_target(settings.redis_url)
        if cluster is not None:
            nodes = [redis.cluster.ClusterNode(host, port) for host, port in cluster.nodes]  # type: ignore[no-untyped-call]
            client: Any = redis.cluster.RedisCluster(
                startup_nodes=nodes, **_cluster_kwargs(cluster, kwargs)
            )
            return cast(redis.Redis, client)
        target = sentinel_target(settings.redis_url)
        if target is None:
            return redis.Redis.from_url(settings.redis_url, command_packer=PACKER, **kwargs)
    except ValueError as exc:
        raise StoreUnavailable(mask_url(settings.redis_url), str(exc)) from None
    except STORE_ERRORS as exc:  # a cluster client asks its nodes for the slots
        raise unavailable(exc, settings) from exc
    watch, node = _sentinel_kwargs(settings, target, dict(kwargs, command_packer=PACKER))
    manager = redis.sentinel.Sentinel(target.sentinels, sentinel_kwargs=watch, **node)
    primary: redis.Redis = manager.master_for(target.service, redis_class=_SentinelRedis)
    return primary


def new_async_redis(settings: Settings | None = None) -> redis.asyncio.Redis:
    """A ``redis.asyncio`` client for the configured Redis URL (close it when done)."""
    settings = settings or get_settings()
    kwargs = client_kwargs(settings)
    try:
        cluster = cluster_target(settings.redis_url)
        if cluster is not None:
            nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in cluster.nodes]
            kwargs.pop("health_check_interval")  # not an option of the asyncio cluster client
            aclient: Any = redis.asyncio.cluster.RedisCluster(
                startup_nodes=nodes, **_cluster_kwargs(cluster, kwargs)
            )
            return cast(redis.asyncio.Redis, aclient)
        target = sentinel_target(settings.redis_url)
        if target is None:
            return redis.asyncio.Redis.from_url(settings.redis_url, **kwargs)
    except ValueError as exc:
        raise StoreUnavailable(mask_url(settings.redis_url), str(exc)) from None
    watch, node = _sentinel_kwargs(settings, target, kwargs)
    manager = redis.asyncio.sentinel.Sentinel(target.sentinels, sentinel_kwargs=watch, **node)
    primary: redis.asyncio.Redis = manager.master_for(
        target.service, redis_class=_AsyncSentinelRedis
    )
    return primary


def get_redis() -> redis.Redis:
    """A shared ``redis.Redis`` for ``SCHEDULED_PROMPTS_REDIS_URL`` (thread-safe pool)."""
    global _client
    with _lock:
        if _client is None:
            _client = new_redis(get_settings())
        return _client


def _reset() -> None:
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None


on_reset(_reset)


def scope(settings: Settings | None = None) -> Scope:
    """The whole store's scope (shard 0, and the way to the others) for ``settings``
    (default: the process's)."""
    settings = settings or get_settings()
    return Scope(Keys(settings.key_prefix), settings)


def unavailable(exc: BaseException, settings: Settings | None = None) -> StoreUnavailable:
    settings = settings or get_settings()
    reason = f"{type(exc).__name__}: {exc}".replace(
        settings.redis_url, mask_url(settings.redis_url)
    )
    return StoreUnavailable(mask_url(settings.redis_url), reason)
