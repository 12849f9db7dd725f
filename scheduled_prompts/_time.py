"""Clock helpers: every stored instant is an aware UTC datetime at millisecond precision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)


def utcnow() -> datetime:
    return truncate_ms(datetime.now(UTC))


def truncate_ms(value: datetime) -> datetime:
    """``value`` in UTC, cut to whole milliseconds (the precision of scores and keys)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    micro = value.microsecond % 1000
    return value.replace(microsecond=value.microsecond - micro) if micro else value


def to_ms(value: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return (value - EPOCH) // ONE_MS


def from_ms(ms: int) -> datetime:
    return EPOCH + ms * ONE_MS


def to_iso(value: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` suffix and milliseconds, e.g. ``2026-03-08T07:00:00.000Z``."""
    if value.tzinfo is not UTC:  # every stored instant is UTC already: skip the conversion
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    """Parse :func:`to_iso` output (or any ISO-8601 with an offset) into aware UTC."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {text!r}")
    return value.astimezone(UTC)
