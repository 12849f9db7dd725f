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


@pytest.mark.timeout(420)
def test_overlap_policies_with_runs_longer_than_the_schedules_interval(tmp_path: Path) -> None:
    """Every-minute prompts whose first run lasts until 65 s after its occurrence: the
    next occurrence comes due while it runs, on workers whose lease is 5 s."""
    hold = 65
    cluster = Cluster(tmp_path, deliver_batch_size=1, env={"SP_TEST_HOLD_FIRST_RUN": str(hold)})
    try:
        cluster.worker("w1", concurrency=5)
        cluster.beat()
        made = {
            overlap: sp.schedule_prompt(
                f"status ({overlap})", user_id="u", platform="tg", cron="* * * * *",
                overlap=overlap,
            )
            for overlap in ("skip", "buffer_one", "allow")
        }  # fmt: skip
        # Each prompt's first occurrence (the three are made within a moment, which may
        # straddle a minute boundary) and the two after it.
        first = {o: p.next_run_at for o, p in made.items()}

        def key(overlap: str, nth: int) -> str:
            at = first[overlap]
            assert at is not None
            return f"{made[overlap].id}:{to_ms(at + timedelta(minutes=nth))}"

        def moved_on(overlap: str) -> bool:
            p = sp.get_prompt(made[overlap].id)
            at = first[overlap]
            return p is not None and at is not None and p.next_run_at == at + timedelta(minutes=2)

        wanted = {key("skip", 0), key("buffer_one", 0), key("buffer_one", 1),
                  key("allow", 0), key("allow", 1)}  # fmt: skip
        cluster.wait_for_keys(wanted, timeout=200)
        cluster.wait_until(lambda: all(moved_on(o) for o in made), 30, "records moved on")
        assert not cluster.duplicates()
        starts = {c["key"]: c for c in cluster.calls("start")}
        ends = {c["key"]: c for c in cluster.calls("end")}
        # skip: the occurrence due during the run is not delivered, and is counted.
        assert key("skip", 1) not in starts
        skipped = sp.get_prompt(made["skip"].id)
        assert skipped is not None and skipped.skipped_runs == 1 and skipped.run_count == 1
        # buffer_one: it is delivered once the first run has ended.
        assert starts[key("buffer_one", 1)]["at"] >= ends[key("buffer_one", 0)]["at"]
        buffered = sp.get_prompt(made["buffer_one"].id)
        assert buffered is not None and buffered.skipped_runs == 0 and buffered.run_count == 2
        # allow: on time, while the first run still went on.
        assert starts[key("allow", 1)]["at"] < ends[key("allow", 0)]["at"]
        assert starts[key("allow", 1)]["lateness"] < 10
        allowed = sp.get_prompt(made["allow"].id)
        assert allowed is not None and allowed.run_count == 2
        # The long runs kept their claims (5 s leases, renewed): each started once.
        assert {c["attempt"] for c in cluster.calls()} == {1}
    finally:
        cluster.close()
