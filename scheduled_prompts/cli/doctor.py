"""``doctor``: is this deployment healthy? One line per check; exit 0 only if all pass."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click
import redis
from redis.exceptions import RedisError

from .. import api, operations, pulse, topology
from .._time import utcnow
from ..connection import STORE_ERRORS, new_redis, scope
from ..operations import Check
from ..runners import load_runner
from ..settings import CLUSTER_BROKER, Settings, get_settings, mask_url
from .common import Commands, json_option, print_json

commands = Commands()


def _redis_checks(settings: Settings, client: redis.Redis) -> list[Check]:
    return api.run(operations.store_health(scope(), utcnow()), client)


def _visibility(settings: Settings) -> Check:
    from ..celery_app import app  # noqa: PLC0415

    broker = str(app.conf.broker_url or "")
    if not broker.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
        return Check("visibility timeout", True, "not a Redis broker: no visibility timeout")
    options = app.conf.broker_transport_options or {}
    timeout = float(options.get("visibility_timeout", 3600))
    need = 2 * (settings.horizon_seconds + settings.lease_seconds)
    return Check(
        "visibility timeout",
        timeout >= need,
        f"{timeout:g}s vs horizon {settings.horizon_seconds:g}s + lease "
        f"{settings.lease_seconds:g}s (needs >= {need:g}s)",
    )


def _broker(settings: Settings) -> list[Check]:
    """A Redis broker that is a Redis Cluster node cannot carry Celery's messages."""
    url = settings.broker_url
    if url is None or not url.startswith(("redis://", "rediss://")):
        return []
    try:
        link = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            clustered = int(link.info("cluster").get("cluster_enabled", 0))
        finally:
            link.close()
    except (RedisError, OSError, ValueError) as exc:
        return [Check("broker", False, f"unreachable at {mask_url(url)}: {exc}")]
    if clustered:
        return [
            Check("broker", False, f"{mask_url(url)} is a Redis Cluster node: {CLUSTER_BROKER}")
        ]
    return [Check("broker", True, f"a plain Redis at {mask_url(url)}")]


def _runner(settings: Settings) -> Check:
    if not settings.runner:
        return Check("runner", False, "SCHEDULED_PROMPTS_RUNNER is not set: nothing will deliver")
    try:
        runner = load_runner(settings.runner)
    except ValueError as exc:
        return Check("runner", False, str(exc))
    return Check("runner", True, f"{settings.runner} -> {type(runner).__name__}")


def _workers() -> Check:
    from ..celery_app import app  # noqa: PLC0415

    try:
        replies = app.control.ping(timeout=1.5)
    except Exception as exc:  # kombu raises many connection error types
        return Check("workers", False, f"cannot ask workers: {exc}")
    names = sorted(name for reply in replies for name in reply)
    return Check(
        "workers", bool(names), ", ".join(names) + " answered" if names else "no worker answered"
    )


def _probe(kind: str, settings: Settings, missed: int) -> None:
    """One line and exit 0/1, from the pulse files of the workers on this host."""
    pulses = pulse.running(pulse.pulse_dir(settings))
    if kind == "liveness":
        problem = pulse.liveness(pulses, missed=missed)
    else:
        problem = pulse.readiness(pulses, lambda: _store_problem(settings))
    if problem is not None:
        click.echo(f"not {'live' if kind == 'liveness' else 'ready'}: {problem}")
        sys.exit(1)
    names = ", ".join(p.worker for p in pulses) or "no worker here"
    click.echo(f"{'live' if kind == 'liveness' else 'ready'}: {names}")
    sys.exit(0)


def _client(settings: Settings, timeout: float) -> redis.Redis:
    """A client of its own for the checks, with short timeouts: a check must answer."""
    return new_redis(settings, timeout=timeout)


def _unreachable(settings: Settings, client: redis.Redis) -> str | None:
    """None when ``client`` answers PING; else what went wrong, the URL masked."""
    try:
        client.ping()
    except STORE_ERRORS as exc:
        return f"unreachable at {mask_url(settings.redis_url)}: {exc}"
    return None


def _store_problem(settings: Settings) -> str | None:
    client = _client(settings, 1)
    try:
        problem = _unreachable(settings, client)
    finally:
        client.close()
    return None if problem is None else f"Redis {problem}"


@commands.command()
@json_option
@click.option(
    "--probe",
    type=click.Choice(["liveness", "readiness"]),
    help="Only this probe, for health checks: one line, exit 0 or 1. liveness: every "
    "worker on this host took a pulse through the broker lately; readiness: Redis "
    "answers and every worker here consumes now.",
)
@click.option(
    "--missed",
    type=click.IntRange(1),
    default=pulse.MISSED,
    show_default=True,
    help="liveness: pulse intervals a worker may miss before it is not live.",
)
def doctor(as_json: bool, probe: str | None, missed: int) -> None:
    """Check Redis, persistence, eviction, replication and sentinels, timeouts, the
    runner, workers and beat."""
    try:
        settings = get_settings()
    except ValueError as exc:  # the settings themselves: what is wrong, and what to set
        _report([Check("settings", False, str(exc))], as_json)
        sys.exit(1)
    if probe is not None:
        _probe(probe, settings, missed)
    client = _client(settings, 2)
    problem = _unreachable(settings, client)
    reachable = problem is None
    checks = [Check("redis", reachable, problem or f"reachable at {mask_url(settings.redis_url)}")]
    steps: list[Callable[[], list[Check]]] = [
        lambda: _redis_checks(settings, client) if reachable else [],
        lambda: topology.checks(settings, client, 2) if reachable else [],
        lambda: _broker(settings),
        lambda: [_visibility(settings)],
        lambda: [_runner(settings)],
        lambda: [_workers()] if reachable else [],
    ]
    for step in steps:
        checks.extend(step())
    client.close()
    _report(checks, as_json)
    sys.exit(0 if all(c.ok for c in checks) else 1)


def _report(checks: list[Check], as_json: bool) -> None:
    if as_json:
        print_json({"ok": all(c.ok for c in checks), "checks": [c.__dict__ for c in checks]})
        return
    for c in checks:
        mark = click.style("ok  ", fg="green") if c.ok else click.style("FAIL", fg="red")
        click.echo(f"{mark} {c.name}: {c.detail}")
