"""What a delivery attempt came to: the outcome a ``deliver`` task maps to a retry or to
nothing more, with the delay and the record it left."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .models import ScheduledPrompt
from .occurrences import Delivery


class Outcome(StrEnum):
    DELIVERED = "delivered"
    SKIPPED = "skipped"  # stale, gone, already done: nothing to do
    BUSY = "busy"  # another deliverer holds the lease
    RETRY = "retry"  # runner failed, retry later
    FAILED = "failed"  # runner failed for good: recorded
    MISSED = "missed"  # later than misfire_grace_seconds: recorded, not delivered
    NO_RUNNER = "no_runner"  # left pending
    DEFERRED = "deferred"  # not run: the worker is stopping; its lease released
    LIMITED = "limited"  # not claimed: its platform is at a rate or concurrency limit


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    retry_in: float = 0.0
    error: str | None = None
    record: ScheduledPrompt | None = None
    #: The occurrence delivered (after coalescing); retries pass it back unchanged.
    occurrence_ms: int | None = None
    #: LIMITED by a rate: the slot (Redis epoch ms) it holds; its next attempt passes it.
    slot_ms: int | None = None
    #: LIMITED: when it was first held back (worker epoch ms); its next attempt passes it.
    limited_since_ms: int | None = None
    #: What a retry delivers when it is not the occurrence asked for: the detached run
    #: an ``overlap="allow"`` occurrence became when its runner call started.
    delivery: Delivery | None = None

    def with_record(self, record: ScheduledPrompt | None) -> Result:
        """This result with the record its commit left: what :func:`dataclasses.replace`
        gives, without re-binding every field (each committed delivery takes one)."""
        new = object.__new__(Result)
        new.__dict__.update(self.__dict__, record=record)
        return new
