"""``python -m bench [--quick] [--only NAME,...]``: every benchmark, one after the other,
each printing its table and writing ``bench/results/<name>.json``. Exits 1 if one failed.
Method and figures: docs/performance.md, "Methods"."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from .common import progress

BENCHMARKS = (
    "tick",
    "throughput",
    "memory",
    "burst",
    "herd",
    "lateness",
    "replication",
    "metrics",
    "limits",
    "cluster",
)
#: Extra arguments per benchmark in a full run: the profiles that say where time goes.
EXTRA = {"burst": ["--profile"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
    )
    args = parser.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {BENCHMARKS}")
    failed = []
    for name in chosen:
        progress(f"bench.{name} starts")
        started = time.monotonic()
        module = importlib.import_module(f"bench.{name}")
        argv = ["--quick"] if args.quick else EXTRA.get(name, [])
        try:
            code = module.main(argv)
            if name == "throughput" and not args.quick and code == 0:
                code = module.main(["--profile"])  # where schedule_many's time goes
        except Exception:
            traceback.print_exc()
            code = 1
        progress(f"bench.{name} done in {time.monotonic() - started:.0f}s (exit {code})")
        if code:
            failed.append(name)
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
