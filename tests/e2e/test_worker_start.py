"""End to end: what a worker does when it starts (hydration) and what beat runs besides
``tick`` (the hourly ``cleanup``), with real ``celery`` processes and a real redis-server.
"""

from __future__ import annotations

import shelve
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import scheduled_prompts as sp
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.connection import get_redis
from scheduled_prompts.keys import Keys
from support.cluster import Cluster, Process

pytestmark = pytest.mark.timeout(180)
K = Keys("sp")
CLEANUP_ENTRY = "scheduled-prompts-cleanup"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, cleanup_days=3)
    yield c
    c.close()


def key_of(p: sp.ScheduledPrompt) -> str:
    assert p.next_run_at is not None
    return f"{p.id}:{to_ms(p.next_run_at)}"


def test_worker_start_hydrates_what_no_message_in_the_broker_would_deliver(
    cluster: Cluster,
) -> None:
    """No beat runs, so no tick: only the starting worker's hydration can hand these two
    to Celery — one waiting in the due index, one in flight whose message was lost."""
    r = get_redis()
    queue = cluster.settings["queue"]
    # Written with the worker's horizon (5 min): handed to Celery at once, then the
    # broker loses the message (as with a worker that died holding it).
    lost = sp.schedule_prompt("lost", user_id="u", platform="e2e", delay=4)
    assert r.zscore(K.inflight, key_of(lost)) is not None
    assert r.llen(queue) == 1
    r.delete(queue)
    # Written with a 1 s horizon: stays in the due index, though within the worker's.
    sp.configure(**cluster.settings, horizon_seconds=1)
    waiting = sp.schedule_prompt("waiting", user_id="u", platform="e2e", delay=4)
    far = sp.schedule_prompt("far", user_id="u", platform="e2e", delay=3600)
    sp.configure(**cluster.settings)
    assert r.zscore(K.due, waiting.id) == to_ms(waiting.next_run_at)  # type: ignore[arg-type]
    assert r.zscore(K.due, far.id) is not None
    assert r.llen(queue) == 0, "nothing may wait in the broker before the worker starts"

    cluster.worker()
    cluster.wait_for_keys({key_of(lost), key_of(waiting)}, timeout=60)
    assert not cluster.duplicates()
    assert {c["key"] for c in cluster.calls()} == {key_of(lost), key_of(waiting)}
    assert r.get(K.beat) is None, "a tick ran: then hydration is not what was shown"
    for p in (lost, waiting):
        assert sp.get_prompt(p.id).status is sp.Status.EXECUTED  # type: ignore[union-attr]
    # Beyond the worker's horizon: left in the due index for a later tick.
    assert r.zscore(K.due, far.id) == to_ms(far.next_run_at)  # type: ignore[arg-type]
    assert sp.get_prompt(far.id).status is sp.Status.SCHEDULED  # type: ignore[union-attr]


def finished_days_ago(days: float) -> sp.ScheduledPrompt:
    """A cancelled prompt whose finish time is ``days`` back (record and index)."""
    p = sp.cancel_prompt(sp.schedule_prompt("done", user_id="u", platform="e2e", delay=600).id)
    aged = p.replace(updated_at=p.updated_at - timedelta(days=days))
    r = get_redis()
    r.set(K.prompt(p.id), aged.to_json())
    r.zadd(K.finished, {p.id: to_ms(aged.updated_at)})
    return aged


def start_beat(cluster: Cluster, name: str, schedule: Path) -> Process:
    """A beat process keeping its schedule in ``schedule`` (shared across restarts)."""
    proc = Process(
        name,
        [sys.executable, "-m", "celery", "-A", "scheduled_prompts", "beat",
         "--loglevel=INFO", "-s", str(schedule)],
        cluster.env,
        cluster.tmp / f"{name}.log",
    )  # fmt: skip
    cluster.processes.append(proc)
    proc.wait_for("beat: Starting")
    return proc


def test_beat_sends_the_hourly_cleanup_once_due_and_a_worker_deletes_old_prompts(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Beat keeps each entry's last run in its schedule file, and a new entry counts as
    run at beat's start: the hourly cleanup is first due an hour later. A beat restarted
    after being down longer than that (here: its file says 61 minutes) sends it at once."""
    old = finished_days_ago(4)  # CLEANUP_DAYS is 3 in this cluster
    recent = finished_days_ago(2)
    live = sp.schedule_prompt("live", user_id="u", platform="e2e", delay=3600)
    cluster.worker()
    schedule = tmp_path / "beat-schedule"
    started = utcnow()
    first = start_beat(cluster, "beat-1", schedule)
    # Its first round looked at every entry: the tick (every second) was sent, not cleanup.
    first.wait_for("Sending due task scheduled-prompts-tick")
    first.stop()
    assert "Sending due task " + CLEANUP_ENTRY not in first.text()
    assert sp.get_prompt(old.id) == old

    with shelve.open(str(schedule)) as db:
        entries = db["entries"]
        entry = entries[CLEANUP_ENTRY]
        assert entry.task == "scheduled_prompts.cleanup"
        assert entry.schedule.run_every == timedelta(hours=1)
        assert entry.kwargs == {"days_to_keep": 3}
        assert entry.last_run_at >= started.replace(microsecond=0)  # "ran" at beat's start
        entry.last_run_at = utcnow() - timedelta(minutes=61)
        db["entries"] = entries

    second = start_beat(cluster, "beat-2", schedule)
    second.wait_for(f"Sending due task {CLEANUP_ENTRY} (scheduled_prompts.cleanup)")
    cluster.wait_until(lambda: sp.get_prompt(old.id) is None, 60, "cleanup of the old prompt")
    assert get_redis().zscore(K.finished, old.id) is None
    assert sp.get_prompt(recent.id) == recent
    assert sp.get_prompt(live.id) == live
    assert second.text().count("Sending due task " + CLEANUP_ENTRY) == 1
