"""The Redis Cluster the cluster tests run on: real nodes on loopback, and the rule the
store's scripts are built around — one script call touches keys of one hash slot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from support.redis_cluster import RedisCluster

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("cluster")]

TOUCH = "for i, k in ipairs(KEYS) do redis.call('INCR', k) end return #KEYS"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(primaries=3, replicas=1) as made:
        yield made


def test_three_primaries_with_a_replica_each_serve_every_slot(cluster: RedisCluster) -> None:
    client = cluster.client()
    try:
        primaries = client.get_primaries()
        assert len(primaries) == 3 and len(client.get_replicas()) == 3
        assert cluster.url.startswith("redis+cluster://127.0.0.1:")
        assert cluster.url.count(",") == 2
        # Keys spread over the three primaries; each answers for its own.
        owners = {client.get_node_from_key(f"k{i}").name for i in range(64)}  # type: ignore[no-untyped-call]
        assert owners == {p.name for p in primaries}
        for i in range(64):
            client.set(f"k{i}", i)
        assert [int(client.get(f"k{i}")) for i in range(64)] == list(range(64))  # type: ignore[arg-type]
    finally:
        client.close()


def test_a_script_may_touch_one_slot_only_which_a_hash_tag_gives(cluster: RedisCluster) -> None:
    client = cluster.client()
    try:
        touch = client.register_script(TOUCH)
        assert touch(keys=["sp:{3}:due", "sp:{3}:inflight"]) == 2  # one tag, one slot
        # The single-Redis names fall in two slots: the node refuses the call (asked
        # directly, as the cluster client would not even send it).
        owner = client.get_node_from_key("sp:due")  # type: ignore[no-untyped-call]
        node = redis.Redis(host=owner.host, port=owner.port)
        try:
            with pytest.raises(redis.ResponseError, match="same slot"):
                node.eval(TOUCH, 2, "sp:due", "sp:inflight")
        finally:
            node.close()
    finally:
        client.close()


def test_one_primary_is_a_one_node_cluster_serving_every_slot() -> None:
    with RedisCluster(primaries=1) as single:
        client = single.client()
        try:
            assert len(client.get_primaries()) == 1 and not client.get_replicas()
            touch = client.register_script(TOUCH)
            # Every slot is the one node's: any tag works, one slot per call still.
            assert touch(keys=["sp:{0}:due", "sp:{0}:ids"]) == 2
            assert touch(keys=["sp:{15}:due"]) == 1
        finally:
            client.close()
