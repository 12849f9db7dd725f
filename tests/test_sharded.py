"""A sharded store: four shards on one Redis, and a real 3-primary Redis Cluster.

Every test runs on both. On the cluster any script or multi-key command that touched
two slots would be refused by the node (CROSSSLOT), so each test also checks that the
store keeps every call within one shard. Time is passed explicitly where the engine
runs (``now=``); no test sleeps across a boundary.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from click.testing import CliRunner

import scheduled_prompts as sp
from scheduled_prompts import aio, engine, hydration, metrics, retention
from scheduled_prompts._time import utcnow
from scheduled_prompts.cli import cli
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.keys import shard_of
from scheduled_prompts.occurrences import Delivery, batches
from scheduled_prompts.plans import run
from scheduled_prompts.store import Scope
from scheduled_prompts.tools import ToolContext, handle_tool_call
from support.recording_runner import MemoryRunner
from support.redis_cluster import RedisCluster
from support.redis_server import RedisServer

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("cluster")]

USERS = [f"user-{i}" for i in range(40)]


@pytest.fixture(params=["four shards on one Redis", "a Redis Cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The kind of sharded store the test runs on."""
    if request.param == "a Redis Cluster":
        request.getfixturevalue("cluster_url")
    else:
        url = request.getfixturevalue("redis_url")
        sp.configure(redis_url=url, shards=4)
    yield request.param
    sp.configure()


@pytest.fixture
def memory(store: str) -> Iterator[MemoryRunner]:
    installed = MemoryRunner()
    sp.set_bot_runner(installed)
    yield installed
    sp.set_bot_runner(None)


def stored_keys() -> set[str]:
    """Every key of the store, on whichever nodes hold them."""
    client = get_redis()
    return {str(k) for k in client.scan_iter(match="sp:*", count=1000)}


def later(seconds: float = 3600) -> datetime:
    return utcnow().replace(microsecond=0) + timedelta(seconds=seconds)


def spread(n: int = 40, **kw: Any) -> list[sp.ScheduledPrompt]:
    """``n`` one-time prompts, one per user (so they fall in many shards)."""
    kw.setdefault("at", later())
    return [
        sp.schedule_prompt(f"prompt {i}", user_id=USERS[i % len(USERS)], platform="p", **kw)
        for i in range(n)
    ]


def deliver_all(published: list[Delivery], now: datetime) -> list[engine.Result]:
    """Deliver what tick or hydration published, as the tasks do: each in its shard."""
    client, whole = get_redis(), scope()
    results: list[engine.Result] = []
    for d in published:
        results.append(engine.deliver(client, whole.shard(d.shard), d, attempt=1, now=now))
    return results


# --- where prompts live -----------------------------------------------------------------


def test_a_prompt_lives_in_its_users_shard_and_is_found_by_id_alone(store: str) -> None:
    prompts = spread()
    shards = scope().shards
    assert shards == (4 if store.startswith("four") else 16)
    keys = stored_keys()
    homes = set()
    for p in prompts:
        home = shard_of(p.user_id, shards)
        homes.add(home)
        assert f"sp:{{{home}}}:prompt:{p.id}" in keys
        assert f"sp:prompt:{p.id}" not in keys
        assert sp.get_prompt(p.id) == p  # no user given: every shard is asked
    assert len(homes) > 1
    # Nothing is stored outside a shard's hash tag.
    assert all(k.startswith("sp:{") for k in keys), sorted(k for k in keys if "{" not in k)


def test_listing_merges_every_shard_in_id_order_and_a_user_sees_their_own(store: str) -> None:
    prompts = spread()
    everything: list[str] = []
    cursor = None
    while True:
        page = sp.list_prompts(limit=7, cursor=cursor)
        everything += [p.id for p in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert everything == sorted(p.id for p in prompts)
    mine = sp.list_prompts(user_id="user-3").items
    assert [p.id for p in mine] == [p.id for p in prompts if p.user_id == "user-3"]
    assert sp.get_stats()["total"] == 40
    assert sp.get_stats()["by_status"]["scheduled"] == 40


def test_changes_by_id_alone_reach_the_prompts_shard(store: str) -> None:
    a, b, c, d = spread(4)
    assert sp.cancel_prompt(a.id).status is sp.Status.CANCELLED
    assert sp.pause_prompt(b.id).status is sp.Status.PAUSED
    assert sp.resume_prompt(b.id).status is sp.Status.SCHEDULED
    moved = sp.update_prompt(c.id, prompt="new words")
    assert moved.prompt == "new words" and sp.get_prompt(c.id) == moved
    key = sp.trigger_prompt(d.id)
    home = scope().of_user(d.user_id)
    assert get_redis().zscore(home.keys.inflight, key) is not None
    # Another user's id is not theirs, whichever shard that user lives in.
    with pytest.raises(sp.PromptNotFound):
        sp.cancel_prompt(d.id, user_id="someone-else")
    assert sp.get_prompt(d.id).status is sp.Status.SCHEDULED  # type: ignore[union-attr]


def test_an_explicit_prompt_id_is_one_prompt_in_every_shard(store: str) -> None:
    shards = scope().shards
    first = USERS[0]
    other = next(u for u in USERS if shard_of(u, shards) != shard_of(first, shards))
    at = later()
    made = sp.schedule_prompt("digest", user_id=first, platform="p", at=at, prompt_id="daily")
    again = sp.schedule_prompt("digest", user_id=first, platform="p", at=at, prompt_id="daily")
    assert again == made
    with pytest.raises(sp.ConflictingPrompt, match="daily"):
        sp.schedule_prompt("digest", user_id=other, platform="p", at=at, prompt_id="daily")
    with pytest.raises(sp.ConflictingPrompt, match="daily"):
        sp.schedule_many(
            [
                {
                    "prompt": "digest",
                    "user_id": other,
                    "platform": "p",
                    "at": at,
                    "prompt_id": "daily",
                }
            ]
        )
    assert [k for k in stored_keys() if k.endswith(":prompt:daily")] == [
        f"sp:{{{shard_of(first, shards)}}}:prompt:daily"
    ]


def test_the_per_user_quota_holds_in_the_users_shard(store: str) -> None:
    sp.configure(**{**_current(), "max_prompts_per_user": 3})
    for _ in range(3):
        sp.schedule_prompt("x", user_id="ana", platform="p", delay=600)
    with pytest.raises(sp.QuotaExceeded):
        sp.schedule_prompt("x", user_id="ana", platform="p", delay=600)
    specs = [{"prompt": "y", "user_id": u, "platform": "p", "delay": 600} for u in USERS[:10]]
    with pytest.raises(sp.QuotaExceeded):
        sp.schedule_many(
            [*specs, *[{"prompt": "z", "user_id": "ana", "platform": "p", "delay": 600}]]
        )
    assert sp.get_stats()["total"] == 3  # all or nothing: none of the batch was written
    assert len(sp.schedule_many(specs)) == 10


def _current() -> dict[str, Any]:
    settings = sp.get_settings()
    return {"redis_url": settings.redis_url, "broker_url": settings.broker_url,
            "shards": settings.shards}  # fmt: skip


def test_schedule_many_writes_every_users_shard(store: str) -> None:
    at = later()
    specs = [
        {"prompt": f"p{i}", "user_id": USERS[i % 40], "platform": "p", "at": at}
        for i in range(2_400)
    ]
    made = sp.schedule_many(specs)
    assert len({p.id for p in made}) == 2_400
    assert sp.get_stats()["total"] == 2_400
    ctx = scope()
    client = get_redis()
    per_shard = [int(client.zcard(s.keys.due)) for s in ctx.every_shard()]
    assert sum(per_shard) == 2_400
    assert sum(1 for n in per_shard if n) > 1
    for shard in ctx.every_shard():
        for user in {u for u in USERS if shard_of(u, ctx.shards) == shard.number}:
            assert int(client.hget(shard.keys.open_counts, user) or 0) == 2_400 // 40  # type: ignore[arg-type]


# --- the engine -------------------------------------------------------------------------


def test_tick_promotes_from_every_shard_and_each_occurrence_is_delivered_once(
    memory: MemoryRunner,
) -> None:
    at = later()
    prompts = spread(at=at)
    cron = sp.schedule_prompt("yearly", user_id="user-7", platform="p", cron="0 0 1 1 *")
    published: list[Delivery] = []
    client, ctx = get_redis(), scope()
    engine.tick(client, ctx, published.extend, now=at - timedelta(seconds=60))
    assert {d.prompt_id for d in published} == {p.id for p in prompts}
    assert {d.shard for d in published} == {shard_of(p.user_id, ctx.shards) for p in prompts}
    assert all(d.shard == shard_of(sp.get_prompt(d.prompt_id).user_id, ctx.shards)  # type: ignore[union-attr]
               for d in published)  # fmt: skip
    results = deliver_all(published, now=at)
    assert {r.outcome for r in results} == {engine.Outcome.DELIVERED}
    assert deliver_all(published, now=at)  # again: the messages of a redelivery
    assert sorted(c["prompt_id"] for c in memory.calls) == sorted(p.id for p in prompts)
    assert all(sp.get_prompt(p.id).status is sp.Status.EXECUTED for p in prompts)  # type: ignore[union-attr]
    snap = run(metrics.snapshot(ctx, at), client, published.extend)
    assert snap.series[("deliveries", "delivered", "p")] == 40
    assert snap.series[("deliveries", "redelivered", "p")] == 40
    assert snap.statuses is not None and snap.statuses["executed"] == 40
    assert snap.statuses["active"] == 1 and snap.last_tick is not None
    assert cron.id not in {d.prompt_id for d in published}


def test_batches_keep_to_one_shard(memory: MemoryRunner) -> None:
    at = later()
    prompts = spread(at=at)
    published: list[Delivery] = []
    engine.tick(get_redis(), scope(), published.extend, now=at - timedelta(seconds=60))
    groups = batches(published, 200, 20)
    assert all(len({d.shard for d in g}) == 1 for g in groups)
    assert sorted(d.prompt_id for g in groups for d in g) == sorted(p.id for p in prompts)
    client, ctx = get_redis(), scope()
    for group in groups:
        results = engine.deliver_many(client, ctx.shard(group[0].shard), group, now=at)
        assert {r.outcome for r in results} == {engine.Outcome.DELIVERED}
    assert len(memory.calls) == 40


def test_redrive_hydration_and_cleanup_cover_every_shard(memory: MemoryRunner) -> None:
    at = later()
    prompts = spread(at=at)
    client, ctx = get_redis(), scope()
    first: list[Delivery] = []
    engine.tick(client, ctx, first.extend, now=at - timedelta(seconds=60))
    # The tasks were lost: hydration hands every shard's in-flight occurrences over again.
    again: list[Delivery] = []
    count = run(hydration.hydrate(ctx, at, limit=1000), client, again.extend)
    assert count == 40 and sorted(again, key=str) == sorted(first, key=str)
    # Later still, tick re-drives what overran its deadline, in every shard.
    redriven: list[Delivery] = []
    engine.tick(client, ctx, redriven.extend, now=at + timedelta(seconds=200))
    assert {d.key for d in redriven} == {d.key for d in first}
    deliver_all(redriven, now=at + timedelta(seconds=200))
    assert len(memory.calls) == 40
    # Finished at ``at + 200 s``: a cleanup keeping 0 days, run after that, takes them all.
    result = run(retention.cleanup(ctx, 0, at + timedelta(seconds=300)), client, again.extend)
    assert result["deleted"] == 40
    assert sp.get_stats()["total"] == 0 and sp.list_prompts().items == []
    assert {p.id for p in prompts}.isdisjoint(k.rsplit(":", 1)[-1] for k in stored_keys())


# --- every front end --------------------------------------------------------------------


def test_the_asyncio_api_on_a_sharded_store(store: str) -> None:
    async def main() -> None:
        made = await aio.schedule_prompt("hi", user_id="user-5", platform="p", delay=600)
        many = await aio.schedule_many(
            [{"prompt": "m", "user_id": u, "platform": "p", "delay": 600} for u in USERS]
        )
        assert await aio.get_prompt(made.id) == made
        listed = await aio.list_prompts(limit=100)
        assert sorted(p.id for p in listed.items) == sorted([made.id, *(p.id for p in many)])
        assert (await aio.cancel_prompt(many[9].id)).status is sp.Status.CANCELLED
        assert (await aio.get_stats())["by_status"]["cancelled"] == 1
        assert (await aio.tick_scheduled_prompts()) == {"promoted": 0, "redriven": 0}

    asyncio.run(main())


def test_the_llm_tools_on_a_sharded_store(store: str) -> None:
    ana = ToolContext("ana", "telegram")
    bob = ToolContext("bob", "telegram")

    def call(name: str, args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(handle_tool_call(name, args, context=ctx))
        return result

    made = call("schedule_prompt", {"prompt": "stretch", "delay_seconds": 900}, ana)
    assert made["success"] is True, made
    prompt_id = made["prompt_id"]
    listed = call("list_scheduled_prompts", {}, ana)
    assert [p["prompt_id"] for p in listed["prompts"]] == [prompt_id]
    assert call("list_scheduled_prompts", {}, bob)["prompts"] == []
    refused = call("cancel_scheduled_prompt", {"prompt_id": prompt_id}, bob)
    assert refused["error"].startswith("no scheduled prompt with id"), refused
    assert call("cancel_scheduled_prompt", {"prompt_id": prompt_id}, ana)["success"] is True
    assert sp.get_prompt(prompt_id).status is sp.Status.CANCELLED  # type: ignore[union-attr]


def invoke(*args: str, input: str | None = None) -> Any:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_cli_on_a_sharded_store(store: str) -> None:
    spread(12)
    added = json.loads(invoke("add", "from the cli", "--user", "cli-user", "--platform", "p",
                              "--delay", "600", "--json").output)  # fmt: skip
    shown = json.loads(invoke("show", added["id"], "--json").output)
    assert shown["id"] == added["id"]
    listed = json.loads(invoke("list", "--json").output)
    assert len(listed["items"]) == 13 and listed["next_cursor"] is None
    assert json.loads(invoke("stats", "--json").output)["total"] == 13
    invoke("cancel", added["id"])
    assert sp.get_prompt(added["id"]).status is sp.Status.CANCELLED  # type: ignore[union-attr]
    exported = invoke("export").stdout
    assert len(exported.splitlines()) == 13


# --- migration ----------------------------------------------------------------------------


def test_export_from_one_redis_imports_into_a_cluster_and_back(
    redis_server: RedisServer, redis_cluster: RedisCluster, cluster_url: str
) -> None:
    plain = redis.Redis.from_url(redis_server.url)
    plain.flushall()
    plain.close()
    single = {"redis_url": redis_server.url, "broker_url": None}
    sp.configure(**single)
    at = later()
    made = [
        *spread(at=at),
        sp.schedule_prompt("hourly", user_id="user-2", platform="p", cron="0 * * * *",
                           timezone="Asia/Kolkata"),
        sp.schedule_prompt("kept", user_id="user-3", platform="p", at=at, prompt_id="kept"),
    ]  # fmt: skip
    sp.pause_prompt(made[0].id)
    source = invoke("export").stdout
    assert len(source.splitlines()) == 42

    sp.configure(redis_url=cluster_url, broker_url=redis_server.url)
    result = invoke("import", "-", input=source)
    assert "42" in result.output
    assert invoke("export").stdout == source  # the same records, in the same order
    assert sp.get_prompt("kept").user_id == "user-3"  # type: ignore[union-attr]
    assert sp.get_prompt(made[0].id).status is sp.Status.PAUSED  # type: ignore[union-attr]
    assert sp.get_stats()["total"] == 42

    # And back: into an empty single Redis.
    plain = redis.Redis.from_url(redis_server.url)
    plain.flushall()
    plain.close()
    sp.configure(**single)
    invoke("import", "-", input=source)
    assert invoke("export").stdout == source
    assert all(k.startswith("sp:") and "{" not in k for k in stored_keys())


def test_the_store_scope_names_no_shard_on_one_redis(redis_url: str) -> None:
    """One shard on one Redis: the names a single Redis has always had."""
    ctx = scope()
    assert ctx.shards == 1 and ctx.every_shard() == [ctx]
    assert ctx.keys.due == "sp:due" and ctx.of_user("anyone") is ctx
    p = sp.schedule_prompt("x", user_id="u", platform="p", delay=600)
    assert get_redis().exists(f"sp:prompt:{p.id}") == 1
    assert Delivery(p.id, 1).task_kwargs == {}


def test_scope_shards_are_tagged_on_a_cluster_even_with_one(cluster_url: str) -> None:
    sp.configure(redis_url=cluster_url, broker_url="memory://", shards=1)
    ctx: Scope = scope()
    assert ctx.every_shard() == [ctx] and ctx.keys.due == "sp:{0}:due"
    p = sp.schedule_prompt("x", user_id="u", platform="p", delay=600)
    assert sp.get_prompt(p.id) == p
    assert stored_keys() >= {f"sp:{{0}}:prompt:{p.id}", "sp:{0}:due"}


# --- platform limits ----------------------------------------------------------------------


def test_each_shard_enforces_its_share_of_a_platform_limit() -> None:
    from scheduled_prompts.limits import limits

    shared = json.loads(limits("p=40/s:8", "p=6", 4).script_arg)
    assert shared == {"p": [100.0, 100.0, 1]}  # 10/s, a burst of 2 and 1 call per shard
    assert json.loads(limits("p=40/s:8", "p=6").script_arg) == {"p": [25.0, 175.0, 6]}
    with pytest.raises(ValueError, match=r"p=2: a store of 4 shards .* at least 4"):
        sp.configure(shards=4, concurrency_limits="p=2")
    sp.configure()


def test_a_rate_limited_platform_admits_one_per_shard_at_once(memory: MemoryRunner) -> None:
    shards = scope().shards
    sp.configure(**{**_current(), "rate_limits": f"p={shards}/s"})  # 1/s in each shard
    at = later()
    prompts = spread(at=at)
    published: list[Delivery] = []
    engine.tick(get_redis(), scope(), published.extend, now=at - timedelta(seconds=60))
    results = deliver_all(published, now=at)
    delivered = [d for d, r in zip(published, results, strict=True)
                 if r.outcome is engine.Outcome.DELIVERED]  # fmt: skip
    held = [r for r in results if r.outcome is engine.Outcome.LIMITED]
    assert sorted(d.shard for d in delivered) == sorted(
        {shard_of(p.user_id, shards) for p in prompts}
    )
    assert len(held) == 40 - len(delivered) and all(r.retry_in > 0 for r in held)


# --- doctor -------------------------------------------------------------------------------


def doctor() -> dict[str, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["doctor", "--json"], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_doctor_checks_every_primary_and_where_the_shards_live(
    cluster_url: str, redis_cluster: RedisCluster, redis_server: RedisServer
) -> None:
    checks = doctor()
    assert checks["cluster"]["ok"], checks["cluster"]
    assert "16 shard(s) over 3 primaries" in checks["cluster"]["detail"]
    # The suite's cluster has no replicas: doctor says what a lost primary would cost.
    assert not checks["cluster replicas"]["ok"]
    assert "give every primary a replica" in checks["cluster replicas"]["detail"]
    assert checks["maxmemory-policy"] == {
        "name": "maxmemory-policy",
        "ok": True,
        "detail": "every primary: noeviction",
    }
    assert (
        not checks["persistence"]["ok"]
        and "127.0.0.1:" in checks["persistence"]["detail"]
        and "off: a restart loses every prompt" in checks["persistence"]["detail"]
    )
    assert checks["broker"] == {"name": "broker", "ok": True,
                                "detail": f"a plain Redis at {redis_server.url}"}  # fmt: skip
    node = redis_cluster.addresses[0]
    sp.configure(redis_url=cluster_url, broker_url=f"redis://{node}/0")
    broker = doctor()["broker"]
    assert (
        not broker["ok"]
        and "is a Redis Cluster node: a Redis Cluster cannot be the Celery broker"
        in broker["detail"]
    )


# --- the console ----------------------------------------------------------------------------


def test_the_console_on_a_sharded_store(memory: MemoryRunner) -> None:
    from starlette.testclient import TestClient

    from scheduled_prompts.console.app import create_app
    from scheduled_prompts.console.auth import Access

    token = "console-token-for-the-shards-1234"
    at = later(600)
    prompts = spread(12, at=at)
    published: list[Delivery] = []
    engine.tick(get_redis(), scope(), published.extend, now=at - timedelta(seconds=60))
    deliver_all(published[:3], now=at)
    with TestClient(create_app(Access(token)), follow_redirects=False) as client:
        form = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        assert (
            client.post("/login", data={"csrf": csrf[1], "token": token, "next": "/"}).status_code
            == 303
        )
        listing = client.get("/?limit=100")
        shown = re.findall(r'<td class="id"><a href="/prompts/[^"]+">([^<]+)</a>', listing.text)
        assert shown == sorted(p.id for p in prompts)
        done = next(p for p in prompts if p.id == published[0].prompt_id)
        detail = client.get(f"/prompts/{done.id}")
        # Its recent deliveries come from its own shard's log.
        assert detail.status_code == 200 and '<table class="deliveries">' in detail.text
        waiting = next(p for p in prompts if p.id not in {d.prompt_id for d in published[:3]})
        assert '<table class="deliveries">' not in client.get(f"/prompts/{waiting.id}").text
        load = client.get("/load")
        assert load.status_code == 200
        page = client.get(f"/prompts/{prompts[5].id}")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        paused = client.post("/actions/pause", data={"prompt_id": prompts[5].id, "csrf": csrf[1]})
        assert paused.status_code == 303
    assert sp.get_prompt(prompts[5].id).status is sp.Status.PAUSED  # type: ignore[union-attr]


def test_a_cluster_no_node_answers_is_store_unavailable() -> None:
    from support.redis_server import free_port

    url = f"redis+cluster://ana:secret@127.0.0.1:{free_port()}/"
    sp.configure(redis_url=url, broker_url="memory://")
    try:
        with pytest.raises(sp.StoreUnavailable, match="RedisClusterUnreachableError") as caught:
            sp.get_prompt("any")
        assert "secret" not in str(caught.value) and "ana:***@" in str(caught.value)
        reply = json.loads(
            handle_tool_call("list_scheduled_prompts", {}, context=ToolContext("u", "p"))
        )
        assert reply == {
            "error": "the scheduler is unavailable right now; tell the user and try again later"
        }
    finally:
        sp.configure()


def test_tick_recounts_the_shards_whose_counts_are_incomplete(store: str) -> None:
    prompts = spread()
    client, ctx = get_redis(), scope()
    behind = ctx.of_user(prompts[0].user_id)
    client.delete(behind.keys.counts)  # as if its data were stored before the counts
    assert sp.get_stats()["total"] == 40
    assert run(metrics.statuses(ctx), client, [].extend) is None
    engine.tick(client, ctx, [].extend)
    assert run(metrics.statuses(ctx), client, [].extend)["scheduled"] == 40  # type: ignore[index]
    # The tick is recorded once, in shard 0.
    assert [s.number for s in ctx.every_shard() if client.exists(s.keys.beat)] == [0]
