"""``scheduled-prompts exporter`` as a real process, scraped over HTTP and parsed with
prometheus_client's own parser."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

import scheduled_prompts as sp
from scheduled_prompts import engine
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.errors import DeliveryError
from scheduled_prompts.occurrences import Delivery
from support.recording_runner import MemoryRunner
from support.served import Served

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def exporter(redis_url: str, tmp_path: Path) -> Iterator[str]:
    served = Served(tmp_path, redis_url, "exporter")
    yield served.base_url + "/metrics"
    assert served.stop(signal.SIGTERM) == 0


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_a_scrape_shows_the_counts_histograms_and_gauges_the_store_holds(
    exporter: str, redis_url: str
) -> None:
    sp.set_bot_runner(MemoryRunner())
    try:
        at = utcnow() + timedelta(seconds=30)
        p = sp.schedule_prompt("hello", user_id="u", platform="discord", at=at)
        d = Delivery(p.id, to_ms(at))
        engine.deliver(get_redis(), scope(), d, now=at + timedelta(seconds=0.3))
        sp.set_bot_runner(MemoryRunner(DeliveryError("later")))
        q = sp.schedule_prompt("retry me", user_id="u", platform="slack", at=at)
        engine.deliver(get_redis(), scope(), Delivery(q.id, to_ms(at)), now=at)
    finally:
        sp.set_bot_runner(None)
    tick_at = utcnow()
    engine.tick(get_redis(), scope(), lambda batch: None, now=tick_at)
    # One prompt ten minutes overdue in the due index (as after an outage).
    late = sp.schedule_prompt("overdue", user_id="u", platform="discord", delay=600)
    get_redis().zadd(scope().keys.due, {late.id: to_ms(utcnow()) - 600_000})

    got = scrape(exporter)
    assert got[("scheduled_prompts_up", ())] == 1
    delivered = (("outcome", "delivered"), ("platform", "discord"))
    assert got[("scheduled_prompts_deliveries_total", delivered)] == 1
    retried = (("outcome", "retried"), ("platform", "slack"))
    assert got[("scheduled_prompts_deliveries_total", retried)] == 1
    failed = (("outcome", "failed"), ("platform", ""))
    assert got[("scheduled_prompts_deliveries_total", failed)] == 0  # present from the start
    once = (("kind", "once"), ("platform", "discord"))
    lateness = "scheduled_prompts_delivery_lateness_seconds"
    assert got[(lateness + "_bucket", tuple(sorted((*once, ("le", "0.25")))))] == 0
    assert got[(lateness + "_bucket", tuple(sorted((*once, ("le", "0.5")))))] == 1
    assert got[(lateness + "_bucket", tuple(sorted((*once, ("le", "+Inf")))))] == 1
    assert got[(lateness + "_count", once)] == 1
    assert got[(lateness + "_sum", once)] == pytest.approx(0.3)
    runner = "scheduled_prompts_runner_duration_seconds_count"
    assert got[(runner, (("platform", "discord"),))] == 1
    assert got[(runner, (("platform", "slack"),))] == 1
    assert got[("scheduled_prompts_tick_duration_seconds_count", ())] == 1
    assert got[("scheduled_prompts_last_tick_timestamp_seconds", ())] == pytest.approx(
        to_ms(tick_at) / 1000
    )
    assert got[("scheduled_prompts_due_backlog", ())] == 1
    assert got[("scheduled_prompts_oldest_overdue_seconds", ())] >= 600
    assert got[("scheduled_prompts_inflight", ())] == get_redis().zcard(scope().keys.inflight)
    # By status: q waits for its retry (still scheduled), p ran, late is scheduled.
    statuses = {
        labels[0][1]: value
        for (name, labels), value in got.items()
        if name == "scheduled_prompts_prompts"
    }
    assert statuses == {
        "scheduled": 2, "executed": 1, "active": 0, "paused": 0, "cancelled": 0, "failed": 0
    }  # fmt: skip


def _commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def test_a_scrape_costs_the_same_with_ten_or_two_thousand_stored_prompts(
    exporter: str, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)

    def cost() -> int:
        before = _commands(client)
        scrape(exporter)
        return _commands(client) - before - 1  # INFO itself counts once

    sp.schedule_many(
        [{"prompt": f"p{i}", "user_id": "u", "platform": "p", "delay": 3600} for i in range(10)]
    )
    scrape(exporter)  # the exporter's connection made
    small = cost()
    sp.schedule_many(
        [
            {"prompt": f"q{i}", "user_id": f"u{i}", "platform": "p", "delay": 3600}
            for i in range(2000)
        ]
    )
    assert cost() == small
    assert small <= 10


# --- the alert rules and the dashboard -----------------------------------------------------

DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\bscheduled_prompts_[a-z_]+\b")


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "scheduled-prompts.json").read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def test_the_alert_rules_are_well_formed_promql() -> None:
    rules = _rules()
    names = {r["alert"] for r in rules}
    for wanted in ("BeatStopped", "BacklogGrowing", "DeliveriesLate", "FailureRatio"):
        assert f"ScheduledPrompts{wanted}" in names
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["for"].endswith("m")


def test_the_dashboard_queries_are_well_formed_promql() -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 8
    for expr in exprs:
        promql_parser.parse(expr)


def test_every_metric_the_rules_and_dashboard_name_is_in_a_real_scrape(exporter: str) -> None:
    # A deployment that ticked and delivered once (labelled series appear with their labels).
    engine.tick(get_redis(), scope(), lambda batch: None)
    sp.set_bot_runner(MemoryRunner())
    try:
        at = utcnow() + timedelta(seconds=30)
        p = sp.schedule_prompt("hello", user_id="u", platform="discord", at=at)
        engine.deliver(get_redis(), scope(), Delivery(p.id, to_ms(at)), now=at)
    finally:
        sp.set_bot_runner(None)
    text = httpx.get(exporter, timeout=30).text
    scraped = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    named = {
        m for e in [r["expr"] for r in _rules()] + _dashboard_exprs() for m in METRIC.findall(e)
    }
    assert named, "the rules name our metrics"
    assert named <= scraped, sorted(named - scraped)
