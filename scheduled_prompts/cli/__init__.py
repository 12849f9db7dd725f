"""``scheduled-prompts``: the command line (click).

Tables for people, ``--json`` for scripts. A bad argument, bad input or an unreachable
Redis prints one line and exits with status 2 — never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import PromptError
from ..settings import configure
from . import console, doctor, mcp, ops, prompts, up
from .common import CliError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--redis-url",
    metavar="URL",
    help="Redis holding the prompts [env SCHEDULED_PROMPTS_REDIS_URL].",
)
@click.option("--prefix", metavar="PREFIX", help="Key prefix [env SCHEDULED_PROMPTS_KEY_PREFIX].")
@click.version_option(package_name="scheduled-prompts")
def cli(redis_url: str | None, prefix: str | None) -> None:
    """Store prompts scheduled for later in Redis; fire them with Celery."""
    overrides: dict[str, Any] = {}
    if redis_url:
        overrides["redis_url"] = redis_url
    if prefix:
        overrides["key_prefix"] = prefix
    if overrides:
        try:
            configure(**overrides)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line and exit status 2 for every user error."""
    try:
        cli.main(args=argv, prog_name="scheduled-prompts", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
        sys.exit(2 if isinstance(exc, click.UsageError | CliError) else exc.exit_code)
    except (PromptError, ValueError) as exc:
        click.echo(f"Error: {_one_line(str(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _one_line(text: str) -> str:
    return " ".join(text.split())


for _module in (prompts, ops, doctor, up, mcp, console):
    for _command in _module.commands:
        cli.add_command(_command)
