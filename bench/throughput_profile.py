"""``python -m bench.throughput --profile``: pyinstrument around one ``schedule_many`` of
20,000 (self time by phase), then its phases timed one by one, and cron validation.
Method and figures: docs/performance.md, "Scheduling throughput" and "Methods"."""

from __future__ import annotations

import gc
from typing import Any

from pyinstrument import Profiler
from pyinstrument.frame import Frame

import scheduled_prompts
from scheduled_prompts import api
from support.redis_server import RedisServer

from .common import client_for, machine, progress, redis_server, table, write_results
from .profiling import Phase, attribute, frame_in, path_of
from .throughput_phases import print_phases, time_cron_validation, time_phases
from .throughput_rows import CRON, CRON_ZONE, once_specs

PROMPTS = 20_000
INTERVAL = 0.0005
TREE_LINES = 70


def _is_record_init(frame: Frame) -> bool:
    return frame_in(frame, "scheduled_prompts/models.py", "make_record", "__post_init__")


def _is_reply(frame: Frame) -> bool:
    return "/redis/" in path_of(frame) and frame.function in ("parse_response", "read_response")


#: Phases of the profiled call: a sample's self time goes to the innermost frame of its
#: stack that one of these matches; if none does, to the innermost GENERIC match.
SPECIFIC: tuple[Phase, ...] = (
    ("id generation (new_prompt_ids)", lambda f: frame_in(f, "ids.py", "new_prompt_ids")),
    ("record construction (make_record)", _is_record_init),
    (
        "schedule resolution (resolve_schedule)",
        lambda f: frame_in(f, "validation.py", "resolve_schedule"),
    ),
    (
        "field checks (text, grace, metadata)",
        lambda f: frame_in(f, "validation.py", "check_text", "check_grace", "check_metadata"),
    ),
    (
        "build_from_spec / build_prompt (rest)",
        lambda f: frame_in(f, "validation.py", "build_from_spec", "build_prompt"),
    ),
    ("to_json", lambda f: frame_in(f, "scheduled_prompts/models.py", "to_json")),
    (
        "create_op arg building (excl. to_json)",
        lambda f: frame_in(f, "scheduled_prompts/store.py", "create_op"),
    ),
    (
        "redis-py command packing (pack_commands)",
        lambda f: frame_in(f, "redis/connection.py", "pack", "pack_commands"),
    ),
    (
        "socket send (sendall: blocks while Redis works)",
        lambda f: frame_in(f, "redis/connection.py", "send_packed_command"),
    ),
    ("waiting for and reading replies (recv, parse)", _is_reply),
)
GENERIC: tuple[Phase, ...] = (
    ("redis-py, other", lambda f: "/redis/" in path_of(f)),
    (
        "schedule_many loop, promote_now, plan driver, Stream",
        lambda f: "scheduled_prompts/" in path_of(f),
    ),
)


def profile_once(server: RedisServer) -> tuple[Profiler, Any]:
    flusher = client_for(server)
    specs = once_specs(PROMPTS)
    flusher.flushall()
    api.schedule_many(once_specs(2_000))  # warm: connection, script cache, imports
    flusher.flushall()
    gc.collect()
    profiler = Profiler(interval=INTERVAL)
    profiler.start()
    api.schedule_many(specs)
    session = profiler.stop()
    return profiler, session


def print_profile(profiler: Profiler, session: Any, unprofiled: float) -> dict[str, Any]:
    """The trimmed pyinstrument tree, self time per phase, the costliest frames."""
    n = PROMPTS
    root = session.root_frame()
    if root is None:
        raise RuntimeError("pyinstrument recorded no samples")
    by_phase, top = attribute(root, SPECIFIC, GENERIC)
    sampled = root.time
    text = profiler.output_text(
        unicode=False,
        color=False,
        show_all=False,
        time="percent_of_total",
        processor_options={"filter_threshold": 0.02},
    )
    lines = text.splitlines()
    shown = [*lines[:TREE_LINES], "... (trimmed)"] if len(lines) > TREE_LINES else lines
    print(f"### pyinstrument, one schedule_many of {n:,} one-time prompts (frames >= 2 %)\n")
    print(
        f"Profiled: {sampled:.2f} s; unprofiled (best end-to-end below): {unprofiled:.2f} s. "
        "pyinstrument's hook runs on every call, so call-heavy code is over-represented "
        "here; the phase timings further down are unprofiled.\n"
    )
    print("```\n" + "\n".join(shown) + "\n```\n")
    rows: list[list[Any]] = [
        [name, secs, 100 * secs / sampled, 1e6 * secs / n]
        for name, secs in sorted(by_phase.items(), key=lambda kv: kv[1], reverse=True)
        if secs > 0
    ]
    rows.append(["total (sampled wall time)", sampled, 100.0, 1e6 * sampled / n])
    title = f"Self time by phase, innermost known frame ({session.sample_count:,} samples)"
    print(table(title, ("phase", "s", "% of call", "µs per prompt"), rows) + "\n")
    top_rows = [[label, secs, 100 * secs / sampled] for label, secs in top[:15]]
    print(table("Costliest frames by self time", ("frame", "s", "% of call"), top_rows) + "\n")
    return {
        "interval_s": INTERVAL,
        "samples": session.sample_count,
        "wall_s": sampled,
        "by_phase_s": by_phase,
        "top_frames_self_s": top[:30],
        "text": text,
    }


def profile(times: int, quick: bool) -> int:
    """The profile, the phases and the cron validation; tables on stdout, JSON written."""
    with redis_server() as server:
        scheduled_prompts.configure(redis_url=server.url, max_prompts_per_user=None)
        try:
            progress(f"pyinstrument around one schedule_many of {PROMPTS:,}")
            profiler, session = profile_once(server)
            progress(f"phases of schedule_many({PROMPTS:,}), {times} rounds")
            phases = time_phases(server, PROMPTS, times)
            progress("validation of cron specs")
            cron = time_cron_validation(times)
            info = machine(client_for(server))
        finally:
            scheduled_prompts.configure()
    sampled = print_profile(profiler, session, phases.rows[0][1])
    print_phases(phases, times)
    print()
    cron_rows = [[name, 1e6 * secs, 1 / secs] for name, secs in cron]
    title = f"Cron specs ({CRON!r} in {CRON_ZONE}): validation per prompt (best of {times})"
    print(table(title, ("step", "µs per prompt", "prompts/s if alone"), cron_rows))
    path = write_results(
        "throughput-profile-quick" if quick else "throughput-profile",
        {
            "benchmark": "throughput --profile",
            "prompts": phases.n,
            "rounds": times,
            "statistic": "best of the interleaved rounds",
            "machine": info,
            "pyinstrument": sampled,
            "phases_s": dict(phases.rows),
            "extra": phases.extra,
            "cron_validation_s_per_prompt": dict(cron),
        },
    )
    progress(f"wrote {path}")
    return 0
