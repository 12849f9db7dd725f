"""The MCP server (``scheduled-prompts mcp``): the LLM tools and the user's prompts as
resources, over stdio or the streamable HTTP transport, on the official SDK.

The tools are :func:`~scheduled_prompts.tools.tool_definitions` ``("mcp")`` and every call
goes through :func:`~scheduled_prompts.tools.handle_tool_call_async`, so schemas,
guardrails and messages are the tools' own. Identity never comes from the model: over
stdio it is the server's flags; over HTTP, the identity the bearer token maps to in the
tokens file (a call's ``user_id`` argument is refused as unexpected by the schemas).
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import ipaddress
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import (
    StreamableHTTPASGIApp,
    StreamableHTTPSessionManager,
)
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import aio
from ._time import utcnow
from .errors import PromptNotFound, StoreUnavailable
from .models import ScheduledPrompt
from .schedules import get_zone
from .tools import ToolContext, describe, handle_tool_call_async, owned, tool_definitions

log = logging.getLogger("scheduled_prompts.mcp")
T = TypeVar("T")

MINE = "prompts://mine"
ONE = "prompts://prompt/"
#: Prompts listed one by one as resources (``prompts://mine`` has the whole first page).
LISTED = 100
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
TOKEN_FIELDS = {"user_id", "platform", "channel_id", "timezone", "in_scheduled_run"}
RESOURCE_NOT_FOUND = -32002

_caller: contextvars.ContextVar[ToolContext | None] = contextvars.ContextVar(
    "scheduled_prompts_mcp_caller", default=None
)


# --- identity -----------------------------------------------------------------------------


class Tokens:
    """Bearer tokens and the identity each stands for, from a JSON file.

    ``{"TOKEN": {"user_id": …, "platform": …, "channel_id"?: …, "timezone"?: …,
    "in_scheduled_run"?: bool}}``. Tokens are compared in constant time and never
    logged or shown (an error names the entry by position).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries = self._read()

    def _read(self) -> list[tuple[bytes, ToolContext]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"tokens file {self.path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ValueError(f"tokens file {self.path} is not JSON: {exc}") from None
        if not isinstance(data, dict) or not data:
            raise ValueError(
                f'tokens file {self.path}: expected a JSON object {{"TOKEN": {{"user_id": '
                '…, "platform": …}}, …}} with at least one token'
            )
        return [
            (token.encode(), _identity(self.path, n, token, entry))
            for n, (token, entry) in enumerate(data.items(), 1)
        ]

    def reload(self) -> None:
        """Read the file again; on error keep the tokens in force and log why."""
        try:
            entries = self._read()
        except ValueError as exc:
            log.error("tokens not reloaded, the previous ones stay in force: %s", exc)
            return
        with self._lock:
            self._entries = entries
        log.info("tokens reloaded from %s: %d token(s)", self.path, len(entries))

    def identify(self, presented: str) -> ToolContext | None:
        """The identity of ``presented``, comparing with every token in constant time."""
        given = presented.encode()
        found = None
        with self._lock:
            entries = self._entries
        for secret, identity in entries:
            if hmac.compare_digest(secret, given):
                found = identity
        return found


def _identity(path: Path, n: int, token: object, entry: object) -> ToolContext:
    where = f"tokens file {path}, entry {n}"
    if not isinstance(token, str) or len(token) < 16:
        raise ValueError(f"{where}: a token must be a string of at least 16 characters")
    if not isinstance(entry, dict):
        raise ValueError(f'{where}: expected {{"user_id": …, "platform": …}}')
    unknown = sorted(set(entry) - TOKEN_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown {', '.join(unknown)}; accepted: {_fields()}")
    for field in ("user_id", "platform"):
        if not isinstance(entry.get(field), str) or not entry[field]:
            raise ValueError(f"{where}: {field!r} is required (a non-empty string)")
    for field in ("channel_id", "timezone"):
        if field in entry and not isinstance(entry[field], str):
            raise ValueError(f"{where}: {field!r} must be a string")
    if not isinstance(entry.get("in_scheduled_run", False), bool):
        raise ValueError(f"{where}: 'in_scheduled_run' must be true or false")
    return context(
        user_id=entry["user_id"],
        platform=entry["platform"],
        channel_id=entry.get("channel_id"),
        timezone=entry.get("timezone", "UTC"),
        in_scheduled_run=entry.get("in_scheduled_run", False),
        where=where,
    )


def _fields() -> str:
    return ", ".join(sorted(TOKEN_FIELDS))


def context(
    *,
    user_id: str,
    platform: str,
    channel_id: str | None = None,
    timezone: str = "UTC",
    in_scheduled_run: bool = False,
    where: str = "--timezone",
) -> ToolContext:
    """A caller's identity; the timezone is checked here, so a bad one fails at start."""
    try:
        get_zone(timezone)
    except Exception:
        raise ValueError(f"{where}: unknown timezone {timezone!r} (an IANA name)") from None
    return ToolContext(
        user_id=user_id,
        platform=platform,
        channel_id=channel_id,
        timezone=timezone,
        in_scheduled_run=in_scheduled_run,
    )


# --- the server ---------------------------------------------------------------------------


def build_server(fixed: ToolContext | None = None) -> Server:
    """The MCP server; ``fixed`` is the one caller (stdio), else each HTTP request's."""

    def caller() -> ToolContext:
        found = fixed or _caller.get()
        if found is None:  # the HTTP app sets it before any request reaches the server
            raise MCPError(code=-32001, message="no authenticated caller")
        return found

    tools = [
        types.Tool(name=d["name"], description=d["description"], input_schema=d["inputSchema"])
        for d in tool_definitions("mcp")
    ]

    async def list_tools(
        ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        ctx: ServerRequestContext, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        text = await handle_tool_call_async(params.name, params.arguments, context=caller())
        data = json.loads(text)
        return types.CallToolResult(
            content=[types.TextContent(text=text)],
            structured_content=data,
            is_error="error" in data,
        )

    async def list_resources(
        ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        who = caller()
        listed = [
            types.Resource(
                uri=MINE,
                name="my scheduled prompts",
                description="The prompts you have scheduled that are still to run.",
                mime_type="application/json",
            )
        ]
        now = utcnow()
        for record in await _owned_page(who):
            shown = describe(record, who, now)
            when = f", next run {shown['next_run']}" if "next_run" in shown else ""
            listed.append(
                types.Resource(
                    uri=ONE + record.id,
                    name=_title(record),
                    description=f"{record.status.value}{when}",
                    mime_type="application/json",
                )
            )
        return types.ListResourcesResult(resources=listed)

    async def list_templates(
        ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template=ONE + "{prompt_id}",
                    name="scheduled prompt",
                    description="One of your scheduled prompts, by its prompt_id.",
                    mime_type="application/json",
                )
            ]
        )

    async def read_resource(
        ctx: ServerRequestContext, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        who, uri = caller(), str(params.uri)
        if uri == MINE:
            text = await handle_tool_call_async("list_scheduled_prompts", {}, context=who)
        elif uri.startswith(ONE):
            record = await _owned(uri.removeprefix(ONE), who)
            if record is None:
                raise MCPError(code=RESOURCE_NOT_FOUND, message=f"no such prompt: {uri}")
            text = json.dumps(describe(record, who, utcnow()), ensure_ascii=False)
        else:
            raise MCPError(
                code=RESOURCE_NOT_FOUND,
                message=f"unknown resource {uri[:100]!r}; resources: {MINE}, {ONE}<prompt_id>",
            )
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )

    return Server(
        "scheduled-prompts",
        version=_version(),
        instructions=(
            "Schedule prompts for later (once, or on a cron schedule in the user's "
            "timezone), list them, pause, resume or cancel them."
        ),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


async def _store(call: Awaitable[T]) -> T:
    """``call`` on the store; Redis away is an MCP error the host can show."""
    try:
        return await call
    except StoreUnavailable as exc:
        log.warning("resources: %s", exc)
        raise MCPError(code=-32603, message="the scheduler is unavailable right now") from None


async def _owned_page(who: ToolContext) -> list[ScheduledPrompt]:
    page = await _store(aio.list_prompts(user_id=who.user_id, platform=who.platform, limit=LISTED))
    return list(page.items)


async def _owned(prompt_id: str, who: ToolContext) -> ScheduledPrompt | None:
    """The caller's prompt, or None: another user's prompt looks like no prompt."""
    try:
        return await _store(aio.arun(owned(prompt_id, who)))
    except PromptNotFound:
        return None


def _title(record: ScheduledPrompt) -> str:
    flat = " ".join(record.prompt.split())
    return flat if len(flat) <= 60 else flat[:59] + "…"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("scheduled-prompts")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"


# --- transports ---------------------------------------------------------------------------


def run_stdio(caller: ToolContext) -> None:
    """Serve one client over stdin/stdout until it disconnects."""
    server = build_server(caller)

    async def serve() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(serve)


class BearerAuth:
    """ASGI middleware: 401 unless ``Authorization: Bearer <token>`` names a known
    token; otherwise the request runs as that token's identity."""

    def __init__(self, app: ASGIApp, identify: Callable[[str], ToolContext | None]) -> None:
        self.app = app
        self.identify = identify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        scheme, _, presented = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        identity = self.identify(presented.strip()) if scheme.lower() == "bearer" else None
        if identity is None:
            await _unauthorized(send)
            return
        token = _caller.set(identity)
        try:
            await self.app(scope, receive, send)
        finally:
            _caller.reset(token)


async def _unauthorized(send: Send) -> None:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": -32001,
                "message": "Unauthorized: send Authorization: Bearer <token>",
            },
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer realm="scheduled-prompts"'),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Fixed:
    """The single caller of a loopback server started without a tokens file."""

    def __init__(self, app: ASGIApp, identity: ToolContext) -> None:
        self.app = app
        self.identity = identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _caller.set(self.identity)
        try:
            await self.app(scope, receive, send)
        finally:
            _caller.reset(token)


def http_app(*, tokens: Tokens | None = None, fixed: ToolContext | None = None) -> Starlette:
    """The streamable HTTP transport at ``/mcp``: stateless (every request carries its
    token; no session can be taken over by another token), JSON responses."""
    if (tokens is None) == (fixed is None):
        raise ValueError("give either a tokens file or the one caller, not both")
    security = None
    if tokens is None:
        # No token: only this machine's own clients, and no DNS rebinding from a browser.
        allowed = [f"{h}:*" for h in ("127.0.0.1", "localhost", "[::1]")]
        origins = [f"http://{h}:*" for h in ("127.0.0.1", "localhost", "[::1]")]
        security = TransportSecuritySettings(allowed_hosts=allowed, allowed_origins=origins)
    manager = StreamableHTTPSessionManager(
        app=build_server(),
        stateless=True,
        json_response=True,
        security_settings=security,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    endpoint: ASGIApp = StreamableHTTPASGIApp(manager)
    if tokens is not None:
        endpoint = BearerAuth(endpoint, tokens.identify)
    else:
        assert fixed is not None
        endpoint = _Fixed(endpoint, fixed)
    return Starlette(routes=[Route("/mcp", endpoint=endpoint)], lifespan=lifespan)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_http(
    host: str, port: int, *, tokens: Tokens | None = None, fixed: ToolContext | None = None
) -> None:
    """Serve ``/mcp`` until SIGINT or SIGTERM; SIGHUP re-reads the tokens file."""
    app = http_app(tokens=tokens, fixed=fixed)
    if tokens is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: tokens.reload())
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()
