"""The Celery app: ``celery -A scheduled_prompts worker`` / ``beat``.

Configuration is built from :class:`~scheduled_prompts.settings.Settings` wherever the
package runs; a ``celeryconfig`` module that is importable (the repository's, or a
deployment's own) is applied on top.
"""

from __future__ import annotations

import importlib
from datetime import timedelta
from types import ModuleType
from typing import Any
from urllib.parse import quote

from celery import Celery

from .settings import Settings, get_settings, on_reset, sentinel_target
from .worker import Pulse, RestoreStranded


def celery_config(settings: Settings | None = None) -> dict[str, Any]:
    """The Celery settings the app runs with, derived from ``settings``."""
    s = settings or get_settings()
    return {
        **broker_config(s),
        "broker_connection_retry_on_startup": True,
        # Celery's consumer exits the worker when a Redis broker goes away (see
        # scheduled_prompts.worker); ours reconnects and puts back what it held.
        "worker_consumer": "scheduled_prompts.worker:Consumer",
        # A runner call in progress when the broker goes away finishes and commits
        # through the store; cancelling it would only repeat it after the reconnect.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_default_queue": s.queue,
        # A quorum queue is declared by every process that sends or consumes, so the type
        # is a setting (each process builds it from the same environment), not only a
        # worker's celeryconfig. Its exchange stays direct: Celery's native delayed
        # delivery (topic exchanges) cannot send a countdown under a second, and the
        # worker holds ETA messages of the horizon only.
        "task_default_queue_type": s.queue_type,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "enable_utc": True,
        "timezone": "UTC",
        "beat_schedule": {
            "scheduled-prompts-tick": {
                "task": "scheduled_prompts.tick",
                "schedule": timedelta(seconds=s.tick_seconds),
            },
            "scheduled-prompts-cleanup": {
                "task": "scheduled_prompts.cleanup",
                "schedule": timedelta(hours=1),
                "kwargs": {"days_to_keep": s.cleanup_days},
            },
        },
    }


def broker_config(s: Settings) -> dict[str, Any]:
    """``broker_url`` and its transport options: ``SCHEDULED_PROMPTS_BROKER_URL``, else
    the store's Redis — through kombu's Sentinel transport when the store is behind
    Sentinel (``master_name`` = the service), with the same credentials and TLS."""
    # ETA tasks wait unacknowledged in the worker until due: the visibility timeout
    # must outlast the horizon, or the Redis transport redelivers them early.
    options: dict[str, Any] = {"visibility_timeout": s.visibility_timeout}
    if s.queue_type == "quorum":  # a publish counts once RabbitMQ has it
        options["confirm_publish"] = True
    # Every key set below is set here too, so that following new settings (configure())
    # replaces what the old ones set, TLS included.
    config: dict[str, Any] = {"broker_transport_options": options, "broker_use_ssl": False}
    target = None if s.broker_url else sentinel_target(s.redis_url)
    if target is None:
        return config | {"broker_url": s.broker_url or s.redis_url}
    credentials = ""
    if target.username or target.password is not None:
        credentials = quote(target.username or "", safe="")
        if target.password is not None:
            credentials += ":" + quote(target.password, safe="")
        credentials += "@"
    config["broker_url"] = ";".join(
        f"sentinel://{credentials}{f'[{host}]' if ':' in host else host}:{port}/{target.db}"
        for host, port in target.sentinels
    )
    options["master_name"] = target.service
    watch: dict[str, Any] = {}
    if s.sentinel_password is not None:
        watch["password"] = s.sentinel_password
    if target.tls:
        tls = {"ssl_cert_reqs": "required", **target.tls_options}
        watch.update(ssl=True, **tls)
        config["broker_use_ssl"] = tls
    if watch:
        options["sentinel_kwargs"] = watch
    return config


def create_app(settings: Settings | None = None) -> Celery:
    celery = Celery("scheduled_prompts", include=["scheduled_prompts.tasks"])
    celery.steps["consumer"].update({RestoreStranded, Pulse})
    celery.conf.update(celery_config(settings))
    try:
        override = importlib.import_module("celeryconfig")
    except ModuleNotFoundError as exc:
        if exc.name != "celeryconfig":
            raise
    else:
        # Applied with update() so that it wins over the defaults above (Celery's
        # config_from_object would sit *under* values set with update()).
        celery.conf.update(
            {
                k: v
                for k, v in vars(override).items()
                if k.islower()
                and not k.startswith("_")
                and not callable(v)
                and not isinstance(v, ModuleType)
            }
        )
    return celery


app = create_app()


def _follow_settings() -> None:
    # configure() changed the settings: rebuild the config and drop the broker
    # connections made with the old URL (Celery keeps them in two lazy pools).
    app.conf.update(celery_config())
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


on_reset(_follow_settings)
