"""Settings: SPEC §7 defaults, parsing SCHEDULED_PROMPTS_* variables, configure(), mask_url."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import scheduled_prompts
from scheduled_prompts.celery_app import broker_config, celery_config
from scheduled_prompts.settings import (
    ENV_PREFIX,
    ClusterTarget,
    Settings,
    cluster_target,
    get_settings,
    mask_url,
    settings_from_env,
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """An environment with no SCHEDULED_PROMPTS_* variables; settings restored afterwards."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    yield monkeypatch
    # Undo the environment first, so the cached settings are rebuilt from the real one.
    monkeypatch.undo()
    scheduled_prompts.configure()


# --- defaults ----------------------------------------------------------------------------


def test_defaults_match_spec_section_7() -> None:
    s = settings_from_env({})
    assert s.tick_seconds == 60
    assert s.horizon_seconds == 300
    assert s.lease_seconds == 60
    assert s.max_retries == 5
    assert s.cleanup_days == 7
    assert s.hydrate_limit == 500
    assert s.max_prompt_chars == 32_000
    assert s.max_metadata_bytes == 16_384
    assert s.max_prompts_per_user is None
    assert s.active_platforms is None
    assert s.runner is None
    assert s.key_prefix == "sp"
    assert s == Settings()


def test_broker_defaults_to_the_redis_url() -> None:
    s = settings_from_env({})
    assert s.broker_url is None
    assert broker_config(s)["broker_url"] == s.redis_url
    moved = settings_from_env({"SCHEDULED_PROMPTS_REDIS_URL": "redis://cache:6379/3"})
    assert broker_config(moved)["broker_url"] == "redis://cache:6379/3"


def test_broker_url_set_wins_over_redis_url() -> None:
    s = settings_from_env(
        {
            "SCHEDULED_PROMPTS_REDIS_URL": "redis://store:6379/0",
            "SCHEDULED_PROMPTS_BROKER_URL": "redis://broker:6379/1",
        }
    )
    assert broker_config(s)["broker_url"] == "redis://broker:6379/1"
    assert s.redis_url == "redis://store:6379/0"


def test_default_visibility_timeout_is_one_hour() -> None:
    assert settings_from_env({}).visibility_timeout == 3600


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "raw", "field", "expected"),
    [
        ("TICK_SECONDS", "30", "tick_seconds", 30.0),
        ("TICK_SECONDS", "2.5", "tick_seconds", 2.5),
        ("HORIZON_SECONDS", " 900 ", "horizon_seconds", 900.0),
        ("LEASE_SECONDS", "0.25", "lease_seconds", 0.25),
        ("REDIS_TIMEOUT_SECONDS", "1.5", "redis_timeout_seconds", 1.5),
        ("MAX_RETRIES", "3", "max_retries", 3),
        ("CLEANUP_DAYS", "30", "cleanup_days", 30),
        ("HYDRATE_LIMIT", " 1000", "hydrate_limit", 1000),
        ("MAX_PROMPT_CHARS", "4000", "max_prompt_chars", 4000),
        ("MAX_METADATA_BYTES", "2048", "max_metadata_bytes", 2048),
        ("MAX_PROMPTS_PER_USER", "25", "max_prompts_per_user", 25),
        ("REDIS_URL", "redis://h:6380/2", "redis_url", "redis://h:6380/2"),
        ("BROKER_URL", "redis://b:6379/1", "broker_url", "redis://b:6379/1"),
        ("KEY_PREFIX", "myapp", "key_prefix", "myapp"),
        ("RUNNER", "bots.runner:runner", "runner", "bots.runner:runner"),
    ],
)
def test_each_variable_is_parsed_to_its_type(var: str, raw: str, field: str, expected: Any) -> None:
    value = getattr(settings_from_env({ENV_PREFIX + var: raw}), field)
    assert value == expected
    assert type(value) is type(expected)


def test_active_platforms_is_a_comma_list() -> None:
    s = settings_from_env({"SCHEDULED_PROMPTS_ACTIVE_PLATFORMS": "telegram, slack ,,web "})
    assert s.active_platforms == ("telegram", "slack", "web")


def test_active_platforms_single_value_is_a_one_tuple() -> None:
    s = settings_from_env({"SCHEDULED_PROMPTS_ACTIVE_PLATFORMS": "telegram"})
    assert s.active_platforms == ("telegram",)


@pytest.mark.parametrize(
    ("var", "field"),
    [
        ("ACTIVE_PLATFORMS", "active_platforms"),
        ("MAX_PROMPTS_PER_USER", "max_prompts_per_user"),
        ("BROKER_URL", "broker_url"),
        ("RUNNER", "runner"),
    ],
)
@pytest.mark.parametrize("raw", ["", "   "], ids=["empty", "blank"])
def test_empty_string_means_none_for_optional_settings(var: str, field: str, raw: str) -> None:
    assert getattr(settings_from_env({ENV_PREFIX + var: raw}), field) is None


def test_empty_broker_url_falls_back_to_redis_url() -> None:
    s = settings_from_env(
        {"SCHEDULED_PROMPTS_BROKER_URL": "", "SCHEDULED_PROMPTS_REDIS_URL": "redis://r:1/0"}
    )
    assert broker_config(s)["broker_url"] == "redis://r:1/0"


def test_variables_without_the_prefix_are_ignored() -> None:
    assert settings_from_env({"TICK_SECONDS": "1", "HORIZON_SECONDS": "abc"}) == Settings()


def test_settings_from_env_reads_os_environ_by_default(env: pytest.MonkeyPatch) -> None:
    env.setenv("SCHEDULED_PROMPTS_HORIZON_SECONDS", "120")
    env.setenv("SCHEDULED_PROMPTS_ACTIVE_PLATFORMS", "web")
    s = settings_from_env()
    assert s.horizon_seconds == 120.0
    assert s.active_platforms == ("web",)


@pytest.mark.parametrize(
    ("var", "raw", "accepted"),
    [
        ("TICK_SECONDS", "soon", "a number"),
        ("HORIZON_SECONDS", "5m", "a number"),
        ("LEASE_SECONDS", "", "a number"),
        ("MAX_RETRIES", "1.5", "an integer"),
        ("MAX_RETRIES", "five", "an integer"),
        ("HYDRATE_LIMIT", "", "an integer"),
        ("CLEANUP_DAYS", "7d", "an integer"),
        ("MAX_PROMPTS_PER_USER", "ten", "an integer"),
        ("MAX_PROMPT_CHARS", "32k", "an integer"),
    ],
)
def test_bad_value_raises_value_error_naming_variable_and_accepted_form(
    var: str, raw: str, accepted: str
) -> None:
    with pytest.raises(ValueError) as info:
        settings_from_env({ENV_PREFIX + var: raw})
    message = str(info.value)
    assert ENV_PREFIX + var in message
    assert accepted in message
    assert repr(raw) in message


@pytest.mark.parametrize("var", ["TICK_SECONDS", "HORIZON_SECONDS", "LEASE_SECONDS"])
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_non_finite_seconds_are_rejected(var: str, raw: str) -> None:
    # float() accepts these spellings, but no duration can be NaN or infinite: "inf" makes
    # visibility_timeout raise OverflowError later, "nan" silently disables the horizon.
    with pytest.raises(ValueError, match=ENV_PREFIX + var):
        settings_from_env({ENV_PREFIX + var: raw})


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("TICK_SECONDS", "-1"),
        ("HORIZON_SECONDS", "-0.5"),
        ("LEASE_SECONDS", "-60"),
        ("MAX_RETRIES", "-1"),
        ("CLEANUP_DAYS", "-7"),
        ("HYDRATE_LIMIT", "-500"),
        ("MAX_PROMPT_CHARS", "-1"),
        ("MAX_METADATA_BYTES", "-1"),
        ("MAX_PROMPTS_PER_USER", "-3"),
        ("REDIS_TIMEOUT_SECONDS", "-5"),
        ("DELIVERY_LOG_LENGTH", "-1"),
        ("FAILURE_LOG_LENGTH", "-10"),
    ],
)
def test_negative_value_is_rejected_naming_the_variable(var: str, raw: str) -> None:
    with pytest.raises(ValueError, match=f"{ENV_PREFIX}{var} must be >= 0"):
        settings_from_env({ENV_PREFIX + var: raw})


def test_negative_override_is_rejected() -> None:
    with pytest.raises(ValueError, match="SCHEDULED_PROMPTS_LEASE_SECONDS must be >= 0"):
        settings_from_env({}, lease_seconds=-1.0)


def test_zero_is_accepted_for_counts() -> None:
    assert settings_from_env({"SCHEDULED_PROMPTS_MAX_RETRIES": "0"}).max_retries == 0


def test_override_wins_over_environment() -> None:
    s = settings_from_env({"SCHEDULED_PROMPTS_TICK_SECONDS": "30"}, tick_seconds=5.0)
    assert s.tick_seconds == 5.0


def test_unknown_override_raises_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="tick_secs"):
        settings_from_env({}, tick_secs=5)


# --- visibility timeout ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("horizon", "lease", "expected"),
    [
        (300, 60, 3600),
        (0, 0, 3600),
        (1740, 60, 3600),
        (1800, 60, 3720),
        (3600, 60, 7320),
        (86_400, 600, 174_000),
    ],
)
def test_visibility_timeout_examples(horizon: float, lease: float, expected: int) -> None:
    s = settings_from_env({}, horizon_seconds=horizon, lease_seconds=lease)
    assert s.visibility_timeout == expected


seconds = st.floats(min_value=0, max_value=10**7, allow_nan=False, allow_infinity=False)


@given(horizon=seconds, lease=seconds)
@example(horizon=1800.25, lease=0.0)
def test_visibility_timeout_covers_twice_horizon_plus_lease_and_at_least_an_hour(
    horizon: float, lease: float
) -> None:
    s = settings_from_env({}, horizon_seconds=horizon, lease_seconds=lease)
    assert isinstance(s.visibility_timeout, int)
    assert s.visibility_timeout >= 3600
    assert s.visibility_timeout >= 2 * (horizon + lease)


# --- configure() -------------------------------------------------------------------------


def test_configure_overrides_settings(env: pytest.MonkeyPatch) -> None:
    returned = scheduled_prompts.configure(tick_seconds=5.0, key_prefix="myapp")
    assert returned.tick_seconds == 5.0
    assert get_settings() is returned
    assert get_settings().key_prefix == "myapp"


def test_configure_without_arguments_returns_to_the_environment(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("SCHEDULED_PROMPTS_TICK_SECONDS", "30")
    env.setenv("SCHEDULED_PROMPTS_KEY_PREFIX", "envapp")
    scheduled_prompts.configure(tick_seconds=5.0)
    assert get_settings().tick_seconds == 5.0
    assert get_settings().key_prefix == "envapp"  # unchanged fields still come from env
    scheduled_prompts.configure()
    assert get_settings().tick_seconds == 30.0
    assert get_settings().key_prefix == "envapp"


def test_each_configure_replaces_the_previous_overrides(env: pytest.MonkeyPatch) -> None:
    scheduled_prompts.configure(tick_seconds=5.0)
    scheduled_prompts.configure(horizon_seconds=120.0)
    assert get_settings().horizon_seconds == 120.0
    assert get_settings().tick_seconds == 60.0


def test_configure_with_a_bad_value_changes_nothing(env: pytest.MonkeyPatch) -> None:
    before = scheduled_prompts.configure(tick_seconds=5.0)
    with pytest.raises(ValueError):
        scheduled_prompts.configure(tick_seconds=-1.0)
    with pytest.raises(TypeError):
        scheduled_prompts.configure(no_such_setting=1)
    assert get_settings() == before


def test_configure_rereads_the_environment(env: pytest.MonkeyPatch) -> None:
    scheduled_prompts.configure()
    assert get_settings().hydrate_limit == 500
    env.setenv("SCHEDULED_PROMPTS_HYDRATE_LIMIT", "50")
    scheduled_prompts.configure()
    assert get_settings().hydrate_limit == 50


# --- mask_url ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:pw@host/1", "redis://user:***@host/1"),
        ("rediss://user:pw@host:6380", "rediss://user:***@host:6380"),
        ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("redis://user:s3cr3t@[2001:db8::7]/2", "redis://user:***@[2001:db8::7]/2"),
    ],
)
def test_mask_url_hides_the_password(url: str, masked: str) -> None:
    result = mask_url(url)
    assert result == masked
    assert "pw" not in result
    assert "s3cr3t" not in result


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://host/1",
        "rediss://user@host:6380",
        "redis://[::1]:6379/0",
        "unix:///var/run/redis.sock?db=2",
    ],
)
def test_mask_url_leaves_a_url_without_password_unchanged(url: str) -> None:
    assert mask_url(url) == url


# --- Redis Cluster ------------------------------------------------------------------------

CLUSTER = "redis+cluster://ana:s%40cret@h1:7000,h2,[::1]:7002/"


def test_a_cluster_url_names_its_nodes_credentials_and_tls() -> None:
    assert cluster_target(CLUSTER) == ClusterTarget(
        nodes=(("h1", 7000), ("h2", 6379), ("::1", 7002)), username="ana", password="s@cret"
    )
    tls = cluster_target("rediss+cluster://h:1/0?ssl_ca_certs=/ca.pem")
    assert tls is not None and tls.tls and tls.tls_options == {"ssl_ca_certs": "/ca.pem"}
    assert cluster_target("redis://h:1/0") is None
    assert mask_url(CLUSTER) == "redis+cluster://ana:***@h1:7000,h2,[::1]:7002/"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://h:port/", "node address 'h:port' has a port that is not a number"),
        ("redis+cluster://h:1,,h:2/", "a node address is empty"),
        ("redis+cluster://h:1/3", "a Redis Cluster has database 0 only"),
        ("redis+cluster://h:1/?ssl_ca_certs=x", "unknown option 'ssl_ca_certs'"),
    ],
)
def test_a_malformed_cluster_url_says_what_is_accepted(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="REDIS_URL=") as caught:
        settings_from_env({}, redis_url=url, broker_url="amqp://")
    assert problem in str(caught.value)
    assert "expected redis+cluster://[user:password@]host:port[,host:port...]/" in str(caught.value)


def test_a_cluster_store_needs_a_broker_of_its_own(env: pytest.MonkeyPatch) -> None:
    env.setenv(f"{ENV_PREFIX}REDIS_URL", "redis+cluster://h:7000/")
    with pytest.raises(ValueError, match="BROKER_URL is unset, so the broker would be the store"):
        settings_from_env()
    with pytest.raises(ValueError, match="a Redis Cluster cannot be the Celery broker"):
        settings_from_env(broker_url="redis+cluster://h:7000/")
    made = settings_from_env(broker_url="amqp://guest:guest@mq:5672//")
    assert made.cluster and made.shard_count == 16
    assert broker_config(made)["broker_url"] == "amqp://guest:guest@mq:5672//"


def test_shards_default_by_store_kind_and_stay_in_range() -> None:
    assert settings_from_env({}).shard_count == 1
    assert settings_from_env({f"{ENV_PREFIX}SHARDS": "8"}).shard_count == 8
    cluster = {"redis_url": "redis+cluster://h:1/", "broker_url": "amqp://"}
    assert settings_from_env({}, **cluster, shards=3).shard_count == 3
    for bad in (0, 1025):
        with pytest.raises(ValueError, match="SHARDS must be from 1 to 1024"):
            settings_from_env({}, shards=bad)


def test_min_replicas_is_refused_on_a_cluster_store() -> None:
    with pytest.raises(ValueError, match="MIN_REPLICAS is not supported with a Redis Cluster"):
        settings_from_env(
            {}, redis_url="redis+cluster://h:1/", broker_url="amqp://", min_replicas=1
        )


def test_a_quorum_queue_needs_rabbitmq_and_is_declared_by_every_process() -> None:
    made = settings_from_env({}, broker_url="amqp://guest:guest@mq//", queue_type="quorum")
    config = celery_config(made)
    assert config["task_default_queue_type"] == "quorum"
    assert config["broker_transport_options"]["confirm_publish"] is True
    assert celery_config(settings_from_env({}))["task_default_queue_type"] == "classic"
    with pytest.raises(ValueError, match="QUEUE_TYPE=quorum needs a RabbitMQ broker"):
        settings_from_env({}, queue_type="quorum")
    with pytest.raises(ValueError, match="QUEUE_TYPE must be one of classic, quorum"):
        settings_from_env({}, queue_type="stream")
