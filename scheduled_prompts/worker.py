"""The worker's consumer: Celery's, made to survive the loss of a Redis broker.

``celery -A scheduled_prompts worker`` runs :class:`Consumer` (the app's
``worker_consumer`` setting), so a plain worker, with no flags and no supervisor, keeps
consuming after Redis is killed, restarted, paused or drops its connections.

Why Celery's own consumer dies (celery 5.7, kombu 5.7, Redis transport): on a lost
connection it first ``collect()``\\ s the broker connection, then ``close()``\\ s it.

1. ``collect()`` closes the default channel. The channel's ``close()`` first reads the
   reply of its pending ``BRPOP``; that read fails (the server is gone), the connection
   error escapes ``close()`` half way — the channel is neither marked closed nor has it
   put back its unacknowledged messages — and ``collect()`` ignores the error. It then
   detaches the transport from the connection (``transport.client = None``).
2. ``close()`` closes the same channel again. This time it gets as far as restoring the
   unacknowledged messages (the ETA tasks the worker holds), which needs a new Redis
   client, whose parameters come from ``transport.client`` — now ``None``: an
   ``AttributeError``. Celery ignores only connection errors there, so the worker stops
   with ``Unrecoverable error``.

The fix closes the channel *before* Celery's cleanup, while the transport still knows
its broker, and keeps the delivery tags of messages it could not put back (the broker
was down): once connected again, :class:`RestoreStranded` returns them to their queue,
so an ETA task held by the lost connection runs on time instead of after the visibility
timeout.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

from celery import bootsteps
from celery.exceptions import CPendingDeprecationWarning
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.entity import Exchange, Queue
from kombu.messaging import Consumer as MessageConsumer
from kombu.messaging import Producer

from . import pulse
from .pulse import pulse_dir
from .settings import get_settings

log = logging.getLogger("scheduled_prompts.worker")


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, with a connection loss that never ends the worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Delivery tags of messages left in the broker's unacknowledged index by a lost
        #: connection, to put back once connected again.
        self.stranded: list[str] = []
        super().__init__(*args, **kwargs)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        if connection is not None:
            self.stranded.extend(close_channel(connection))
            # Celery drops self.connection before it stops the steps, and a message
            # consumer step (gossip's) then fails to close its channels with an
            # AttributeError logged at ERROR on every reconnect: close them now.
            for step in self.blueprint.steps.values():
                if isinstance(step, bootsteps.ConsumerStep) and step.consumers:
                    step.stop(self)
                    step.consumers = None
        with warnings.catch_warnings():
            # Celery warns on every reconnect that a future default will cancel the
            # tasks running at the loss; this app sets that setting to False on purpose
            # (see celery_config), so the warning says nothing here.
            warnings.filterwarnings(
                "ignore", "\nIn Celery 5.1", category=CPendingDeprecationWarning
            )
            super().on_connection_error_after_connected(exc)


def close_channel(connection: Any) -> list[str]:
    """Close ``connection``'s default channel while its transport still knows the
    broker; returns the delivery tags it could not put back (Redis transport only)."""
    channel = getattr(connection, "_default_channel", None)
    if channel is None:
        return []
    qos = getattr(channel, "_qos", None)
    for _ in range(2):  # the first close may stop at the pending BRPOP's failed read
        try:
            channel.close()
        except Exception as exc:  # the broker is down: a connection error, whichever kind
            log.debug("closing the lost broker channel: %r", exc)
        if getattr(channel, "closed", True):
            break
    delivered = getattr(qos, "_delivered", None)
    if not delivered or not hasattr(qos, "restore_by_tag"):
        return []
    tags = [str(tag) for tag in delivered]
    delivered.clear()
    return tags


class RestoreStranded(bootsteps.StartStopStep):  # type: ignore[misc]
    """Once the consumer is connected again, put back the messages a lost connection
    left unacknowledged (see :func:`close_channel`)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Consumer) -> None:
        tags = getattr(c, "stranded", None)
        if not tags:
            return
        qos = c.connection.default_channel.qos
        count = len(tags)
        while tags:  # a tag leaves the list once put back: a new loss keeps the rest
            qos.restore_by_tag(tags[0])  # a tag already put back is a no-op
            tags.pop(0)
        log.warning("put back %d message(s) held by the lost broker connection", count)


class Pulse(bootsteps.StartStopStep):  # type: ignore[misc]
    """Every ``PULSE_SECONDS`` the worker sends itself a message through the broker, on
    a queue of its own; taking it proves the consumer consumes (see
    :mod:`scheduled_prompts.pulse`, read by ``doctor --probe``).

    The pulse queue has a channel of its own without a prefetch limit, and its messages
    are not acknowledged: a pool busy with long runner calls does not hold pulses back.
    Sending runs on the event loop's timer, so a loop that stopped turning sends none.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Consumer, **kwargs: Any) -> None:
        settings = get_settings()
        self.interval = settings.pulse_seconds
        self.directory = pulse_dir(settings)
        self.worker = c.hostname
        self.queue_name = f"{settings.queue}.pulse.{c.hostname}"
        self.started_at = 0.0  # set when the consumer first connects
        self.channel: Any = None
        self.timer_entry: Any = None
        super().__init__(c, **kwargs)

    def include_if(self, c: Consumer) -> bool:
        return self.interval > 0

    def start(self, c: Consumer) -> None:
        name, options = self.queue_name, {"durable": False, "auto_delete": True}
        exchange = Exchange(name, "direct", **options)  # type: ignore[no-untyped-call]
        queue = Queue(name, exchange, name, **options)  # type: ignore[no-untyped-call]
        self.channel = c.connection.channel()
        consumer = MessageConsumer(  # type: ignore[no-untyped-call]
            self.channel, [queue], callbacks=[self._taken], accept=["json"], no_ack=True
        )
        consumer.consume()  # type: ignore[no-untyped-call]
        producer = Producer(  # type: ignore[no-untyped-call]
            self.channel, exchange, routing_key=name, serializer="json"
        )
        self.started_at = self.started_at or time.time()
        self._write(None)

        def send() -> None:
            try:
                sent = {"sent_at": time.time()}
                producer.publish(sent, retry=False)  # type: ignore[no-untyped-call]
            except Exception as exc:  # the consumer notices a lost broker on its own
                log.debug("pulse not sent: %r", exc)

        send()
        self.timer_entry = c.timer.call_repeatedly(self.interval, send)

    def _taken(self, body: Any, message: Any) -> None:
        self._write(time.time())

    def _write(self, taken_at: float | None) -> None:
        try:
            pulse.record(
                self.directory,
                pulse.Pulse(self.worker, os.getpid(), self.interval, self.started_at, taken_at),
            )
        except OSError as exc:
            log.warning("cannot write the pulse file in %s: %s", self.directory, exc)

    def stop(self, c: Consumer) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
        channel, self.channel = self.channel, None
        if channel is not None:
            try:
                channel.close()
            except Exception as exc:  # a channel of a lost connection
                log.debug("closing the pulse channel: %r", exc)

    def shutdown(self, c: Consumer) -> None:
        self.stop(c)
        pulse.forget(self.directory, self.worker, os.getpid())
