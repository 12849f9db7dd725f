"""Commands on prompts: add, list, show, cancel, pause, resume, trigger, preview."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from .. import api
from .._time import utcnow
from ..display import clip, local_text, utc_text
from ..models import Overlap, ScheduledPrompt, Status
from ..schedules import localize, parse_cron, preview_schedule
from .common import (
    CliError,
    Commands,
    json_option,
    print_json,
    schedule_text,
    table,
)

commands = Commands()


@commands.command()
@click.argument("prompt")
@click.option("--user", "user_id", required=True, help="Owner of the prompt.")
@click.option("--platform", required=True, help="Platform the runner delivers to.")
@click.option("--channel", "channel_id", help="Channel or chat id on the platform.")
@click.option("--at", "at", metavar="TIME", help="Once, at an ISO-8601 time (naive = in --tz).")
@click.option("--delay", type=float, metavar="SECONDS", help="Once, this many seconds from now.")
@click.option("--cron", metavar="EXPR", help="Repeating: 5-field cron expression in --tz.")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA timezone.")
@click.option("--start-at", metavar="TIME", help="Cron: first run at or after this time.")
@click.option("--end-at", metavar="TIME", help="Cron: no run after this time.")
@click.option("--max-runs", type=int, help="Cron: stop after this many runs.")
@click.option(
    "--grace",
    "misfire_grace_seconds",
    type=float,
    metavar="SECONDS",
    help="Skip (record as missed) an occurrence later than this.",
)
@click.option(
    "--jitter",
    "jitter_seconds",
    type=float,
    metavar="SECONDS",
    help="Fire each occurrence a fixed offset (from the id) in [0, SECONDS) after its time.",
)
@click.option(
    "--overlap",
    type=click.Choice([o.value for o in Overlap]),
    help="Cron: an occurrence due while the previous run still goes on is skipped "
    "(default), buffered (buffer_one: the latest, once it ends) or run alongside (allow).",
)
@click.option("--metadata", metavar="JSON", help="A JSON object stored with the prompt.")
@click.option("--id", "prompt_id", help="Your own id: makes the command idempotent.")
@json_option
def add(prompt: str, as_json: bool, metadata: str | None, **options: Any) -> None:
    """Schedule PROMPT once (--at/--delay) or repeatedly (--cron)."""
    meta: Any = None
    if metadata is not None:
        try:
            meta = json.loads(metadata)
        except ValueError as exc:
            raise CliError(f"--metadata must be a JSON object: {exc}") from None
    record = api.schedule_prompt(prompt, metadata=meta, **options)
    show_record(record, as_json)


@commands.command("list")
@click.option("--user", "user_id", help="Only this user's prompts.")
@click.option("--platform", help="Only this platform.")
@click.option(
    "--status",
    type=click.Choice([s.value for s in Status]),
    multiple=True,
    help="Only these statuses (repeatable).",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="Continue from a previous page's next cursor.")
@json_option
def list_(
    *,
    user_id: str | None,
    platform: str | None,
    status: tuple[str, ...],
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List prompts, oldest first, one page at a time."""
    page = api.list_prompts(
        user_id=user_id, platform=platform, status=status or None, limit=limit, cursor=cursor
    )
    if as_json:
        print_json({"items": [p.to_dict() for p in page.items], "next_cursor": page.next_cursor})
        return
    table(
        ["ID", "STATUS", "USER", "PLATFORM", "SCHEDULE", "NEXT (UTC)", "NEXT (LOCAL)", "PROMPT"],
        [
            [
                p.id,
                p.status.value,
                p.user_id,
                p.platform,
                schedule_text(p),
                utc_text(p.next_run_at),
                local_text(p.next_run_at, p.timezone),
                clip(p.prompt),
            ]
            for p in page.items
        ],
    )
    if page.next_cursor:
        click.echo(f"\nmore: --cursor {page.next_cursor}")


@commands.command()
@click.argument("prompt_id")
@json_option
def show(prompt_id: str, as_json: bool) -> None:
    """Show every field of one prompt."""
    record = api.get_prompt(prompt_id)
    if record is None:
        raise CliError(f"no scheduled prompt with id {prompt_id!r}")
    show_record(record, as_json)


def show_record(record: ScheduledPrompt, as_json: bool) -> None:
    if as_json:
        print_json(record.to_dict())
        return
    rows: list[list[object]] = []
    for name, value in record.to_dict().items():
        if name == "schema" or value is None:
            continue
        shown = value
        if isinstance(value, str) and name.endswith(("_at", "_time", "last_execution")):
            when = datetime.fromisoformat(value)
            shown = f"{utc_text(when)}  |  {local_text(when, record.timezone)}"
        elif isinstance(value, dict):
            shown = json.dumps(value, ensure_ascii=False)
        rows.append([name, shown])
    table(["FIELD", "VALUE"], rows)


def _change(name: str, verb: Callable[..., ScheduledPrompt], doc: str) -> None:
    @commands.command(name, help=doc)
    @click.argument("prompt_id")
    @click.option("--user", "user_id", help="Act only if the prompt belongs to this user.")
    @json_option
    def command(prompt_id: str, user_id: str | None, as_json: bool) -> None:
        record = verb(prompt_id, user_id=user_id)
        if as_json:
            print_json(record.to_dict())
        else:
            click.echo(
                f"{record.id}: {record.status.value}, next run {utc_text(record.next_run_at)}"
            )


_change("cancel", api.cancel_prompt, "Cancel a prompt for good.")
_change("pause", api.pause_prompt, "Pause a prompt until resumed.")
_change("resume", api.resume_prompt, "Resume a paused prompt (next run computed from now).")


@commands.command()
@click.argument("prompt_id")
@click.option("--user", "user_id", help="Act only if the prompt belongs to this user.")
@json_option
def trigger(prompt_id: str, user_id: str | None, as_json: bool) -> None:
    """Deliver a prompt once more, now (its schedule does not change)."""
    key = api.trigger_prompt(prompt_id, user_id=user_id)
    if as_json:
        print_json({"prompt_id": prompt_id, "idempotency_key": key})
    else:
        click.echo(f"triggered {prompt_id}: delivery {key} queued")


@commands.command()
@click.argument("cron")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA timezone.")
@click.option("--count", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--start", metavar="TIME", help="Start after this ISO-8601 time (naive = in --tz).")
@json_option
def preview(cron: str, timezone: str, count: int, start: str | None, as_json: bool) -> None:
    """Print the next fire times of CRON in a timezone, marking DST shifts."""
    schedule = parse_cron(cron, timezone)
    after = utcnow()
    if start is not None:
        try:
            parsed = datetime.fromisoformat(start)
        except ValueError:
            raise CliError(f"--start must be an ISO-8601 time, got {start!r}") from None
        after = parsed if parsed.utcoffset() is not None else localize(parsed, schedule.zone)
    fires = preview_schedule(cron, timezone, start=after, count=count)
    rows: list[dict[str, Any]] = []
    previous = after.astimezone(schedule.zone).utcoffset()
    for instant in fires:
        here = instant.astimezone(schedule.zone)
        offset = here.utcoffset()
        shift = None
        if previous is not None and offset != previous:
            shift = f"{_offset(previous)} -> {_offset(offset)}"
        previous = offset
        rows.append(
            {
                "utc": instant.astimezone(UTC).isoformat(),
                "local": here.isoformat(),
                "zone": here.tzname(),
                "dst_shift": shift,
            }
        )
    if as_json:
        print_json({"cron": schedule.expression, "timezone": schedule.timezone, "fires": rows})
        return
    table(
        ["UTC", f"LOCAL ({schedule.timezone})", ""],
        [
            [
                utc_text(f),
                local_text(f, schedule.timezone),
                f"DST {r['dst_shift']}" if r["dst_shift"] else "",
            ]
            for f, r in zip(fires, rows, strict=True)
        ],
    )


def _offset(value: Any) -> str:
    total = int(value.total_seconds())
    sign = "+" if total >= 0 else "-"
    hours, minutes = divmod(abs(total) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"
