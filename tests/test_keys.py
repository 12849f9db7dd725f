"""Redis key names: the literal strings, so a missing prefix or a `::` can never slip in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from scheduled_prompts.keys import Keys, shard_of


def all_keys(keys: Keys, prompt_id: str = "abc", user_id: str = "u1") -> list[str]:
    return [
        keys.prompt(prompt_id),
        keys.prompt_pattern,
        keys.ids,
        keys.due,
        keys.user(user_id),
        keys.open_counts,
        keys.finished,
    ]


def test_default_prefix_is_sp() -> None:
    assert Keys().prefix == "sp"
    assert Keys() == Keys("sp")


@pytest.mark.parametrize("prefix", ["sp", "myapp"])
def test_literal_key_strings(prefix: str) -> None:
    keys = Keys(prefix)
    assert keys.prompt("abc") == f"{prefix}:prompt:abc"
    assert keys.prompt_pattern == f"{prefix}:prompt:*"
    assert keys.ids == f"{prefix}:ids"
    assert keys.due == f"{prefix}:due"
    assert keys.user("u1") == f"{prefix}:user:u1"
    assert keys.open_counts == f"{prefix}:open"
    assert keys.finished == f"{prefix}:finished"


def test_literal_key_strings_for_sp_spelled_out() -> None:
    keys = Keys("sp")
    assert all_keys(keys) == [
        "sp:prompt:abc",
        "sp:prompt:*",
        "sp:ids",
        "sp:due",
        "sp:user:u1",
        "sp:open",
        "sp:finished",
    ]


def test_literal_key_strings_for_myapp_spelled_out() -> None:
    keys = Keys("myapp")
    assert all_keys(keys) == [
        "myapp:prompt:abc",
        "myapp:prompt:*",
        "myapp:ids",
        "myapp:due",
        "myapp:user:u1",
        "myapp:open",
        "myapp:finished",
    ]


@pytest.mark.parametrize("prefix", ["sp", "myapp", "tenant:sp"])
def test_no_key_contains_a_double_colon(prefix: str) -> None:
    for key in all_keys(Keys(prefix), prompt_id="0b7c-42", user_id="user-9"):
        assert "::" not in key, key
        assert key.startswith(prefix + ":"), key


@pytest.mark.parametrize("prefix", ["sp", "myapp"])
def test_distinct_kinds_of_key_never_collide(prefix: str) -> None:
    keys = all_keys(Keys(prefix))
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("user_id", ["a:b", "tenant:42:alice", "u:"])
def test_user_id_with_colon_stays_under_the_user_namespace(user_id: str) -> None:
    key = Keys("sp").user(user_id)
    assert key.startswith("sp:user:")
    assert key.removeprefix("sp:user:") == user_id


@given(st.text(min_size=1, max_size=80))
def test_user_key_is_prefix_user_and_the_id_verbatim(user_id: str) -> None:
    assert Keys("sp").user(user_id) == "sp:user:" + user_id
    assert Keys("myapp").user(user_id) == "myapp:user:" + user_id


@given(st.text(min_size=1, max_size=80))
def test_prompt_key_is_prefix_prompt_and_the_id_verbatim(prompt_id: str) -> None:
    assert Keys("sp").prompt(prompt_id) == "sp:prompt:" + prompt_id


@pytest.mark.parametrize(
    "prefix",
    ["", "sp:", "myapp::", "my app", " sp", "sp ", "sp\t", "sp\n"],
    ids=["empty", "trailing-colon", "trailing-double-colon", "space", "lead", "trail", "tab", "nl"],
)
def test_keys_rejects_a_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="key prefix"):
        Keys(prefix)


def test_one_shard_keeps_todays_names() -> None:
    keys = Keys("sp")
    assert keys.shard(0, 1) is keys
    assert keys.shard(0, 1).prompt("abc") == "sp:prompt:abc"
    assert shard_of("any-user", 1) == 0


def test_every_key_of_a_shard_falls_in_one_cluster_slot() -> None:
    keys = Keys("sp").shard(7, 16)
    names = [
        keys.prompt("01abc"), keys.due, keys.inflight, keys.ids, keys.user("u1"),
        keys.open_counts, keys.finished, keys.lease("01abc"), keys.lease("01abc:5:run"),
        keys.done("01abc:5"), keys.metrics, keys.counts, keys.log, keys.failures,
        keys.rate("discord"), keys.running("discord"),
    ]  # fmt: skip
    assert names[0] == "sp:{7}:prompt:01abc"
    assert {key_slot(n.encode()) for n in names} == {key_slot(b"sp:{7}:due")}
    # Other shards: other slots (16 shards spread over 16 distinct slots).
    slots = {key_slot(Keys("sp").shard(n, 16).due.encode()) for n in range(16)}
    assert len(slots) == 16


def test_a_users_prompts_have_one_shard_and_users_spread_evenly() -> None:
    assert shard_of("ana", 16) == shard_of("ana", 16)
    counts = [0] * 16
    for i in range(16_000):
        counts[shard_of(f"user-{i}", 16)] += 1
    assert min(counts) > 800 and max(counts) < 1200  # 1,000 each, give or take


def test_bad_shards_and_braced_prefixes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"shard must be in \[0, 16\)"):
        Keys("sp").shard(16, 16)
    with pytest.raises(ValueError, match="must not contain"):
        Keys("app{x}").shard(1, 16)
