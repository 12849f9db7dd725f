"""Redis behind Sentinel, and writes that wait for replicas (SCHEDULED_PROMPTS_MIN_REPLICAS).

Against real processes: a primary, a replica and three sentinels on loopback
(``support/sentinel.py``). The failover tests kill the primary with ``kill -9``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from click.testing import CliRunner

import scheduled_prompts as sp
from scheduled_prompts import aio, engine
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.celery_app import broker_config
from scheduled_prompts.cli import cli
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.occurrences import Delivery
from scheduled_prompts.settings import mask_url, sentinel_target, settings_from_env
from scheduled_prompts.tools import ToolContext, handle_tool_call
from support.recording_runner import MemoryRunner
from support.sentinel import SentinelGroup

pytestmark = [pytest.mark.xdist_group("sentinel"), pytest.mark.timeout(180)]

DATA_PW = "data-pw-71"
SENTINEL_PW = "sentinel-pw-72"


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    """One primary, one replica, three sentinels; both kinds of node password-protected."""
    with SentinelGroup(password=DATA_PW, sentinel_password=SENTINEL_PW) as g:
        yield g


@pytest.fixture
def ha(group: SentinelGroup) -> Iterator[SentinelGroup]:
    """Settings pointed at the group through its Sentinel URL, the store emptied."""
    client = group.node_client(group.primary())
    client.flushall()
    client.close()
    sp.configure(redis_url=group.url(), sentinel_password=SENTINEL_PW)
    yield group
    sp.configure()


def _wait_count(group: SentinelGroup) -> int:
    """How many WAIT commands the primary ran (INFO commandstats)."""
    client = group.node_client(group.primary())
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


# --- the URL -----------------------------------------------------------------------------


def test_a_sentinel_url_names_sentinels_service_database_and_credentials() -> None:
    target = sentinel_target("redis+sentinel://app:p%40ss@h1:26380,h2,[::1]:26381/main/3")
    assert target is not None
    assert target.sentinels == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert (target.service, target.db, target.username, target.password) == (
        "main",
        3,
        "app",
        "p@ss",
    )
    assert not target.tls
    tls = sentinel_target("rediss+sentinel://:pw@h1:1/main?ssl_ca_certs=/ca.pem")
    assert tls is not None and tls.tls and tls.tls_options == {"ssl_ca_certs": "/ca.pem"}
    assert tls.db == 0 and tls.username is None and tls.password == "pw"
    assert sentinel_target("redis://h:6379/0") is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h1:26379", "the path must be the service name"),
        ("redis+sentinel://h1:26379/", "the path must be the service name"),
        ("redis+sentinel://h1:26379/main/x", "database 'x' is not a number"),
        ("redis+sentinel://h1:26379/main/0/extra", "the path must be the service name"),
        ("redis+sentinel://h1:port/main", "has a port that is not a number"),
        ("redis+sentinel://h1:1,,h2:2/main", "a sentinel address is empty"),
        ("redis+sentinel://:9/main", "has no host"),
        ("redis+sentinel://h1/main?ssl_ca_certs=/x", "unknown option 'ssl_ca_certs'"),
        ("rediss+sentinel://h1/main?db=2", "unknown option 'db'"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_saying_what_is_accepted_and_changes_nothing(
    url: str, problem: str, redis_url: str
) -> None:
    bad = url.replace("h1", "user:secret-73@h1", 1)
    with pytest.raises(ValueError) as caught:
        sp.configure(redis_url=bad)
    message = str(caught.value)
    assert message.startswith("SCHEDULED_PROMPTS_REDIS_URL=")
    assert problem in message
    assert "redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB]" in message
    assert "secret-73" not in message
    assert sp.get_settings().redis_url == redis_url  # the settings in force are kept
    with pytest.raises(ValueError, match=problem):
        settings_from_env({"SCHEDULED_PROMPTS_REDIS_URL": bad})


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("redis+sentinel://:pw-74@h1:1,h2:2/main/0", "pw-74", "redis+sentinel://:***@h1:1,h2:2/main/0"),
        ("rediss+sentinel://app:pw-75@[::1]:1,h2/main", "pw-75", "rediss+sentinel://app:***@[::1]:1,h2/main"),
        ("sentinel://:pw-76@h1:1/0;sentinel://:pw-76@h2:2/0", "pw-76", "sentinel://:***@h1:1/0;sentinel://:***@h2:2/0"),
    ],
)  # fmt: skip
def test_mask_url_hides_the_password_of_every_sentinel_form(
    url: str, secret: str, shown: str
) -> None:
    assert mask_url(url) == shown
    assert secret not in mask_url(url)


def test_settings_never_show_the_sentinel_password_or_the_data_password() -> None:
    settings = settings_from_env(
        {
            "SCHEDULED_PROMPTS_REDIS_URL": "redis+sentinel://:data-77@h1/main",
            "SCHEDULED_PROMPTS_SENTINEL_PASSWORD": "sentinel-78",
        }
    )
    assert settings.sentinel_password == "sentinel-78"
    shown = repr(settings)
    assert "data-77" not in shown and "sentinel-78" not in shown
    assert "sentinel_password='***'" in shown


def test_the_broker_follows_a_sentinel_store_through_kombus_sentinel_transport() -> None:
    settings = settings_from_env(
        {
            "SCHEDULED_PROMPTS_REDIS_URL": "redis+sentinel://app:p%40w@h1:1,[::1]:2/main/3",
            "SCHEDULED_PROMPTS_SENTINEL_PASSWORD": "s-pw",
        }
    )
    config = broker_config(settings)
    assert config["broker_url"] == "sentinel://app:p%40w@h1:1/3;sentinel://app:p%40w@[::1]:2/3"
    options = config["broker_transport_options"]
    assert options["master_name"] == "main"
    assert options["sentinel_kwargs"] == {"password": "s-pw"}
    assert options["visibility_timeout"] == settings.visibility_timeout
    assert config["broker_use_ssl"] is False  # set, so new settings replace TLS
    tls = broker_config(
        settings_from_env({"SCHEDULED_PROMPTS_REDIS_URL": "rediss+sentinel://h1/main"})
    )
    assert tls["broker_use_ssl"] == {"ssl_cert_reqs": "required"}
    assert tls["broker_transport_options"]["sentinel_kwargs"]["ssl"] is True
    own = broker_config(
        settings_from_env(
            {
                "SCHEDULED_PROMPTS_REDIS_URL": "redis+sentinel://h1/main",
                "SCHEDULED_PROMPTS_BROKER_URL": "amqp://guest@rabbit//",
            }
        )
    )
    assert own["broker_url"] == "amqp://guest@rabbit//"
    assert "master_name" not in own["broker_transport_options"]


# --- every front end through the sentinels ------------------------------------------------


def test_the_api_the_asyncio_api_and_the_tools_work_through_sentinel(ha: SentinelGroup) -> None:
    made = sp.schedule_prompt("via sentinel", user_id="u1", platform="p", delay=600)
    assert sp.get_prompt(made.id) == made

    async def from_asyncio() -> sp.ScheduledPrompt:
        other = await aio.schedule_prompt("async", user_id="u1", platform="p", delay=600)
        assert (await aio.get_prompt(made.id)) == made
        return other

    other = asyncio.run(from_asyncio())
    answer = json.loads(
        handle_tool_call(
            "list_scheduled_prompts", {}, context=ToolContext(user_id="u1", platform="p")
        )
    )
    assert {p["prompt_id"] for p in answer["prompts"]} == {made.id, other.id}
    # It is on the primary the sentinels name, and replicated.
    replica = next(n for n in ha.nodes if n.port != ha.primary_port())
    replica_client = ha.node_client(replica)
    ha._until(lambda: replica_client.exists(f"sp:prompt:{made.id}") == 1, 30, "replicated")
    replica_client.close()


def test_the_cli_and_doctor_work_through_sentinel_and_report_the_topology(
    ha: SentinelGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDULED_PROMPTS_SENTINEL_PASSWORD", SENTINEL_PW)
    made = sp.schedule_prompt("listed", user_id="u2", platform="p", delay=600)
    runner = CliRunner()
    # The URL as an operator passes it; the sentinels' password from the environment.
    listed = runner.invoke(cli, ["--redis-url", ha.url(), "list", "--user", "u2", "--json"])
    assert listed.exit_code == 0, listed.output
    assert made.id in listed.output
    result = runner.invoke(cli, ["doctor", "--json"])
    report = json.loads(result.output)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["redis"]["ok"], checks["redis"]
    assert checks["sentinels"]["ok"] and "3 of 3 answer (quorum 2)" in checks["sentinels"]["detail"]
    primary = f"127.0.0.1:{ha.primary_port()}"
    assert checks["primary"]["ok"] and checks["primary"]["detail"].startswith(primary)
    assert checks["replicas"]["ok"] and checks["replicas"]["detail"].startswith("1 online")
    assert "bytes behind" in checks["replicas"]["detail"]
    assert "min-replicas-to-write 0" in checks["min-replicas"]["detail"]
    # The test nodes run without AOF: doctor fails on what a restart would lose.
    assert checks["persistence"]["ok"] is False
    assert DATA_PW not in result.output and SENTINEL_PW not in result.output


def test_doctor_fails_when_the_replicas_asked_for_are_not_there(ha: SentinelGroup) -> None:
    sp.configure(redis_url=ha.url(), sentinel_password=SENTINEL_PW, min_replicas=2)
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 1
    checks = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert checks["replicas"]["ok"] is False
    assert "SCHEDULED_PROMPTS_MIN_REPLICAS=2" in checks["replicas"]["detail"]
    assert "min-replicas-to-write 2 refuses it up front" in checks["min-replicas"]["detail"]


def test_doctor_says_which_sentinels_are_silent_and_needs_the_sentinel_password(
    ha: SentinelGroup,
) -> None:
    sp.configure(redis_url=ha.url(), sentinel_password="wrong")
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 1
    checks = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert checks["redis"]["ok"] is False
    assert "wrong" not in result.output


def test_the_broker_carries_messages_through_sentinel(ha: SentinelGroup) -> None:
    from scheduled_prompts.celery_app import app

    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue("ha-broker-check")
        queue.put({"n": 1})
        message = queue.get(timeout=10)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
    # The broker's keys are on the primary the sentinels name.
    client = ha.node_client(ha.primary())
    assert client.exists("_kombu.binding.ha-broker-check") == 1
    client.close()


# --- writes that wait for replicas ------------------------------------------------------


def test_with_min_replicas_every_create_change_and_commit_waits_for_the_replica(
    ha: SentinelGroup,
) -> None:
    def writes() -> None:
        made = sp.schedule_prompt("durable", user_id="u", platform="p", delay=600)
        many = sp.schedule_many(
            [{"prompt": f"m{i}", "user_id": "u", "platform": "p", "delay": 600} for i in range(3)]
        )
        sp.update_prompt(made.id, prompt="durable, changed")
        sp.pause_prompt(many[0].id)
        sp.cancel_prompt(many[1].id)

    writes()  # without waiting: the scripts are loaded, so no call meets NOSCRIPT below
    assert _wait_count(ha) == 0
    sp.configure(redis_url=ha.url(), sentinel_password=SENTINEL_PW, min_replicas=1)
    writes()
    assert _wait_count(ha) == 5
    # A delivery claims and commits: two more waits, and the runner ran once.
    runner = MemoryRunner()
    sp.set_bot_runner(runner)
    try:
        now = utcnow()
        target = sp.schedule_prompt("now", user_id="u", platform="p", at=now + timedelta(seconds=1))
        before = _wait_count(ha)
        delivery = Delivery(target.id, to_ms(target.next_run_at))  # type: ignore[arg-type]
        result = engine.deliver(get_redis(), scope(), delivery)
        assert result.outcome.value == "delivered"
        assert [c["prompt_id"] for c in runner.calls] == [target.id]
        assert _wait_count(ha) == before + 2
    finally:
        sp.set_bot_runner(None)


def test_a_write_that_cannot_reach_the_replicas_fails_naming_the_count(ha: SentinelGroup) -> None:
    sp.configure(
        redis_url=ha.url(),
        sentinel_password=SENTINEL_PW,
        min_replicas=2,
        min_replicas_timeout_ms=50,
    )
    with pytest.raises(sp.StoreUnavailable) as caught:
        sp.schedule_prompt("lonely", user_id="u", platform="p", delay=600)
    message = str(caught.value)
    assert "reached 1 of the 2 replica(s) SCHEDULED_PROMPTS_MIN_REPLICAS requires" in message
    assert "within 50 ms" in message
    with pytest.raises(sp.StoreUnavailable, match="reached 1 of the 2"):
        sp.schedule_many([{"prompt": "a", "user_id": "u", "platform": "p", "delay": 60}])

    async def from_asyncio() -> None:
        await aio.schedule_many([{"prompt": "b", "user_id": "u", "platform": "p", "delay": 60}])

    with pytest.raises(sp.StoreUnavailable, match="reached 1 of the 2"):
        asyncio.run(from_asyncio())
    assert DATA_PW not in message


def test_no_runner_call_without_a_claim_the_replicas_acknowledged(ha: SentinelGroup) -> None:
    made = sp.schedule_prompt(
        "claimed", user_id="u", platform="p", at=utcnow() + timedelta(seconds=1)
    )
    sp.configure(
        redis_url=ha.url(),
        sentinel_password=SENTINEL_PW,
        min_replicas=2,
        min_replicas_timeout_ms=50,
    )
    runner = MemoryRunner()
    sp.set_bot_runner(runner)
    try:
        delivery = Delivery(made.id, to_ms(made.next_run_at))  # type: ignore[arg-type]
        with pytest.raises(redis.ConnectionError, match="reached 1 of the 2"):
            engine.deliver(get_redis(), scope(), delivery)
        assert runner.calls == []
    finally:
        sp.set_bot_runner(None)


# --- failover ---------------------------------------------------------------------------


def test_after_a_failover_the_same_client_follows_the_new_primary(tmp_path: Any) -> None:
    with SentinelGroup(password=DATA_PW, sentinel_password=SENTINEL_PW) as group:
        sp.configure(redis_url=group.url(), sentinel_password=SENTINEL_PW, min_replicas=1)
        try:
            made = sp.schedule_prompt("kept", user_id="u", platform="p", delay=600)
            old = group.primary_port()
            killed = group.kill_primary()
            group.wait_failover(old)
            # Acknowledged with MIN_REPLICAS=1: the new primary has it.
            assert sp.get_prompt(made.id) == made
            # No replica left to acknowledge: writes fail, saying so, until one is back.
            with pytest.raises(sp.StoreUnavailable, match="reached 0 of the 1"):
                sp.schedule_prompt("waits", user_id="u", platform="p", delay=600)
            group.restart(killed)
            group.wait_settled()
            again = sp.schedule_prompt("after", user_id="u", platform="p", delay=600)
            assert sp.get_prompt(again.id) == again
        finally:
            sp.configure()


def test_a_waiting_write_on_a_primary_without_the_script_loads_it_and_runs_once(
    ha: SentinelGroup,
) -> None:
    sp.configure(redis_url=ha.url(), sentinel_password=SENTINEL_PW, min_replicas=1)
    sp.schedule_prompt("first", user_id="u", platform="p", delay=600)  # the script is loaded
    # As on a new primary after a failover: the server no longer has the script.
    primary = ha.node_client(ha.primary())
    primary.script_flush()
    again = sp.schedule_prompt("again", user_id="u", platform="p", delay=600)
    assert sp.get_prompt(again.id) == again
    assert primary.zcard("sp:ids") == 2  # created once, not twice
    primary.close()
