"""Scheduling throughput: ``python -m bench.throughput [--quick] [--profile] [--runs N]``.
``schedule_prompt`` and ``schedule_many`` against redbeat; ``--profile``: where time goes.
Method and figures: docs/performance.md, "Scheduling throughput" and "Methods"."""

from __future__ import annotations

import argparse

from . import throughput_profile, throughput_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Scheduling throughput of ours (schedule_prompt, schedule_many) and redbeat.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one schedule_many of 20,000 and time its phases (no throughput table)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="timed runs per row, or rounds of the phase timings (default 5; --profile --quick: 3)",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.profile:
        return throughput_profile.profile(args.runs or (3 if args.quick else 5), args.quick)
    sizes = throughput_rows.QUICK if args.quick else throughput_rows.FULL
    return throughput_rows.run(sizes, args.runs or 5, args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
