"""Shared pieces of the CLI: output (tables or JSON), times, argument types."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from .._time import to_iso
from ..models import ScheduledPrompt

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A user error: one line, exit status 2."""

    exit_code = 2


class Commands(list[click.Command]):
    """A module's commands, which ``cli/__init__.py`` adds to the ``scheduled-prompts``
    group (so no command module imports the group: no import cycle)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
        def register(func: Callable[..., Any]) -> click.Command:
            command: click.Command = click.command(*args, **kwargs)(func)
            self.append(command)
            return command

        return register


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned table (columns sized to their widest cell)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo(click.style(line.rstrip(), bold=True) if n == 0 else line.rstrip())


def schedule_text(p: ScheduledPrompt) -> str:
    if p.cron_expression is not None:
        return f"cron {p.cron_expression} ({p.timezone})"
    return f"once {to_iso(p.schedule_time)}" if p.schedule_time else "once"
