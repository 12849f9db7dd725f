"""``scheduled-prompts console``: the operator web console (extra ``console``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .common import CliError, Commands

commands = Commands()

TOKEN_ENV = "SCHEDULED_PROMPTS_CONSOLE_TOKEN"


def _console() -> tuple[Any, Any]:
    """The console's ``app`` and ``auth`` modules (the extra is optional)."""
    try:
        from ..console import app, auth  # noqa: PLC0415 - the `console` extra is optional
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith(
            ("starlette", "uvicorn", "jinja2", "itsdangerous", "multipart", "python_multipart")
        ):
            raise
        raise CliError(
            "the console needs its extra: pip install 'scheduled-prompts[console]'"
        ) from None
    return app, auth


def _token(auth: Any, token_file: Path | None) -> str | None:
    """The token from --token-file, else from the environment; None when neither."""
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        source = f"the token in {token_file}"
    else:
        text = os.environ.get(TOKEN_ENV, "").strip()
        source = TOKEN_ENV
    if not text:
        return None
    try:
        return str(auth.check_token(text, source))
    except ValueError as exc:
        raise CliError(str(exc)) from None


@commands.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8808, show_default=True)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Read the login token from this file instead of {TOKEN_ENV}.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve without login: a loopback --host only (anyone on this machine can act).",
)
def console(*, host: str, port: int, token_file: Path | None, insecure_no_auth: bool) -> None:
    """Serve the operator web console: list, search and inspect prompts, see failures and
    the next 24 hours' load, pause, resume, trigger or cancel.

    Login needs the token in SCHEDULED_PROMPTS_CONSOLE_TOKEN (or --token-file), at
    least 16 characters.
    """
    app, auth = _console()
    token = _token(auth, token_file)
    if insecure_no_auth and token is not None:
        raise CliError(
            f"--insecure-no-auth serves without login, but a token is given ({TOKEN_ENV} or "
            "--token-file): drop one of them"
        )
    if insecure_no_auth and not auth.is_loopback(host):
        raise CliError(
            f"refusing --insecure-no-auth on {host}: anyone who reaches it could pause or "
            f"cancel prompts; bind 127.0.0.1, or set {TOKEN_ENV}"
        )
    if token is None and not insecure_no_auth:
        raise CliError(
            f"no console token: set {TOKEN_ENV} (at least {auth.MIN_TOKEN_CHARS} characters) "
            "or give --token-file, or pass --insecure-no-auth to serve without login on a "
            "loopback host"
        )
    shown = f"[{host}]" if ":" in host else host
    how = "no login (--insecure-no-auth)" if token is None else "log in with the token"
    click.echo(f"console on http://{shown}:{port}/ ({how})", err=True)
    app.serve(host, port, auth.Access(token))
