"""End to end, delivery policies with real workers: a platform's rate limit holds across
worker processes, over-limit occurrences wait and all arrive, other platforms go on."""

from __future__ import annotations

import bisect
from datetime import timedelta
from pathlib import Path

import pytest

import scheduled_prompts as sp
from scheduled_prompts._time import to_ms, utcnow
from support.cluster import Cluster

pytestmark = pytest.mark.timeout(240)

LIMIT, BURST = 20, 1


def test_a_rate_limited_platform_spreads_its_burst_and_others_go_on(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, rate_limits=f"limited={LIMIT}/s")
    try:
        cluster.worker("w1")
        cluster.worker("w2")
        cluster.beat()
        at = utcnow().replace(microsecond=0) + timedelta(seconds=4)
        specs = [
            {"prompt": f"p{i}", "user_id": f"u{i % 9}", "platform": platform, "at": at}
            for platform, n in (("limited", 200), ("free", 100))
            for i in range(n)
        ]
        made = sp.schedule_many(specs)
        keys = {f"{p.id}:{to_ms(at)}": p.platform for p in made}
        cluster.wait_for_keys(set(keys), timeout=180)
        assert not cluster.duplicates()
        calls = cluster.calls()
        assert {c["key"] for c in calls} == set(keys)
        limited = sorted(c["at"] for c in calls if keys[c["key"]] == "limited")
        free = sorted(c["at"] for c in calls if keys[c["key"]] == "free")
        # No second holds more than the limit plus the burst, across both workers.
        busiest = max(bisect.bisect_left(limited, t + 1.0) - i for i, t in enumerate(limited))
        assert busiest <= LIMIT + BURST, busiest
        # 200 at 20/s: about ten seconds from the first to the last.
        assert limited[-1] - limited[0] >= (200 - BURST) / LIMIT * 0.95
        # The other platform did not wait behind it.
        assert free[-1] < limited[100]
        # Waiting is neither a failure nor a retry: every record executed on its first try.
        assert {c["attempt"] for c in calls} == {1}
        assert all(sp.get_prompt(p.id).status is sp.Status.EXECUTED for p in made)  # type: ignore[union-attr]
    finally:
        cluster.close()
