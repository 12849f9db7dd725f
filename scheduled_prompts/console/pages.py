"""The pages (GET): the prompt list, one prompt, recent failures, the upcoming load."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse

from .. import history, metrics, operations, verbs
from .._time import utcnow
from ..display import clip
from ..errors import InvalidSchedule
from ..models import DATETIME_FIELDS, ScheduledPrompt, Status
from . import load as upcoming
from .site import Site
from .timing import instant, local_text, next_fires, seconds_text, utc_text

#: Prompts on one page of the list.
PAGE_SIZE = 50
#: Most records one page of the list examines; a filter that matches little stops here
#: and offers the next page from where it stopped.
SCAN_BUDGET = 5_000
#: Deliveries shown on a prompt's page, and failures on the failures page.
RECENT = 10
FAILURES = 100
_FILTERS = ("user", "platform", "status", "q")


def prompt_url(prompt_id: str) -> str:
    return "/prompts/" + quote(prompt_id, safe="")


@dataclass(frozen=True)
class Filters:
    """The list's filters, from the query string (empty means not filtered)."""

    user: str | None
    platform: str | None
    status: str | None
    text: str | None

    @classmethod
    def from_query(cls, request: Request) -> Filters:
        def given(name: str) -> str | None:
            value = request.query_params.get(name, "").strip()
            return value or None

        return cls(given("user"), given("platform"), given("status"), given("q"))

    @property
    def active(self) -> bool:
        return any((self.user, self.platform, self.status, self.text))

    def query(self, cursor: str | None = None) -> str:
        pairs = [
            (name, value)
            for name, value in zip(
                _FILTERS, (self.user, self.platform, self.status, self.text), strict=True
            )
            if value is not None
        ]
        if cursor is not None:
            pairs.append(("cursor", cursor))
        return "/?" + urlencode(pairs) if pairs else "/"


async def prompt_list(site: Site, request: Request) -> HTMLResponse:
    filters = Filters.from_query(request)
    cursor = request.query_params.get("cursor") or None
    ctx = site.scope
    try:
        page = await site.run(
            verbs.list_page(
                ctx,
                user_id=filters.user,
                platform=filters.platform,
                status=filters.status,
                limit=PAGE_SIZE,
                cursor=cursor,
                text=filters.text,
                scan_limit=SCAN_BUDGET,
            )
        )
    except InvalidSchedule as exc:
        raise HTTPException(400, str(exc)) from None
    total = await site.run(operations.count(ctx))
    by_status = await site.run(metrics.statuses(ctx))
    # A page cut short by the scan budget examined exactly SCAN_BUDGET records.
    budget_spent = page.next_cursor is not None and len(page.items) < PAGE_SIZE
    return site.render(
        request,
        "prompts.html",
        {
            "title": "Prompts",
            "nav": "prompts",
            "filters": filters,
            "statuses": [s.value for s in Status],
            "rows": [_row(p) for p in page.items],
            "total": total,
            "by_status": _status_links(by_status),
            "cursor": cursor,
            "next_url": None if page.next_cursor is None else filters.query(page.next_cursor),
            "first_url": filters.query() if cursor else None,
            "budget_spent": budget_spent,
            "scan_budget": SCAN_BUDGET,
            "stopped_at": page.next_cursor,
        },
    )


def _status_links(counts: dict[str, int] | None) -> list[dict[str, Any]]:
    """Stored prompts by status (kept by every write), each linking to its filter; none
    while a recount is still rebuilding them."""
    if counts is None:
        return []
    return [
        {"status": name, "count": n, "url": "/?" + urlencode({"status": name})}
        for name, n in counts.items()
        if n and name in _STATUSES
    ]


_STATUSES = {s.value for s in Status}


def _row(p: ScheduledPrompt) -> dict[str, Any]:
    return {
        "id": p.id,
        "url": prompt_url(p.id),
        "status": p.status.value,
        "kind": p.kind.value,
        "user": p.user_id,
        "platform": p.platform,
        "next_run": utc_text(p.next_run_at),
        "prompt": clip(p.prompt, 80),
    }


async def prompt_detail(site: Site, request: Request) -> HTMLResponse:
    prompt_id = request.path_params["prompt_id"]
    ctx = site.scope
    record = await site.run(verbs.get(ctx, prompt_id))
    if record is None:
        raise HTTPException(404, f"no prompt with id {prompt_id!r}")
    deliveries = await site.run(history.recent(ctx.of_user(record.user_id), record.id, RECENT))
    zone = record.timezone
    return site.render(
        request,
        "prompt.html",
        {
            "title": f"Prompt {record.id}",
            "nav": "prompts",
            "p": record,
            "url": prompt_url(record.id),
            "fields": _fields(record),
            "metadata": json.dumps(record.metadata, indent=2, ensure_ascii=False),
            "fires": [instant(when, zone) for when in next_fires(record)],
            "deliveries": [_delivery(e, zone) for e in deliveries],
            "actions": _actions(record),
        },
    )


def _fields(p: ScheduledPrompt) -> list[tuple[str, str]]:
    """Every field of the record but the prompt text and metadata (shown on their own)."""
    shown: list[tuple[str, str]] = []
    for name, value in p.to_dict().items():
        if name in ("prompt", "metadata", "schema"):
            continue
        if value is None:
            text = "—"
        elif name in DATETIME_FIELDS:
            when = getattr(p, name)
            text = utc_text(when)
            if p.timezone != "UTC":
                text += f" · {local_text(when, p.timezone)}"
        else:
            text = str(value)
        shown.append((name, text))
    return shown


def _actions(p: ScheduledPrompt) -> list[str]:
    """The actions offered (the library still decides: a refusal is shown)."""
    if p.status.is_terminal:
        return []
    if p.status is Status.PAUSED:
        return ["resume", "trigger", "cancel"]
    return ["pause", "trigger", "cancel"]


def _delivery(e: history.Entry, zone: str) -> dict[str, Any]:
    return {
        "at": utc_text(e.at),
        "outcome": e.outcome,
        "occurrence": instant(e.occurrence, zone),
        "trigger": e.trigger,
        "lateness": seconds_text(e.lateness),
        "runner": seconds_text(e.runner_seconds),
        "error": e.error or "",
        "skipped": e.skipped,
    }


async def failures(site: Site, request: Request) -> HTMLResponse:
    entries = await site.run(history.failures(site.scope, FAILURES))
    rows = [
        {
            "at": utc_text(e.at),
            "id": e.prompt_id,
            "url": prompt_url(e.prompt_id),
            "user": e.user_id,
            "platform": e.platform,
            "outcome": e.outcome,
            "occurrence": utc_text(e.occurrence),
            "trigger": e.trigger,
            "error": e.error or "",
        }
        for e in entries
    ]
    return site.render(
        request,
        "failures.html",
        {"title": "Failures", "nav": "failures", "rows": rows, "limit": FAILURES},
    )


async def load(site: Site, request: Request) -> HTMLResponse:
    seen = await site.run(upcoming.window(site.scope, utcnow()))
    counted = await asyncio.to_thread(upcoming.expand, seen)
    return site.render(
        request,
        "load.html",
        {
            "title": "Upcoming load",
            "nav": "load",
            "load": counted,
            "chart": upcoming.chart(counted),
            "start": utc_text(counted.start),
            "hours": upcoming.HOURS,
            "expand_limit": upcoming.EXPAND_LIMIT,
            "expand_occurrences": upcoming.EXPAND_OCCURRENCES,
        },
    )
