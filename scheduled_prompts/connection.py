"""The process's Redis client for the store, built from settings, and its errors."""

from __future__ import annotations

import threading
from typing import Any

import redis

from .errors import StoreUnavailable
from .keys import Keys
from .settings import Settings, get_settings, mask_url, on_reset
from .store import Scope

_lock = threading.Lock()
_client: redis.Redis | None = None


def client_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "health_check_interval": 30,
    }


def get_redis() -> redis.Redis:
    """A shared ``redis.Redis`` for ``SCHEDULED_PROMPTS_REDIS_URL`` (thread-safe pool)."""
    global _client
    with _lock:
        if _client is None:
            settings = get_settings()
            try:
                _client = redis.Redis.from_url(settings.redis_url, **client_kwargs(settings))
            except ValueError as exc:
                raise StoreUnavailable(mask_url(settings.redis_url), str(exc)) from None
        return _client


def _reset() -> None:
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None


on_reset(_reset)


def scope() -> Scope:
    settings = get_settings()
    return Scope(Keys(settings.key_prefix), settings)


def unavailable(exc: BaseException, settings: Settings | None = None) -> StoreUnavailable:
    settings = settings or get_settings()
    reason = f"{type(exc).__name__}: {exc}".replace(
        settings.redis_url, mask_url(settings.redis_url)
    )
    return StoreUnavailable(mask_url(settings.redis_url), reason)
