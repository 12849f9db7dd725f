"""``scheduled-prompts mcp`` as a real process, driven by the MCP SDK's own client
(``ClientSession``) over stdio and over streamable HTTP, against the suite's Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

import scheduled_prompts as sp
from scheduled_prompts.tools import tool_definitions
from support.redis_server import free_port
from support.served import SCRIPT, Served, command_env

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")

TOKEN_ANA = "ana-token-5d0c1f7e2b9a4c36"
TOKEN_BOB = "bob-token-8e2a6b1d4f7c3a90"
TOKEN_CAL = "cal-token-1b4e7a2c9d6f3e58"
ACCEPT = "application/json, text/event-stream"


def _entry(extra: str) -> str:
    """A tokens file of one entry for ana, with ``extra`` fields."""
    return '{"' + TOKEN_ANA + '": {"user_id": "a", "platform": "p", ' + extra + "}}"


def run(body: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(body)


@asynccontextmanager
async def stdio_session(redis_url: str, *flags: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=str(SCRIPT), args=["mcp", *flags], env=command_env(redis_url), cwd=str(REPO)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def data(result: Any) -> dict[str, Any]:
    """A tool result's structured content, checked against its text content."""
    assert result.structured_content == json.loads(result.content[0].text)
    return dict(result.structured_content)


ANA = ("--user", "ana", "--platform", "discord", "--channel", "c-1", "--timezone", "Europe/Berlin")


# --- stdio --------------------------------------------------------------------------------


def test_stdio_serves_exactly_the_tools_and_acts_for_the_flag_user(redis_url: str) -> None:
    async def body() -> None:
        async with stdio_session(redis_url, *ANA) as s:
            listed = (await s.list_tools()).tools
            expected = tool_definitions("mcp")
            assert [(t.name, t.description, t.input_schema) for t in listed] == [
                (d["name"], d["description"], d["inputSchema"]) for d in expected
            ]
            made = await s.call_tool(
                "schedule_prompt", {"prompt": "stand-up notes", "cron": "0 9 * * 1-5"}
            )
            assert not made.is_error
            got = data(made)
            assert got["success"] is True
            prompt_id = got["prompt_id"]
            assert got["next_run_utc"].endswith("Z") or got["next_run_utc"].endswith("+00:00")
            assert got["next_run_local"].endswith(("+01:00", "+02:00"))  # Berlin
            stored = sp.get_prompt(prompt_id)
            assert stored is not None
            assert (stored.user_id, stored.platform, stored.channel_id, stored.timezone) == (
                "ana",
                "discord",
                "c-1",
                "Europe/Berlin",
            )
            listing = data(await s.call_tool("list_scheduled_prompts", {}))
            assert [p["prompt_id"] for p in listing["prompts"]] == [prompt_id]
            paused = data(await s.call_tool("pause_scheduled_prompt", {"prompt_id": prompt_id}))
            assert paused["status"] == "paused"
            resumed = data(await s.call_tool("resume_scheduled_prompt", {"prompt_id": prompt_id}))
            assert resumed["status"] == "active"  # a cron prompt
            gone = data(await s.call_tool("cancel_scheduled_prompt", {"prompt_id": prompt_id}))
            assert gone["status"] == "cancelled"
            assert sp.get_prompt(prompt_id).status is sp.Status.CANCELLED  # type: ignore[union-attr]

    run(body)


def test_stdio_never_obeys_an_identity_in_the_arguments_and_survives_bad_input(
    redis_url: str,
) -> None:
    async def body() -> None:
        async with stdio_session(redis_url, *ANA) as s:
            smuggled = await s.call_tool(
                "schedule_prompt",
                {"prompt": "as mallory", "delay_seconds": 600, "user_id": "mallory"},
            )
            assert smuggled.is_error
            assert "'user_id' was unexpected" in data(smuggled)["error"]
            for name, args in [
                ("schedule_prompt", {"prompt": "x", "delay_seconds": "soon"}),
                ("schedule_prompt", {"prompt": "x", "delay_seconds": 60, "cron": "* * * * *"}),
                ("schedule_prompt", {"prompt": "every minute", "cron": "* * * * *"}),
                ("schedule_prompt", {"prompt": "x" * 5000, "delay_seconds": 600}),
                ("cancel_scheduled_prompt", {"prompt_id": "no-such-prompt"}),
                ("cleanup_expired_prompts", {}),
                ("drop_database", {}),
            ]:
                refused = await s.call_tool(name, args)
                assert refused.is_error, (name, args)
                assert data(refused)["error"], (name, args)
            # The server is still there, and nothing was written for anyone.
            ok = await s.call_tool("schedule_prompt", {"prompt": "fine", "delay_seconds": 600})
            assert not ok.is_error
        assert sp.list_prompts(user_id="mallory").items == []
        assert [p.prompt for p in sp.list_prompts().items] == ["fine"]

    run(body)


def test_stdio_resources_are_the_users_own_prompts(redis_url: str) -> None:
    theirs = sp.schedule_prompt("bob's secret", user_id="bob", platform="discord", delay=600)

    async def body() -> None:
        async with stdio_session(redis_url, *ANA) as s:
            made = data(
                await s.call_tool("schedule_prompt", {"prompt": "mine", "delay_seconds": 600})
            )
            uris = {str(r.uri) for r in (await s.list_resources()).resources}
            assert uris == {"prompts://mine", f"prompts://prompt/{made['prompt_id']}"}
            templates = (await s.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["prompts://prompt/{prompt_id}"]
            mine = (await s.read_resource("prompts://mine")).contents[0]
            assert mine.mime_type == "application/json"
            assert [p["prompt_id"] for p in json.loads(mine.text)["prompts"]] == [made["prompt_id"]]
            one = (await s.read_resource(f"prompts://prompt/{made['prompt_id']}")).contents[0]
            assert json.loads(one.text)["prompt"] == "mine"
            with pytest.raises(MCPError, match="no such prompt"):
                await s.read_resource(f"prompts://prompt/{theirs.id}")

    run(body)


def test_stdio_inside_a_scheduled_run_the_agent_may_not_schedule(redis_url: str) -> None:
    async def body() -> None:
        async with stdio_session(redis_url, *ANA, "--scheduled-run") as s:
            refused = await s.call_tool("schedule_prompt", {"prompt": "more", "delay_seconds": 600})
            assert refused.is_error
            assert "scheduled" in data(refused)["error"]
            assert not (await s.call_tool("list_scheduled_prompts", {})).is_error

    run(body)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mcp", "--user", "ana"], "--user and --platform are required"),
        (["mcp", "--user", "a", "--platform", "p", "--timezone", "Mars/Base"], "unknown timezone"),
        (["mcp", "--http", "--host", "0.0.0.0", "--user", "a", "--platform", "p"],
         "refusing to serve 0.0.0.0 without --tokens"),
        (["mcp", "--tokens", "t.json"], "--tokens is for --http"),
    ],
)  # fmt: skip
def test_bad_flags_exit_2_with_one_line(redis_url: str, args: list[str], message: str) -> None:
    done = subprocess.run(
        [str(SCRIPT), *args],
        env=command_env(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- streamable HTTP ----------------------------------------------------------------------


def _write_tokens(path: Path, tokens: dict[str, dict[str, Any]]) -> None:
    path.write_text(json.dumps(tokens))


class HttpServer(Served):
    def __init__(self, tmp: Path, redis_url: str, *flags: str) -> None:
        super().__init__(tmp, redis_url, "mcp", "--http", *flags)

    @property
    def url(self) -> str:
        return self.base_url + "/mcp"


@pytest.fixture
def http_server(tmp_path: Path, redis_url: str) -> Iterator[HttpServer]:
    tokens = tmp_path / "tokens.json"
    _write_tokens(
        tokens,
        {
            TOKEN_ANA: {"user_id": "ana", "platform": "discord", "timezone": "Asia/Tokyo"},
            TOKEN_BOB: {"user_id": "bob", "platform": "discord"},
        },
    )
    server = HttpServer(tmp_path, redis_url, "--tokens", str(tokens))
    server.tokens = tokens  # type: ignore[attr-defined]
    yield server
    server.stop()


@asynccontextmanager
async def http_session(url: str, token: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def _call(url: str, token: str, name: str, args: dict[str, Any]) -> Any:
    async with http_session(url, token) as s:
        return await s.call_tool(name, args)


def test_http_each_token_acts_for_its_own_user_only(http_server: HttpServer) -> None:
    url = http_server.url

    async def body() -> None:
        made = data(
            await _call(
                url, TOKEN_ANA, "schedule_prompt", {"prompt": "ana's", "delay_seconds": 600}
            )
        )
        assert made["next_run_local"].endswith("+09:00")  # Tokyo, from ana's token entry
        stored = sp.get_prompt(made["prompt_id"])
        assert stored is not None and (stored.user_id, stored.timezone) == ("ana", "Asia/Tokyo")
        bobs = data(await _call(url, TOKEN_BOB, "list_scheduled_prompts", {}))
        assert bobs["prompts"] == []
        stolen = await _call(
            url, TOKEN_BOB, "cancel_scheduled_prompt", {"prompt_id": made["prompt_id"]}
        )
        assert stolen.is_error and "no scheduled prompt" in data(stolen)["error"]
        async with http_session(url, TOKEN_BOB) as s:
            uris = {str(r.uri) for r in (await s.list_resources()).resources}
            assert uris == {"prompts://mine"}
            with pytest.raises(MCPError, match="no such prompt"):
                await s.read_resource(f"prompts://prompt/{made['prompt_id']}")
        assert sp.get_prompt(made["prompt_id"]).status is sp.Status.SCHEDULED  # type: ignore[union-attr]

    run(body)
    assert TOKEN_ANA not in http_server.log.read_text()
    assert TOKEN_BOB not in http_server.log.read_text()


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-token-0000000000", f"Basic {TOKEN_ANA}", "Bearer"]
)
def test_http_without_a_valid_bearer_token_is_401_before_any_tool_runs(
    http_server: HttpServer, header: str | None
) -> None:
    arguments = {"prompt": "x", "delay_seconds": 60}
    params = {"name": "schedule_prompt", "arguments": arguments}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {"Accept": ACCEPT}
    if header is not None:
        headers["Authorization"] = header
    reply = httpx.post(http_server.url, json=body, headers=headers, timeout=30)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert sp.list_prompts().items == []

    async def client() -> str:
        # The SDK's client sees the refusal as an MCP error (caught inside the session:
        # leaving it would wrap it in the transport's task groups).
        async with (
            httpx2.AsyncClient(timeout=30) as http,
            streamable_http_client(http_server.url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            try:
                await session.initialize()
            except MCPError as exc:
                return exc.error.message
        return "initialized"

    if header is None:
        assert "Unauthorized" in run(client)


def test_http_tokens_file_is_reread_on_sighup(http_server: HttpServer) -> None:
    tokens: Path = http_server.tokens  # type: ignore[attr-defined]
    _write_tokens(tokens, {TOKEN_CAL: {"user_id": "cal", "platform": "slack"}})
    http_server.popen.send_signal(signal.SIGHUP)
    listed = {"prompt": "cal's", "delay_seconds": 600}

    def status(token: str) -> int:
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {
            "Accept": ACCEPT,
            "Authorization": f"Bearer {token}",
        }
        return httpx.post(http_server.url, json=call, headers=headers, timeout=30).status_code

    deadline = time.monotonic() + 30
    while status(TOKEN_CAL) == 401:
        assert time.monotonic() < deadline, http_server.log.read_text()
        time.sleep(0.05)
    assert status(TOKEN_ANA) == 401
    made = run(lambda: _call(http_server.url, TOKEN_CAL, "schedule_prompt", listed))
    stored = sp.get_prompt(data(made)["prompt_id"])
    assert stored is not None and (stored.user_id, stored.platform) == ("cal", "slack")
    # A broken file keeps the tokens in force, and says why without showing any token.
    tokens.write_text('{"' + TOKEN_ANA + '": {"user_id": "ana"}}')
    http_server.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "tokens not reloaded" not in http_server.log.read_text():
        assert time.monotonic() < deadline, http_server.log.read_text()
        time.sleep(0.05)
    assert status(TOKEN_CAL) == 200
    log = http_server.log.read_text()
    assert "'platform' is required" in log
    assert TOKEN_ANA not in log and TOKEN_CAL not in log


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON"),
        ("{}", "with at least one token"),
        ('{"short": {"user_id": "a", "platform": "p"}}', "at least 16 characters"),
        ('{"' + TOKEN_ANA + '": {"user_id": "a"}}', "entry 1: 'platform' is required"),
        (_entry('"admin": true'), "unknown admin"),
        (_entry('"timezone": "Nowhere"'), "unknown timezone"),
    ],
)  # fmt: skip
def test_a_bad_tokens_file_exits_2_naming_the_entry_never_the_token(
    tmp_path: Path, redis_url: str, content: str, message: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    done = subprocess.run(
        [str(SCRIPT), "mcp", "--http", "--port", str(free_port()), "--tokens", str(path)],
        env=command_env(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert TOKEN_ANA not in done.stderr


def test_http_on_loopback_without_tokens_acts_for_the_flag_user_and_checks_the_host(
    tmp_path: Path, redis_url: str
) -> None:
    server = HttpServer(tmp_path, redis_url, "--user", "ana", "--platform", "discord")
    try:
        call = {"prompt": "local", "delay_seconds": 600}
        made = data(run(lambda: _call(server.url, "", "schedule_prompt", call)))
        stored = sp.get_prompt(made["prompt_id"])
        assert stored is not None and (stored.user_id, stored.platform) == ("ana", "discord")
        # A page of another site, reaching this port through DNS rebinding, is refused.
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"Accept": ACCEPT, "Host": "attacker.example:80"}
        reply = httpx.post(server.url, json=body, headers=headers, timeout=30)
        assert reply.status_code in (400, 403, 421), reply.text
    finally:
        server.stop()
