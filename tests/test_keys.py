"""Redis key names: the literal strings, so a missing prefix or a `::` can never slip in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduled_prompts.keys import Keys


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
