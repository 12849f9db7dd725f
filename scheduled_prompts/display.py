"""How values are shown to people, by the command line and the console alike."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo


def utc_text(value: datetime | None, empty: str = "-") -> str:
    """``2026-03-08 07:00:00 UTC`` (``empty`` for None)."""
    return empty if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def local_text(value: datetime | None, zone: str, empty: str = "-") -> str:
    """As the wall clock in ``zone`` shows it, with its abbreviation."""
    if value is None:
        return empty
    here = value.astimezone(ZoneInfo(zone))
    return here.strftime("%Y-%m-%d %H:%M:%S ") + (here.tzname() or zone)


def clip(text: str, width: int = 40) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
