"""Runners: what a due prompt is handed to.

A runner is any object with ``handle_webhook(payload)``, sync or async. Workers find it
by platform: ``set_bot_runner(runner, platform=...)`` in-process, else the default set
with ``platform=None``, else the import path in ``SCHEDULED_PROMPTS_RUNNER``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import inspect
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import httpx

from .errors import DeliveryError, PermanentDeliveryError, RunnerNotConfigured
from .settings import get_settings, on_reset

log = logging.getLogger("scheduled_prompts.runners")

SIGNATURE_HEADER = "X-Scheduled-Prompts-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


@runtime_checkable
class Runner(Protocol):
    def handle_webhook(self, payload: dict[str, Any]) -> Any: ...


_registry: dict[str | None, Runner] = {}
_from_setting: dict[str, Runner] = {}
_lock = threading.Lock()


def set_bot_runner(runner: Runner | None, platform: str | None = None) -> None:
    """Register ``runner`` for ``platform`` (None: every platform without its own).

    ``set_bot_runner(None, platform)`` removes a registration.
    """
    if runner is not None and not callable(getattr(runner, "handle_webhook", None)):
        raise TypeError(
            f"a runner needs a handle_webhook(payload) method; got {type(runner).__name__}"
        )
    with _lock:
        if runner is None:
            _registry.pop(platform, None)
        else:
            _registry[platform] = runner


def load_runner(path: str) -> Runner:
    """Import ``pkg.module:attr``; a class or factory without ``handle_webhook`` is called."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"SCHEDULED_PROMPTS_RUNNER must look like 'pkg.module:attr', got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except Exception as exc:  # ImportError, but also TypeError for ".relative" paths…
        raise ValueError(f"SCHEDULED_PROMPTS_RUNNER={path!r} cannot be imported: {exc}") from exc
    if inspect.isclass(target) or (
        callable(target) and not callable(getattr(target, "handle_webhook", None))
    ):
        try:
            target = target()
        except Exception as exc:
            raise ValueError(
                f"SCHEDULED_PROMPTS_RUNNER={path!r} could not be created: {exc}"
            ) from exc
    if not callable(getattr(target, "handle_webhook", None)):
        raise ValueError(f"SCHEDULED_PROMPTS_RUNNER={path!r} has no handle_webhook(payload)")
    return target  # type: ignore[no-any-return]


def get_runner(platform: str) -> Runner:
    """The runner for ``platform``, or :class:`RunnerNotConfigured`."""
    with _lock:
        runner = _registry.get(platform) or _registry.get(None)
        if runner is not None:
            return runner
        path = get_settings().runner
        if not path:
            raise RunnerNotConfigured(platform)
        if path not in _from_setting:
            _from_setting[path] = load_runner(path)
        return _from_setting[path]


def _forget_loaded() -> None:
    with _lock:
        _from_setting.clear()


on_reset(_forget_loaded)

_loop_local = threading.local()


def call_runner(runner: Runner, payload: dict[str, Any]) -> Any:
    """Call ``runner.handle_webhook(payload)``; a coroutine runs on this thread's loop.

    The loop is kept for the thread's life, so async clients a runner holds (an
    ``httpx.AsyncClient``, a bot session) stay bound to one loop.
    """
    result = runner.handle_webhook(payload)
    if inspect.isawaitable(result):
        loop = getattr(_loop_local, "loop", None)
        if loop is None or loop.is_closed():
            loop = asyncio.new_event_loop()
            _loop_local.loop = loop
        return loop.run_until_complete(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


class LogRunner:
    """Logs each delivery (prompt text at DEBUG only); what ``scheduled-prompts up`` uses."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("scheduled_prompts.deliveries")

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        self.log.info(
            "delivered %s to %s/%s for user %s (run %s, %.3fs late)",
            payload["idempotency_key"],
            payload["platform"],
            payload.get("channel_id") or "-",
            payload["user_id"],
            payload["run_number"],
            payload["lateness_seconds"],
        )
        self.log.debug("prompt %s: %s", payload["prompt_id"], payload["prompt"])


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The signature header value: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``.

    The MAC covers ``b"<timestamp>." + body``, so a captured request cannot be replayed
    with a fresh timestamp.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    body: bytes,
    header: str | None,
    secret: str | bytes,
    *,
    tolerance_seconds: float = 300,
    now: float | None = None,
) -> bool:
    """Whether ``header`` is a valid signature of ``body`` made within the tolerance.

    For receivers of :class:`WebhookRunner` requests: pass the raw request body and the
    ``X-Scheduled-Prompts-Signature`` header. Compares in constant time.
    """
    if not header:
        return False
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if not math.isfinite(tolerance_seconds) or abs(current - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", []))


class _HideUrlSecrets(logging.Filter):
    """httpx logs every request's URL at INFO; keep credentials and query values out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _safe_url(a) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


def _safe_url(url: httpx.URL) -> httpx.URL:
    query = [(k, "***") for k, _ in url.params.multi_items()]
    return url.copy_with(username=None, password=None, params=query or None)


logging.getLogger("httpx").addFilter(_HideUrlSecrets())


RETRY_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))


class WebhookRunner:
    """POSTs each payload as JSON to ``url``, signed with HMAC-SHA256 over timestamp+body.

    2xx is delivered; 408, 425, 429, 5xx, timeouts and connection errors are retried;
    any other status is a permanent failure.
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must start with http:// or https://, got {url!r}")
        if not secret:
            raise ValueError("a webhook secret is required to sign requests")
        self.url = url
        self.secret = secret
        self.headers = dict(headers or {})
        self.client = client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the HTTP client's connections."""
        self.client.close()

    def __enter__(self) -> WebhookRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, int(time.time()), body),
            IDEMPOTENCY_HEADER: str(payload.get("idempotency_key", "")),
        }
        try:
            response = self.client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"webhook timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise DeliveryError(f"webhook unreachable: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        # The body may echo the request (the prompt text): kept out of errors and INFO logs.
        log.debug("webhook answered HTTP %s: %s", status, response.text[:200])
        message = f"webhook answered HTTP {status} {response.reason_phrase}".rstrip()
        if status in RETRY_STATUSES:
            raise DeliveryError(message)
        raise PermanentDeliveryError(message)
