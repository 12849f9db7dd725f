"""Operator commands: stats, cleanup, hydrate, export, import."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any, TextIO, cast

import click

from .. import api, store
from .._time import from_ms, to_ms, utcnow
from ..connection import context, get_redis, unavailable
from ..models import RecordError, ScheduledPrompt, Status
from ..occurrences import Delivery
from ..store import Put
from ..validation import check_record
from .common import CliError, Commands, json_option, print_json, table

commands = Commands()

PAGE = 1000


def _progress(total: int, label: str) -> Any:
    """A progress bar on stderr for long runs at a terminal; silent otherwise."""
    visible = total > 5 * PAGE and sys.stderr.isatty()
    out = sys.stderr if visible else cast(TextIO, _Null())
    return click.progressbar(length=total, label=label, file=out)


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _pages() -> Iterator[list[tuple[str, str | None]]]:
    """Every (id, stored JSON) pair, a page at a time, in id order."""
    client, ctx = get_redis(), context()
    after: str | None = None
    while True:
        ids = store.RangeByLex(ctx.keys.ids, after, PAGE).run(client)
        if not ids:
            return
        raws = store.Read([ctx.keys.prompt(i) for i in ids]).run(client)
        yield list(zip(ids, raws, strict=True))
        after = ids[-1]


def _guard(func: Any) -> Any:
    """Turn Redis errors of the commands that talk to Redis directly into one line."""
    from redis.exceptions import RedisError  # noqa: PLC0415

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RedisError as exc:
            raise unavailable(exc) from exc

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


@commands.command()
@json_option
@_guard
def stats(as_json: bool) -> None:
    """Counts by status, the due backlog and the oldest overdue lateness."""
    client, ctx = get_redis(), context()
    now = utcnow()
    total = int(client.zcard(ctx.keys.ids))
    counts: Counter[str] = Counter()
    with _progress(total, "counting") as bar:
        for page in _pages():
            for _, raw in page:
                try:
                    counts[json.loads(raw or "")["status"]] += 1
                except (ValueError, KeyError, TypeError):
                    counts["unreadable"] += 1
            bar.update(len(page))
    now_ms = to_ms(now)
    horizon_ms = now_ms + int(ctx.settings.horizon_seconds * 1000)
    overdue = int(client.zcount(ctx.keys.due, "-inf", now_ms))
    first = cast(list[tuple[str, float]], client.zrange(ctx.keys.due, 0, 0, withscores=True))
    oldest = [now_ms - int(score) for _, score in first]
    stuck = client.zrangebyscore(ctx.keys.inflight, "-inf", now_ms, start=0, num=100)
    oldest += [now_ms - Delivery.from_key(str(k)).occurrence_ms for k in stuck]
    lateness = max([0, *oldest]) / 1000
    beat = client.get(ctx.keys.beat)
    by_status = {s.value: counts.get(s.value, 0) for s in Status}
    if counts["unreadable"]:
        by_status["unreadable"] = counts["unreadable"]
    result: dict[str, Any] = {
        "total": total,
        "by_status": by_status,
        "due_overdue": overdue,
        "due_within_horizon": int(client.zcount(ctx.keys.due, now_ms, horizon_ms)),
        "in_flight": int(client.zcard(ctx.keys.inflight)),
        "in_flight_past_deadline": len(stuck),
        "oldest_overdue_seconds": round(lateness, 3),
        "last_tick": None if beat is None else from_ms(int(beat)).isoformat(),
    }
    if as_json:
        print_json(result)
        return
    rows: list[list[object]] = [[k, v] for k, v in by_status.items()]
    rows += [[k, v] for k, v in result.items() if k != "by_status"]
    table(["", "VALUE"], rows)


@commands.command()
@click.option("--days", type=click.FloatRange(0, 36500), help="Keep this many days [CLEANUP_DAYS].")
@json_option
def cleanup(days: float | None, as_json: bool) -> None:
    """Delete executed, cancelled and failed prompts older than --days."""
    keep = context().settings.cleanup_days if days is None else days
    result = json.loads(api.cleanup_expired_prompts(days_to_keep=keep))
    if "error" in result:
        raise CliError(result["error"])
    if as_json:
        print_json(result)
    else:
        click.echo(result["message"])


@commands.command()
@click.option("--platform", "platforms", multiple=True, help="Only these platforms (repeatable).")
@click.option("--limit", type=click.IntRange(0), help="Most to publish [HYDRATE_LIMIT].")
@json_option
def hydrate(platforms: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """Hand in-flight and soon-due occurrences to Celery again (what workers do on start)."""
    count = api.hydrate_scheduled_prompts(
        active_platforms=platforms or None,
        limit=context().settings.hydrate_limit if limit is None else limit,
    )
    if as_json:
        print_json({"published": count})
    else:
        click.echo(f"published {count} occurrence(s)")


@commands.command("export")
@click.option("-o", "--output", type=click.File("w"), default="-", help="File (default stdout).")
@_guard
def export(output: IO[str]) -> None:
    """Write every prompt as JSON Lines (a backup that `import` restores)."""
    client, ctx = get_redis(), context()
    total = int(client.zcard(ctx.keys.ids))
    written = 0
    skipped: Counter[str] = Counter()
    with _progress(total, "exporting") as bar:
        for page in _pages():
            for prompt_id, raw in page:
                if raw is None:
                    skipped["missing record"] += 1
                    continue
                try:
                    record = ScheduledPrompt.from_json(raw)
                except RecordError as exc:
                    skipped[f"unreadable ({exc})"[:80]] += 1
                    click.echo(f"skipped {ctx.keys.prompt(prompt_id)}: {exc}", err=True)
                    continue
                output.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
                written += 1
            bar.update(len(page))
    _summary("exported", written, skipped)


@commands.command("import")
@click.argument("source", type=click.File("r"))
@_guard
def import_(source: IO[str]) -> None:
    """Restore prompts from JSON Lines made by `export`. Existing ids are kept as they are."""
    client, ctx = get_redis(), context()
    imported = 0
    skipped: Counter[str] = Counter()
    batch: list[ScheduledPrompt] = []

    def flush() -> None:
        nonlocal imported
        keys = [ctx.keys.prompt(r.id) for r in batch]
        exists = store.Read(keys).run(client)
        fresh = [r for r, raw in zip(batch, exists, strict=True) if raw is None]
        skipped["already exists"] += len(batch) - len(fresh)
        for record in fresh:  # one script per record: a race only skips that one
            result = store.put_op(ctx.keys, [Put(record, None)], None).run(client)
            if str(result[0]) == "ok":
                imported += 1
            else:
                skipped["already exists"] += 1
        batch.clear()

    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise RecordError("not a JSON object")
            batch.append(check_record(ScheduledPrompt.from_dict(data), ctx.settings))
        except (RecordError, ValueError, TypeError) as exc:
            reason = "unsupported schema" if "schema" in str(exc) else "invalid record"
            skipped[reason] += 1
            click.echo(f"line {number}: skipped: {exc}", err=True)
            continue
        if len(batch) >= PAGE:
            flush()
    if batch:
        flush()
    _summary("imported", imported, skipped)


def _summary(verb: str, count: int, skipped: Counter[str]) -> None:
    text = f"{verb} {count} prompt(s)"
    reasons = [f"{n} {why}" for why, n in skipped.most_common() if n]
    if reasons:
        text += "; skipped " + ", ".join(reasons)
    click.echo(text, err=True)
