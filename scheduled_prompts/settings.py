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
from urllib.parse import parse_qsl, unquote

from .limits import Limits, limits, parse_concurrency, parse_rates

ENV_PREFIX = "SCHEDULED_PROMPTS_"

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
SENTINEL_PORT = 26379
SENTINEL_FORM = "redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB]"
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
CLUSTER_FORM = "redis+cluster://[user:password@]host:port[,host:port...]/"
REDIS_PORT = 6379
#: Shards a Redis Cluster store is spread over unless ``SCHEDULED_PROMPTS_SHARDS`` says.
CLUSTER_SHARDS = 16
#: Most shards a store may have: tick and hydration visit every one.
MAX_SHARDS = 1024
TLS_OPTIONS = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "ssl_password")


def _setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    """Settings of one deployment. Field ``x`` is read from ``SCHEDULED_PROMPTS_X``."""

    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0",
        "Redis holding the prompts: a redis-py URL, `redis+sentinel://` naming its sentinels, "
        "or `redis+cluster://` naming nodes of a Redis Cluster.",
    )
    broker_url: str | None = _setting(
        None,
        "Celery broker; unset means the same Redis as `redis_url` (Sentinel too). Required "
        "with a Redis Cluster store, which cannot be the broker.",
    )
    shards: int | None = _setting(
        None,
        f"Hash-tagged shards the store's keys are grouped in (1 to {MAX_SHARDS}); unset "
        f"means {CLUSTER_SHARDS} on a Redis Cluster, 1 elsewhere. Changing it on stored "
        "data needs an export and import.",
    )
    key_prefix: str = _setting("sp", "Prefix of every Redis key the store writes.")
    queue: str = _setting(
        "scheduled-prompts", "Celery queue the tasks are sent to and workers consume."
    )
    queue_type: str = _setting(
        "classic",
        "`classic`, or `quorum` for a RabbitMQ quorum queue (replicated over a RabbitMQ "
        "cluster; needs an `amqp://` broker).",
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
    sentinel_password: str | None = _setting(
        None,
        "Password of the Sentinel processes themselves, for `redis+sentinel://` URLs "
        "(the data nodes' password is the URL's).",
    )
    min_replicas: int = _setting(
        0,
        "Replicas that must acknowledge a create, change, claim or commit (`WAIT`) "
        "before it counts as done; 0 = do not wait.",
    )
    min_replicas_timeout_ms: int = _setting(
        1000, "How long a write waits for `SCHEDULED_PROMPTS_MIN_REPLICAS` replicas."
    )
    delivery_log_length: int = _setting(
        10_000, "Recent delivery steps kept in Redis for the console (0 = none)."
    )
    failure_log_length: int = _setting(
        1_000, "Recent failed and retried steps kept apart from the others (0 = none)."
    )
    rate_limits: str | None = _setting(
        None,
        "Per-platform delivery rates across all workers, e.g. `discord=50/s,telegram=20/m:5` "
        "(N per s, m or h; `:B` allows a burst of B, default 1).",
    )
    concurrency_limits: str | None = _setting(
        None, "Per-platform cap on runner calls at once across all workers, e.g. `discord=4`."
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

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("redis_url", "broker_url"):
            if shown[name] is not None:
                shown[name] = mask_url(shown[name])
        if shown["sentinel_password"] is not None:
            shown["sentinel_password"] = "***"
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def cluster(self) -> bool:
        """Whether the store is a Redis Cluster (``redis+cluster://``)."""
        return is_cluster_url(self.redis_url)

    @property
    def shard_count(self) -> int:
        """``shards``, or its default for the store's kind."""
        if self.shards is not None:
            return self.shards
        return CLUSTER_SHARDS if self.cluster else 1

    @property
    def limits(self) -> Limits:
        """The parsed rate and concurrency limits (see ``limits.py``)."""
        return limits(self.rate_limits, self.concurrency_limits, self.shard_count)

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
    "min_replicas",
    "min_replicas_timeout_ms",
    "pulse_seconds",
    "delivery_log_length",
    "failure_log_length",
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
    url = values.get("redis_url")
    if isinstance(url, str):
        try:
            sentinel_target(url)
            cluster_target(url)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}REDIS_URL={exc}") from None
    _check_broker(values.get("redis_url", Settings.redis_url), values.get("broker_url"))
    if is_cluster_url(values.get("redis_url", Settings.redis_url)) and values.get("min_replicas"):
        raise ValueError(
            f"{ENV_PREFIX}MIN_REPLICAS is not supported with a Redis Cluster store (WAIT "
            "would have to follow each write on its own primary's connection); leave it 0 "
            "and use the cluster's own min-replicas-to-write"
        )
    _check_queue_type(values)
    shards = values.get("shards")
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"{ENV_PREFIX}SHARDS must be from 1 to {MAX_SHARDS}, got {shards}")
    for name, parse in (("rate_limits", parse_rates), ("concurrency_limits", parse_concurrency)):
        try:
            parse(values.get(name))
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: {exc}") from None
    for name in _NON_NEGATIVE:
        value = values.get(name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be >= 0 and finite, got {value}")
    made = Settings(**values)
    try:
        made.limits  # noqa: B018 - parsed now, so a limit the shards cannot share fails at start
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}CONCURRENCY_LIMITS: {exc}") from None
    return made


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
    """``url`` with its passwords replaced by ``***`` (user names are kept).

    Handles one host or several (``redis+sentinel://u:pw@h1:p1,h2:p2/service``), and a
    kombu failover list of URLs separated by ``;``; a ``*password=`` query argument
    (``password=``, ``ssl_password=`` for the client key) is masked too.
    """
    if ";" in url:
        return ";".join(mask_url(part) for part in url.split(";"))
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            cut = min(cut, found)
    netloc, tail = rest[:cut], rest[cut:]
    path, qmark, query = tail.partition("?")
    query, hash_, fragment = query.partition("#")
    query = re.sub(r"(?i)(^|&)([^&=]*password=)[^&]*", r"\1\2***", query)
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    return f"{scheme}://{netloc}{path}{qmark}{query}{hash_}{fragment}"


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _HostsUrl:
    """The parts a ``scheme://[user:password@]host:port[,host:port...]/path?options`` URL
    of several hosts has (Sentinel and Redis Cluster URLs)."""

    tls: bool
    username: str | None
    password: str | None
    addresses: tuple[tuple[str, int], ...]
    path: str
    options: dict[str, str]
    bad: Callable[[str], ValueError]


def _hosts_url(
    url: str, schemes: Mapping[str, bool], form: str, what: str, default_port: int
) -> _HostsUrl | None:
    """``url`` split up, or None when its scheme is not one of ``schemes`` (scheme -> TLS).

    ``bad(problem)`` makes the error for what the caller finds wrong: the URL masked, the
    problem, and the accepted ``form``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        return None
    shown = mask_url(url)
    tls_scheme = next(name for name, secure in schemes.items() if secure)

    def bad(problem: str) -> ValueError:
        return ValueError(f"{shown}: {problem}; expected {form} ({tls_scheme} for TLS)")

    tls = schemes[scheme.lower()]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    addresses = tuple(_host_port(part, bad, what, default_port) for part in hosts.split(","))
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in TLS_OPTIONS or not tls:
            accepted = ", ".join(TLS_OPTIONS) + f" (with {tls_scheme})"
            raise bad(f"unknown option {key!r} (accepted: {accepted})")
        options[key] = value
    return _HostsUrl(tls, username, password, addresses, path, options, bad)


def sentinel_target(url: str) -> SentinelTarget | None:
    """The sentinels and service ``url`` names; None when it is not a Sentinel URL.

    Raises ValueError, saying what is accepted, for a malformed Sentinel URL.
    """
    found = _hosts_url(url, SENTINEL_SCHEMES, SENTINEL_FORM, "sentinel", SENTINEL_PORT)
    if found is None:
        return None
    parts = [p for p in found.path.split("/") if p]
    if not parts or len(parts) > 2:
        raise found.bad("the path must be the service name, then optionally the database number")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise found.bad(f"database {parts[1]!r} is not a number")
        db = int(parts[1])
    return SentinelTarget(
        found.addresses, unquote(parts[0]), db, found.username, found.password, found.tls,
        found.options,
    )  # fmt: skip


QUEUE_TYPES = ("classic", "quorum")


def _check_queue_type(values: Mapping[str, Any]) -> None:
    kind = values.get("queue_type", "classic")
    if kind not in QUEUE_TYPES:
        raise ValueError(
            f"{ENV_PREFIX}QUEUE_TYPE must be one of {', '.join(QUEUE_TYPES)}, got {kind!r}"
        )
    broker = values.get("broker_url") or values.get("redis_url") or Settings.redis_url
    if kind == "quorum" and not str(broker).lower().startswith(("amqp", "pyamqp")):
        raise ValueError(
            f"{ENV_PREFIX}QUEUE_TYPE=quorum needs a RabbitMQ broker ({ENV_PREFIX}BROKER_URL="
            f"amqp://...), got {mask_url(str(broker))}"
        )


def is_cluster_url(url: str) -> bool:
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in CLUSTER_SCHEMES


#: Why a Redis Cluster cannot carry the Celery messages (``doctor`` and start say it).
CLUSTER_BROKER = (
    "a Redis Cluster cannot be the Celery broker (kombu's Redis transport needs one "
    "Redis: its queues and the keys of one message live in different slots)"
)


def _check_broker(redis_url: str, broker_url: str | None) -> None:
    """Refuse a Redis Cluster as the Celery broker, named or implied."""
    advice = (
        f"set {ENV_PREFIX}BROKER_URL to RabbitMQ (amqp://...) or to a plain Redis "
        "(redis://...) of its own"
    )
    if broker_url is not None and is_cluster_url(broker_url):
        raise ValueError(
            f"{ENV_PREFIX}BROKER_URL={mask_url(broker_url)}: {CLUSTER_BROKER}; {advice}"
        )
    if broker_url is None and is_cluster_url(redis_url):
        raise ValueError(
            f"{ENV_PREFIX}REDIS_URL={mask_url(redis_url)} is a Redis Cluster and "
            f"{ENV_PREFIX}BROKER_URL is unset, so the broker would be the store: "
            f"{CLUSTER_BROKER}; {advice}"
        )


@dataclass(frozen=True)
class ClusterTarget:
    """What a ``redis+cluster://`` URL names: nodes to start from (any of the cluster's;
    the client learns the rest) and the data nodes' credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_options: Mapping[str, str] = field(default_factory=dict)


def cluster_target(url: str) -> ClusterTarget | None:
    """The nodes ``url`` names; None when it is not a Redis Cluster URL.

    Raises ValueError, saying what is accepted, for a malformed one.
    """
    found = _hosts_url(url, CLUSTER_SCHEMES, CLUSTER_FORM, "node", REDIS_PORT)
    if found is None:
        return None
    if found.path.strip("/") not in ("", "0"):
        raise found.bad(f"a Redis Cluster has database 0 only, got path {'/' + found.path!r}")
    return ClusterTarget(found.addresses, found.username, found.password, found.tls, found.options)


def _host_port(text: str, bad: Any, what: str, default_port: int) -> tuple[str, int]:
    if not text:
        raise bad(f"a {what} address is empty")
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise bad(f"{what} address {text!r} has no host")
    if port and not port.isdigit():
        raise bad(f"{what} address {text!r} has a port that is not a number")
    return host, int(port) if port else default_port


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
