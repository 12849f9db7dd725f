"""A Sentinel failover under a plain ``celery worker`` and ``beat`` (no supervisor).

A primary, a replica and three sentinels; store and broker both through the Sentinel
URL. The primary is killed with ``kill -9`` while prompts are due; it comes back (as a
supervisor would restart it) and the sentinels make it a replica of the new primary.
What is measured (failover time, lateness, losses) is in ``bench/faults``; this checks
that the same worker and beat processes carry on and every prompt is delivered.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import scheduled_prompts as sp
from scheduled_prompts._time import to_ms
from support.cluster import Cluster
from support.sentinel import SentinelGroup

pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("sentinel")]

SENTINEL_PW = "sentinel-pw-91"
DATA_PW = "data-pw-92"


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_worker_and_beat_follow_the_new_primary_and_deliver_every_prompt(
    tmp_path: Path, min_replicas: int
) -> None:
    with SentinelGroup(password=DATA_PW, sentinel_password=SENTINEL_PW) as group:
        cluster = Cluster(
            tmp_path,
            redis=group.nodes[0],
            redis_url=group.url(),
            sentinel_password=SENTINEL_PW,
            min_replicas=min_replicas,
        )
        try:
            worker = cluster.worker()
            beat = cluster.beat()
            prompts = [
                sp.schedule_prompt(f"p{i}", user_id=f"u{i % 3}", platform="e2e", delay=2 + i / 2)
                for i in range(30)
            ]
            keys = {f"{p.id}:{to_ms(p.next_run_at)}" for p in prompts}  # type: ignore[arg-type]
            cluster.wait_until(lambda: len(cluster.calls("end")) >= 3, 90, "first deliveries")
            # Without MIN_REPLICAS nothing is promised for writes the replica has not got
            # yet (docs/reliability.md): the prompts must have reached it before the kill.
            with group.node_client(group.primary()) as primary:
                assert primary.execute_command("WAIT", 1, 30_000) == 1
            old = group.primary_port()
            killed = group.kill_primary()
            group.wait_failover(old)
            group.restart(killed)
            cluster.wait_for_keys(keys, timeout=180)
            # The same processes, never restarted, delivered everything.
            assert worker.popen.poll() is None and beat.popen.poll() is None
            assert {c["key"] for c in cluster.calls("end")} == keys
            # A repeat (a commit the failover lost) has the key of the first call.
            assert set(cluster.duplicates()) <= keys
            assert all(sp.get_prompt(p.id).status is sp.Status.EXECUTED for p in prompts)  # type: ignore[union-attr]
            # Through every reconnect, no log line shows either password.
            for proc in cluster.processes:
                assert DATA_PW not in proc.text() and SENTINEL_PW not in proc.text(), proc.name
        finally:
            cluster.close()
