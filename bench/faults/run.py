"""Fault-injection suite: ``python -m bench.faults.run [--quick] [--only NAME] [--keep]``.

Runs every scenario (or the named ones) with real worker, beat and redis-server
processes, prints one table and writes the measurements as JSON (default
``bench/results/faults.json``, ``faults-quick.json`` with ``--quick``; with ``--only``
the named scenarios replace their entries in the existing file). Exits 1 when a scenario
missed an occurrence, repeated a runner call outside the documented case, or did not
settle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from .harness import execute
from .scenarios import BY_NAME, SCENARIOS
from .workload import FULL, QUICK

RESULTS = Path(__file__).resolve().parents[1] / "results"
COLUMNS = (
    "scenario",
    "prompts",
    "expected",
    "delivered",
    "missing",
    "duplicated",
    "documented",
    "max lateness s",
    "worker exits",
    "notes",
)


def passed(r: dict[str, Any]) -> bool:
    if "skipped" in r:
        return True
    return bool(
        "error" not in r
        and r["settled"]
        and r["missing"] == 0
        and not r["unexplained_repeats"]
        and r["process_exits"] == 0
    )


def row(r: dict[str, Any]) -> list[str]:
    if "skipped" in r:
        return [r["scenario"], *[""] * 8, f"skipped: {r['skipped']}"]
    if "error" in r:
        return [r["scenario"], *[""] * 8, f"ERROR {r['error']} ({r['logs']})"]
    notes = list(r["notes"])
    cron = r["cron"]
    notes.append(f"cron minutes {cron['covered']}/{cron['expected_minutes']}")
    if cron["coalesced"]:
        notes.append(f"{cron['coalesced']} coalesced")
    if r["runner_failures"]:
        notes.append(f"{r['runner_failures']} runner failures retried")
    if r["interrupted_calls"]:
        notes.append(f"{r['interrupted_calls']} calls cut off")
    if r["hazard_exits"]:
        notes.append(f"{r['hazard_exits']} exit(s) with the kombu hazard")
    if r["unexplained_repeats"]:
        notes.append(f"UNEXPLAINED repeats: {r['unexplained_repeats'][:3]}")
    if not r["settled"]:
        notes.append(f"NOT SETTLED: {r['store']}")
    if not passed(r):
        notes.append(f"logs: {r.get('logs')}")
    documented = len({d["key"] for d in r["documented_repeats"]})
    return [
        r["scenario"],
        str(r["prompts"]),
        str(r["expected"]),
        str(r["delivered"]),
        str(r["missing"]),
        f"{r['duplicated']} done / {r['started_twice']} started",
        str(documented),
        f"{r['max_lateness_s']:.2f}" if r["max_lateness_s"] is not None else "-",
        str(r["process_exits"]),
        "; ".join(notes),
    ]


def table(results: list[dict[str, Any]]) -> str:
    rows = [list(COLUMNS), *(row(r) for r in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for i, r in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in [*widths, 5]) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="60 prompts over ~15 s each")
    parser.add_argument(
        "--only", action="append", choices=sorted(BY_NAME), metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(BY_NAME)}",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep every scenario's logs")
    parser.add_argument("--out", type=Path, help="JSON output file")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    chosen = [BY_NAME[n] for n in args.only] if args.only else SCENARIOS
    results = []
    began = time.monotonic()
    for scenario in chosen:
        print(f"== {scenario.name}: {scenario.summary}", file=sys.stderr, flush=True)
        reason = scenario.unavailable()
        if reason is not None:
            print(f"   skipped: {reason}", file=sys.stderr, flush=True)
            results.append({"scenario": scenario.name, "skipped": reason})
            continue
        try:
            result = execute(scenario, size, keep=args.keep)
        except Exception as exc:
            result = {"scenario": scenario.name, "error": str(exc), "logs": "in the error"}
        status = "ok" if passed(result) else "FAILED"
        print(f"   {status} in {result.get('seconds', '?')} s", file=sys.stderr, flush=True)
        results.append(result)
    print(table(results))
    out = args.out or RESULTS / ("faults-quick.json" if args.quick else "faults.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    previous: list[dict[str, Any]] = []
    if args.only and out.exists():
        previous = json.loads(out.read_text()).get("scenarios", [])
    ran = {r["scenario"] for r in results}
    merged = [r for r in previous if r["scenario"] not in ran] + results
    merged.sort(key=lambda r: [s.name for s in SCENARIOS].index(r["scenario"]))
    report = {
        "mode": "quick" if args.quick else "full",
        "size": vars(size),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.monotonic() - began, 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "scenarios": merged,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0 if all(passed(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
