"""Runners for the fault suite, built on the end-to-end suite's recording runner.

``FlakyRecordingRunner`` fails the *first attempt* of about ``SP_FAULTS_FLAKY_PERCENT``
percent of idempotency keys (20 by default). Which keys fail is decided by a hash of the
key, so every process (and every rerun) agrees, and a retry of the same key succeeds: a
key that never completes means a retry was lost. A failed call is recorded as a
``start`` line followed by a ``fail`` line from the same process.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from scheduled_prompts.errors import DeliveryError
from support.recording_runner import RecordingRunner, _append


def fails_first_attempt(key: str, percent: float) -> bool:
    """Whether ``key`` is one of the ~``percent`` % whose first attempt fails."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 10_000 < percent * 100


class FlakyRecordingRunner(RecordingRunner):
    def handle_webhook(self, payload: dict[str, Any]) -> None:
        percent = float(os.environ.get("SP_FAULTS_FLAKY_PERCENT", "20"))
        if payload["attempt"] == 1 and fails_first_attempt(payload["idempotency_key"], percent):
            _append("start", payload)
            _append("fail", payload)
            raise DeliveryError(f"flaky runner: first attempt of {payload['idempotency_key']}")
        super().handle_webhook(payload)
