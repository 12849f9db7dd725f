"""Operator commands: stats, cleanup, hydrate, export, import (over ``operations.py``),
recount and the metrics exporter (over ``metrics.py``)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import IO, Any, TextIO, cast

import click

from .. import api, metrics, operations
from .._time import utcnow
from ..connection import scope
from ..errors import InvalidSchedule
from ..models import RecordError
from ..operations import ExportPage
from .common import CliError, Commands, json_option, print_json, table

commands = Commands()


def _progress(total: int, label: str) -> Any:
    """A progress bar on stderr for long runs at a terminal; silent otherwise."""
    visible = total > 5 * operations.PAGE and sys.stderr.isatty()
    out = sys.stderr if visible else cast(TextIO, _Null())
    return click.progressbar(length=total, label=label, file=out)


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _total() -> int:
    return api.run(operations.count(scope()))


@commands.command()
@json_option
def stats(as_json: bool) -> None:
    """Counts by status, the due backlog and the oldest overdue lateness."""
    with _progress(_total(), "counting") as bar:
        result = api.get_stats(progress=bar.update)
    if as_json:
        print_json(result)
        return
    rows: list[list[object]] = [[k, v] for k, v in result["by_status"].items()]
    rows += [[k, v] for k, v in result.items() if k != "by_status"]
    table(["", "VALUE"], rows)


@commands.command()
@click.option("--days", type=click.FloatRange(0, 36500), help="Keep this many days [CLEANUP_DAYS].")
@json_option
def cleanup(days: float | None, as_json: bool) -> None:
    """Delete executed, cancelled and failed prompts older than --days."""
    keep = scope().settings.cleanup_days if days is None else days
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
        limit=scope().settings.hydrate_limit if limit is None else limit,
    )
    if as_json:
        print_json({"published": count})
    else:
        click.echo(f"published {count} occurrence(s)")


@commands.command("export")
@click.option("-o", "--output", type=click.File("w"), default="-", help="File (default stdout).")
def export(output: IO[str]) -> None:
    """Write every prompt as JSON Lines (a backup that `import` restores)."""
    written = 0
    skipped: Counter[str] = Counter()
    with _progress(_total(), "exporting") as bar:

        def seen(page: ExportPage) -> None:
            for key, reason in page.skipped:
                skipped[reason[:80]] += 1
                if reason != "missing record":
                    click.echo(f"skipped {key}: {reason}", err=True)
            bar.update(page.read)

        for record in api.export_prompts(on_page=seen):
            output.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            written += 1
    _summary("exported", written, skipped)


@commands.command("import")
@click.argument("source", type=click.File("r"))
def import_(source: IO[str]) -> None:
    """Restore prompts from JSON Lines made by `export`. Existing ids are kept as they are."""
    ctx = scope()
    rejected: Counter[str] = Counter()

    def records() -> Any:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                yield operations.parse_export_line(line, ctx)
            except (RecordError, InvalidSchedule) as exc:
                reason = "unsupported schema" if "schema" in str(exc) else "invalid record"
                rejected[reason] += 1
                click.echo(f"line {number}: skipped: {exc}", err=True)

    result = api.import_prompts(records())
    _summary("imported", result.imported, result.skipped + rejected)


def _summary(verb: str, count: int, skipped: Counter[str]) -> None:
    text = f"{verb} {count} prompt(s)"
    reasons = [f"{n} {why}" for why, n in skipped.most_common() if n]
    if reasons:
        text += "; skipped " + ", ".join(reasons)
    click.echo(text, err=True)


@commands.command()
@json_option
def recount(as_json: bool) -> None:
    """Count the stored prompts by status again, from the records.

    The counts behind the exporter's `prompts{status}` gauge are kept by every write;
    this rebuilds them (after restoring a backup made by hand, say). Writes go on while
    it runs. Data stored before the counts existed is recounted by beat's ticks anyway.
    """
    with _progress(_total(), "recounting") as bar:
        api.run(metrics.recount_all(scope(), utcnow(), progress=bar.update))
    counts = api.run(metrics.statuses(scope())) or {}
    if as_json:
        print_json(counts)
        return
    table(["STATUS", "PROMPTS"], [[k, v] for k, v in counts.items()])


@commands.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True)
def exporter(host: str, port: int) -> None:
    """Serve Prometheus metrics at http://HOST:PORT/metrics until interrupted.

    Every scrape reads the counts the workers keep in Redis and a few index sizes:
    exact across all workers, and as cheap with millions of stored prompts as with ten.
    """
    try:
        from .. import exporter as prometheus  # noqa: PLC0415 - the `metrics` extra
    except ImportError as exc:
        if exc.name != "prometheus_client":
            raise
        raise CliError(
            "the exporter needs prometheus-client: pip install 'scheduled-prompts[metrics]'"
        ) from None
    click.echo(f"metrics on http://{host}:{port}/metrics", err=True)
    prometheus.serve(host, port)
