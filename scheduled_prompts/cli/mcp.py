"""``scheduled-prompts mcp``: the MCP server, over stdio or streamable HTTP."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .common import CliError, Commands

commands = Commands()


def _server() -> Any:
    try:
        from .. import mcp_server  # noqa: PLC0415 - the `mcp` extra is optional
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith(("mcp", "uvicorn", "starlette")):
            raise
        raise CliError(
            "the MCP server needs the SDK: pip install 'scheduled-prompts[mcp]'"
        ) from None
    return mcp_server


@commands.command()
@click.option(
    "--user", "user_id", help="The user every call acts for (stdio, or HTTP without --tokens)."
)
@click.option("--platform", help="That user's platform.")
@click.option("--channel", "channel_id", help="That user's channel or chat id.")
@click.option("--timezone", default="UTC", show_default=True, help="That user's IANA timezone.")
@click.option(
    "--scheduled-run",
    is_flag=True,
    help="The agent is answering a scheduled prompt: it may not schedule more.",
)
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP at /mcp, not stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP: address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option(
    "--tokens",
    type=click.Path(dir_okay=False, path_type=Path),
    help='HTTP: JSON file {"TOKEN": {"user_id": …, "platform": …, "channel_id"?: …, '
    '"timezone"?: …}}; each request needs Authorization: Bearer TOKEN and acts as its '
    "identity. Re-read on SIGHUP.",
)
def mcp(
    *,
    user_id: str | None,
    platform: str | None,
    channel_id: str | None,
    timezone: str,
    scheduled_run: bool,
    use_http: bool,
    host: str,
    port: int,
    tokens: Path | None,
) -> None:
    """Serve the scheduling tools and your prompts to an agent host over MCP.

    stdio (the default): the host starts this command and talks over stdin/stdout; every
    call acts for --user on --platform. --http serves many users, each by bearer token
    (--tokens); without --tokens it binds only a loopback address and acts for --user.
    """
    server = _server()
    if tokens is not None and not use_http:
        raise CliError("--tokens is for --http; over stdio the caller is --user/--platform")
    if tokens is not None and (user_id or platform or channel_id):
        raise CliError("with --tokens each token names its user: drop --user/--platform/--channel")
    if use_http and tokens is not None:
        try:
            loaded = server.Tokens(tokens)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        click.echo(
            f"MCP server on http://{host}:{port}/mcp (bearer tokens from {tokens})", err=True
        )
        server.run_http(host, port, tokens=loaded)
        return
    if use_http and not server.is_loopback(host):
        raise CliError(
            f"refusing to serve {host} without --tokens: anyone who reaches it would act for "
            "--user; bind 127.0.0.1 or give a tokens file"
        )
    if not user_id or not platform:
        raise CliError("--user and --platform are required (the identity every call acts for)")
    try:
        caller = server.context(
            user_id=user_id,
            platform=platform,
            channel_id=channel_id,
            timezone=timezone,
            in_scheduled_run=scheduled_run,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if use_http:
        click.echo(f"MCP server on http://{host}:{port}/mcp for user {user_id!r}", err=True)
        server.run_http(host, port, fixed=caller)
    else:
        print(f"scheduled-prompts MCP server on stdio for user {user_id!r}", file=sys.stderr)
        server.run_stdio(caller)
