"""One typed settings object, read from ``SCHEDULED_PROMPTS_*`` environment variables.

Every setting is a field of :class:`Settings` with its default and meaning next to it;
``docs/configuration.md`` is checked against this table. Code reads settings through
:func:`get_settings`, which parses the environment once; :func:`configure` overrides
fields from Python (tests, embedding applications) and drops the cached connections.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "SCHEDULED_PROMPTS_"


def _setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    """Settings of one deployment. Field ``x`` is read from ``SCHEDULED_PROMPTS_X``."""

    redis_url: str = _setting("redis://127.0.0.1:6379/0", "Redis holding the prompts.")
    broker_url: str | None = _setting(
        None, "Celery broker; unset means the same Redis as `redis_url`."
    )
    key_prefix: str = _setting("sp", "Prefix of every Redis key the store writes.")
    queue: str = _setting(
        "scheduled-prompts", "Celery queue the tasks are sent to and workers consume."
    )
    runner: str | None = _setting(
        None, "Import path `pkg.module:attr` of the runner each worker loads."
    )
    tick_seconds: float = _setting(60.0, "How often beat runs `scheduled_prompts.tick`.")
    horizon_seconds: float = _setting(
        300.0, "Occurrences due within this many seconds are enqueued as ETA tasks."
    )
    lease_seconds: float = _setting(
        60.0, "How long a delivery holds its claim before another may re-drive it."
    )
    max_retries: int = _setting(5, "Runner failures retried (exponential backoff).")
    deliver_batch_size: int = _setting(
        200, "Most occurrences one `deliver_batch` task carries; 1 sends one task each."
    )
    deliver_batch_window_ms: int = _setting(
        20, "Occurrences due within this many ms of each other may share a batch."
    )
    cleanup_days: int = _setting(7, "Terminal prompts older than this are removed.")
    active_platforms: tuple[str, ...] | None = _setting(
        None, "Comma-separated platforms hydration re-enqueues; unset means all."
    )
    hydrate_limit: int = _setting(500, "Most prompts one hydration run re-enqueues.")
    max_prompt_chars: int = _setting(32_000, "Longest prompt text accepted.")
    max_metadata_bytes: int = _setting(16_384, "Largest metadata, as UTF-8 JSON.")
    max_prompts_per_user: int | None = _setting(
        None, "Most live and paused prompts one user may have; unset means no limit."
    )
    tool_max_active_prompts: int = _setting(
        25, "LLM tools: most live and paused prompts one user may have."
    )
    tool_min_cron_interval_seconds: float = _setting(
        300.0, "LLM tools: shortest allowed time between two runs of a cron prompt."
    )
    tool_max_prompt_chars: int = _setting(4_000, "LLM tools: longest prompt text accepted.")
    tool_max_days_ahead: float = _setting(
        366.0, "LLM tools: farthest a one-time prompt may be scheduled, in days."
    )
    redis_timeout_seconds: float = _setting(
        5.0, "Socket connect and read timeout of the store's Redis connections."
    )
    pulse_seconds: float = _setting(
        5.0, "How often a worker sends itself a pulse through the broker (0 = never)."
    )
    pulse_dir: str | None = _setting(
        None, "Folder of the workers' pulse files; unset means `<tmp>/scheduled-prompts-pulse`."
    )

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def visibility_timeout(self) -> int:
        """Broker visibility timeout: at least 2 x (horizon + lease), never below 1 h.

        An ETA task sits unacknowledged in the worker until it fires; if the visibility
        timeout were shorter than the horizon, the Redis transport would hand the same
        message to another worker before it is due.
        """
        return math.ceil(max(3600.0, 2 * (self.horizon_seconds + self.lease_seconds)))


def _parse(name: str, raw: str, kind: Any) -> Any:
    text = raw.strip()
    optional = isinstance(kind, str) and "None" in kind
    base = kind.replace(" | None", "") if isinstance(kind, str) else kind
    if optional and text == "":
        return None
    try:
        if base == "int":
            return int(text)
        if base == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        if base == "tuple[str, ...]":
            return tuple(p.strip() for p in text.split(",") if p.strip())
    except ValueError:
        accepted = "an integer" if base == "int" else "a number (finite)"
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected {accepted}") from None
    return text


_NON_NEGATIVE = {
    "tick_seconds",
    "horizon_seconds",
    "lease_seconds",
    "max_retries",
    "deliver_batch_size",
    "deliver_batch_window_ms",
    "cleanup_days",
    "hydrate_limit",
    "max_prompt_chars",
    "max_metadata_bytes",
    "max_prompts_per_user",
    "redis_timeout_seconds",
    "pulse_seconds",
    "tool_max_active_prompts",
    "tool_min_cron_interval_seconds",
    "tool_max_prompt_chars",
    "tool_max_days_ahead",
}


def settings_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``) and ``overrides``."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if key in env:
            values[f.name] = _parse(f.name, env[key], f.type)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    for name in _NON_NEGATIVE:
        value = values.get(name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be >= 0 and finite, got {value}")
    return Settings(**values)


_cached: Settings | None = None
_overrides: dict[str, Any] = {}
_reset_hooks: list[Callable[[], None]] = []


def get_settings() -> Settings:
    """The process's settings: the environment read once, plus :func:`configure`."""
    global _cached
    if _cached is None:
        _cached = settings_from_env(**_overrides)
    return _cached


def configure(**overrides: Any) -> Settings:
    """Override settings from Python, e.g. ``configure(redis_url="redis://h:6379/2")``.

    Overrides stay in force until the next call; ``configure()`` with no arguments
    goes back to the environment alone. Cached Redis connections are dropped.
    """
    global _cached
    new = settings_from_env(**overrides)  # validate before changing anything
    _overrides.clear()
    _overrides.update(overrides)
    _cached = new
    for hook in _reset_hooks:
        hook()
    return new


def on_reset(hook: Callable[[], None]) -> None:
    """Register a callback run by :func:`configure` (used to drop cached clients)."""
    _reset_hooks.append(hook)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (the user name is kept)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    # Any *password= parameter (password=, ssl_password= for the client key, …).
    query = re.sub(r"(?i)(^|&)([^&=]*password=)[^&]*", r"\1\2***", parts.query)
    if parts.password is None:
        return url if query == parts.query else url.replace(parts.query, query)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def settings_table() -> str:
    """Every setting as a Markdown table: variable, default, meaning (for the docs)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = f.default
        if default is None:
            shown = "unset"
        elif isinstance(default, float) and default.is_integer():
            shown = f"`{int(default)}`"
        else:
            shown = f"`{default}`"
        rows.append(f"| `{ENV_PREFIX}{f.name.upper()}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


_TABLE_START = "<!-- settings table: generated by `make docs` -->\n"
_TABLE_END = "<!-- end of settings table -->\n"


def render_configuration_doc(text: str) -> str:
    """``text`` with the settings table between its markers replaced by the current one."""
    head, sep, rest = text.partition(_TABLE_START)
    _, sep2, tail = rest.partition(_TABLE_END)
    if not sep or not sep2:
        raise ValueError("the settings table markers are missing")
    return head + _TABLE_START + settings_table() + _TABLE_END + tail
