"""``scheduled-prompts exporter``: the metrics in Prometheus' text format at ``/metrics``.

A ``prometheus_client`` collector reads :func:`metrics.snapshot` on every scrape, so the
figures are the store's (every worker process and machine counted where the outcome was
decided), and any number of exporters show the same. Series, all prefixed
``scheduled_prompts_``: ``deliveries_total{outcome,platform}``,
``limited_total{platform,limit}``, ``overlap_skipped_total{platform}`` (counters);
``delivery_lateness_seconds{kind,platform}``, ``runner_duration_seconds{platform}``,
``tick_duration_seconds`` (histograms); ``due_backlog``, ``inflight``,
``oldest_overdue_seconds``, ``last_tick_timestamp_seconds`` (gauges).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from . import api, metrics
from ._time import utcnow
from .connection import scope
from .errors import StoreUnavailable

log = logging.getLogger("scheduled_prompts.exporter")

PREFIX = "scheduled_prompts_"


@dataclass(frozen=True)
class Histogram:
    """A histogram: its series in the metrics hash, its metric name, labels, buckets."""

    source: str
    name: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...]
    doc: str


HISTOGRAMS = (
    Histogram(
        "lateness",
        "delivery_lateness_seconds",
        ("kind", "platform"),
        metrics.LATENESS_BUCKETS,
        "How late a delivery's runner call started after its occurrence.",
    ),
    Histogram(
        "runner",
        "runner_duration_seconds",
        ("platform",),
        metrics.RUNNER_BUCKETS,
        "How long runner calls took (every attempt).",
    ),
    Histogram("tick", "tick_duration_seconds", (), metrics.TICK_BUCKETS, "How long a tick took."),
)


class StoreCollector(Collector):
    """Reads the store on every scrape; ``up`` says whether Redis answered."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(PREFIX + "up", "1 when the store answered this scrape.")
        try:
            snap = api.run(metrics.snapshot(scope(), utcnow()))
        except StoreUnavailable as exc:
            log.warning("scrape: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families(snap)


def families(snap: metrics.Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot."""
    deliveries = CounterMetricFamily(
        PREFIX + "deliveries",
        "Delivery steps by outcome: delivered, failed, retried (a runner call to be "
        "retried), skipped (no longer due), redelivered (a message seen again).",
        labels=["outcome", "platform"],
    )
    present = {series[1] for series in _series(snap, "deliveries", 2)}
    for outcome in metrics.OUTCOMES:
        if outcome not in present:
            deliveries.add_metric([outcome, ""], 0)  # every outcome exists from the start
    for (_, outcome, platform), value in sorted(_by_series(snap, "deliveries", 2).items()):
        deliveries.add_metric([outcome, platform], value)
    yield deliveries
    limited = CounterMetricFamily(
        PREFIX + "limited",
        "Claims held back by a platform's rate or concurrency limit (each waits and comes "
        "back: not a failure).",
        labels=["platform", "limit"],
    )
    for (_, platform, limit), value in sorted(_by_series(snap, "limited", 2).items()):
        limited.add_metric([platform, limit], value)
    yield limited
    skipped = CounterMetricFamily(
        PREFIX + "overlap_skipped",
        "Cron occurrences not delivered because the prompt's previous run was still going "
        "on when they came due (its overlap policy; also on the record as skipped_runs).",
        labels=["platform"],
    )
    for (_, platform), value in sorted(_by_series(snap, "overlap_skipped", 1).items()):
        skipped.add_metric([platform], value)
    yield skipped
    for spec in HISTOGRAMS:
        yield _histogram(snap, spec)
    for name, value, doc in (
        ("due_backlog", snap.due_backlog, "Occurrences past due, not yet delivered."),
        ("inflight", snap.inflight, "Occurrences handed to Celery and not yet recorded."),
        (
            "oldest_overdue_seconds",
            snap.oldest_overdue_seconds,
            "How late the most overdue occurrence is.",
        ),
    ):
        gauge = GaugeMetricFamily(PREFIX + name, doc)
        gauge.add_metric([], value)
        yield gauge
    tick = GaugeMetricFamily(
        PREFIX + "last_tick_timestamp_seconds", "When beat's tick last ran (0: never)."
    )
    tick.add_metric([], snap.last_tick or 0)
    yield tick
    if snap.statuses is not None:  # absent until the first count completes (a tick does it)
        prompts = GaugeMetricFamily(
            PREFIX + "prompts", "Stored prompts by status.", labels=["status"]
        )
        for status, value in sorted(snap.statuses.items()):
            prompts.add_metric([status], value)
        yield prompts


def _series(snap: metrics.Snapshot, name: str, labels: int) -> list[tuple[str, ...]]:
    return [s for s in snap.series if s[0] == name and len(s) == labels + 1]


def _by_series(snap: metrics.Snapshot, name: str, labels: int) -> dict[tuple[str, ...], float]:
    return {s: snap.series[s] for s in _series(snap, name, labels)}


def _histogram(snap: metrics.Snapshot, spec: Histogram) -> HistogramMetricFamily:
    source, labels = spec.source, spec.labels
    family = HistogramMetricFamily(PREFIX + spec.name, spec.doc, labels=list(labels))
    counts: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for series, value in _by_series(snap, source, len(labels) + 1).items():
        counts[series[1:-1]][series[-1]] = value
    if not labels:
        counts.setdefault((), {})  # an unlabelled histogram exists from the start
    for label_values, by_edge in sorted(counts.items()):
        running = 0.0
        buckets = []
        for edge in metrics.bucket_labels(spec.bounds):
            running += by_edge.get(edge, 0.0)
            buckets.append((edge, running))
        total = snap.series.get((source + "_sum", *label_values), 0.0)
        family.add_metric(list(label_values), buckets, total)
    return family


def serve(host: str, port: int) -> None:
    """Serve ``/metrics`` until SIGINT or SIGTERM."""
    registry = CollectorRegistry()
    registry.register(StoreCollector())
    server, thread = start_http_server(port, addr=host, registry=registry)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(5)
