"""Pulse files and the probe rules, with explicit clocks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scheduled_prompts import pulse
from scheduled_prompts.pulse import Pulse
from scheduled_prompts.settings import settings_from_env


def _pulse(taken_at: float | None, *, pid: int | None = None, interval: float = 5.0) -> Pulse:
    return Pulse("w1@h", pid or os.getpid(), interval, 1000.0, taken_at)


def test_liveness_allows_missed_intervals_and_no_more() -> None:
    p = _pulse(1000.0)
    assert pulse.liveness([p], now=1030.0, missed=6) is None
    problem = pulse.liveness([p], now=1030.1, missed=6)
    assert problem is not None
    assert problem.startswith(f"w1@h (pid {p.pid}) took its last pulse 30.1s ago (limit 6 x 5s)")


def test_a_worker_that_never_took_a_pulse_counts_from_its_start() -> None:
    p = _pulse(None)
    assert pulse.liveness([p], now=1010.0, missed=2) is None
    problem = pulse.liveness([p], now=1010.5, missed=2)
    assert problem is not None and "has taken no pulse since 10.5s ago" in problem


def test_one_stale_worker_of_several_fails_liveness() -> None:
    fresh, stale = _pulse(1100.0), Pulse("w2@h", os.getpid(), 5.0, 1000.0, 1000.0)
    problem = pulse.liveness([fresh, stale], now=1100.0)
    assert problem is not None and problem.startswith("w2@h")


def test_no_worker_is_not_live() -> None:
    assert pulse.liveness([], now=0.0) == "no worker runs here (no pulse file of a running worker)"


def test_readiness_needs_the_store_and_a_recent_pulse() -> None:
    p = _pulse(1000.0)
    assert pulse.readiness([p], lambda: None, now=1011.0) is None
    assert pulse.readiness([p], lambda: "Redis unreachable", now=1000.0) == "Redis unreachable"
    late = pulse.readiness([p], lambda: None, now=1011.5)
    assert late == f"w1@h (pid {p.pid}) is not consuming now (last pulse: 11.5s ago)"
    first = pulse.readiness([_pulse(None)], lambda: None, now=1000.0)
    assert first is not None and first.endswith("(last pulse: none yet)")
    assert pulse.readiness([], lambda: None, now=0.0) is None  # beat, Flower: the store only


def test_running_reads_files_of_live_processes_only(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pulse.record(tmp_path, _pulse(1000.0))
    pulse.record(tmp_path, _pulse(1000.0, pid=int(dead.stdout)))
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"x": 1}')
    assert pulse.running(tmp_path) == [_pulse(1000.0)]
    pulse.forget(tmp_path, "w1@h", os.getpid())
    pulse.forget(tmp_path, "w1@h", os.getpid())  # already gone: no error
    assert pulse.running(tmp_path) == []


def test_pulse_dir_defaults_to_the_temporary_folder(tmp_path: Path) -> None:
    assert pulse.pulse_dir(settings_from_env({})).name == "scheduled-prompts-pulse"
    env = {"SCHEDULED_PROMPTS_PULSE_DIR": str(tmp_path)}
    assert pulse.pulse_dir(settings_from_env(env)) == tmp_path
