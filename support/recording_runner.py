"""A runner for end-to-end tests: appends one JSON line per call to a file.

``SP_TEST_RECORD_FILE`` names the file; ``SP_TEST_RUNNER_SLEEP`` (seconds) makes each
call take that long, so a test can kill a worker while deliveries are in flight;
``SP_TEST_HOLD_FIRST_RUN`` (seconds) makes a prompt's first run last until that long
after its occurrence (a run that overlaps the next ones). Each call writes a ``start``
line before the pause and an ``end`` line after it.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from typing import Any

import orjson


def _append(event: str, payload: dict[str, Any]) -> None:
    line = orjson.dumps(
        {
            "event": event,
            "key": payload["idempotency_key"],
            "prompt_id": payload["prompt_id"],
            "occurrence": payload["occurrence"],
            "lateness": payload["lateness_seconds"],
            "attempt": payload["attempt"],
            "at": time.time(),
            "pid": os.getpid(),
        }
    )
    append_line(os.environ["SP_TEST_RECORD_FILE"], line)


_FDS: dict[tuple[int, str], int] = {}


def append_line(path: str, line: bytes) -> None:
    """One write of a short line with O_APPEND (lines from several processes never mix)
    to a file opened once per process (a forked pool process opens its own), so a call
    costs one write: the runner stands in for a no-op in the benchmarks."""
    key = (os.getpid(), path)
    fd = _FDS.get(key)
    if fd is None:
        fd = _FDS[key] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line + b"\n")


class RecordingRunner:
    def handle_webhook(self, payload: dict[str, Any]) -> None:
        _append("start", payload)
        pause = float(os.environ.get("SP_TEST_RUNNER_SLEEP", "0"))
        hold = float(os.environ.get("SP_TEST_HOLD_FIRST_RUN", "0"))
        if hold and payload["run_number"] == 1:
            until = datetime.fromisoformat(payload["occurrence"]).timestamp() + hold
            pause = max(pause, until - time.time())
        if pause > 0:
            time.sleep(pause)
        _append("end", payload)


class MemoryRunner:
    """An in-process runner: keeps every payload; raises ``error`` (if given) each call."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        self.calls.append(payload)
        if self.error is not None:
            raise self.error


def read_records(path: str) -> list[dict[str, Any]]:
    """Every complete line: a line without its newline yet is being written (a reader
    can see part of a write that is in progress), and is read the next time."""
    try:
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.endswith("\n") and line.strip()]
    except FileNotFoundError:
        return []
