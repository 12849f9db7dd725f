"""Worker pulses: proof that a worker's consumer still takes messages from the broker.

A worker that lost its broker and never came back, or that is connected but no longer
consuming, still looks alive from outside: its process runs and its pool answers. So
each worker sends itself a small message every ``PULSE_SECONDS`` through the broker, on
a queue of its own, and when its consumer takes one it records the time in a pulse file
(:func:`record`), one per worker process in ``PULSE_DIR``. The probes of
``scheduled-prompts doctor --probe`` read these files (:func:`liveness`,
:func:`readiness`): no Celery import, a few milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .settings import Settings

#: Missed pulses after which a worker is no longer live (``--missed`` of the probe).
MISSED = 6


def pulse_dir(settings: Settings) -> Path:
    if settings.pulse_dir:
        return Path(settings.pulse_dir)
    return Path(tempfile.gettempdir()) / "scheduled-prompts-pulse"


@dataclass(frozen=True)
class Pulse:
    """What one worker process last recorded."""

    worker: str
    pid: int
    interval: float
    started_at: float  # epoch seconds: when its consumer first connected
    taken_at: float | None  # epoch seconds: the last pulse its consumer took

    def age(self, now: float) -> float:
        """Seconds since the last pulse taken (since the start if none was)."""
        return now - (self.taken_at if self.taken_at is not None else self.started_at)


def record(directory: Path, pulse: Pulse) -> None:
    """Write ``pulse`` as ``<worker>.<pid>.json`` in ``directory`` (atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{pulse.worker}.{pulse.pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(pulse.__dict__))
    os.replace(tmp, path)


def forget(directory: Path, worker: str, pid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{worker}.{pid}.json").unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def running(directory: Path) -> list[Pulse]:
    """The pulses of worker processes that still run (a dead one's file is ignored)."""
    pulses = []
    for path in sorted(directory.glob("*.json")):
        try:
            pulse = Pulse(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # half-written by hand, or foreign
            continue
        if _alive(pulse.pid):
            pulses.append(pulse)
    return pulses


def liveness(pulses: list[Pulse], *, now: float | None = None, missed: int = MISSED) -> str | None:
    """None when every worker took a pulse within ``missed`` intervals; else why not."""
    now = time.time() if now is None else now
    if not pulses:
        return "no worker runs here (no pulse file of a running worker)"
    for p in pulses:
        limit = missed * p.interval
        if p.age(now) > limit:
            what = "took its last pulse" if p.taken_at is not None else "has taken no pulse since"
            return (
                f"{p.worker} (pid {p.pid}) {what} {p.age(now):.1f}s ago "
                f"(limit {missed} x {p.interval:g}s): its consumer is not taking messages"
            )
    return None


def readiness(
    pulses: list[Pulse], store_answers: Callable[[], str | None], *, now: float | None = None
) -> str | None:
    """None when the store answers and every worker here consumes now; else why not.

    "Now" is within two intervals and a second: the worker is connected to the broker.
    A host without workers (beat, Flower) is ready when the store answers.
    """
    now = time.time() if now is None else now
    problem = store_answers()
    if problem is not None:
        return problem
    for p in pulses:
        if p.taken_at is None or p.age(now) > 2 * p.interval + 1:
            return f"{p.worker} (pid {p.pid}) is not consuming now (last pulse: " + (
                f"{p.age(now):.1f}s ago)" if p.taken_at is not None else "none yet)"
            )
    return None
