"""What the phase profiles share: a sampled call's self time by phase (pyinstrument),
and phases timed one by one in interleaved rounds, the best round of each kept.
Method and figures: docs/performance.md, "Methods"."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from pyinstrument.frame import Frame

Matcher = Callable[[Frame], bool]
#: A named phase of a profiled call, and which frames belong to it.
Phase = tuple[str, Matcher]


def path_of(frame: Frame) -> str:
    return (frame.file_path or "").replace("\\", "/")


def frame_in(frame: Frame, suffix: str, *functions: str) -> bool:
    """Whether ``frame`` runs in a file ending with ``suffix`` (and one of ``functions``,
    when given)."""
    return path_of(frame).endswith(suffix) and (not functions or frame.function in functions)


def _frames(frame: Frame) -> Iterator[Frame]:
    yield frame
    for child in frame.children:
        if not child.is_synthetic:
            yield from _frames(child)


def _category(frame: Frame, specific: Sequence[Phase], generic: Sequence[Phase]) -> str:
    for phases in (specific, generic):
        node: Frame | None = frame
        while node is not None:
            for name, matches in phases:
                if matches(node):
                    return name
            node = node.parent
    return "other"


def attribute(
    root: Frame, specific: Sequence[Phase], generic: Sequence[Phase]
) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Self time per phase, and self time per frame, costliest first. A frame's self time
    goes to the innermost frame of its stack that a ``specific`` phase matches; if none
    does, to the innermost ``generic`` match; else to "other"."""
    by_phase: dict[str, float] = {name: 0.0 for name, _ in (*specific, *generic)}
    by_phase["other"] = 0.0
    by_frame: dict[str, float] = {}
    for frame in _frames(root):
        own = frame.total_self_time
        if own <= 0:
            continue
        by_phase[_category(frame, specific, generic)] += own
        where = frame.file_path_short or "<built-in>"
        label = f"{frame.function}  {where}:{frame.line_no or ''}".rstrip(":")
        by_frame[label] = by_frame.get(label, 0.0) + own
    top = sorted(by_frame.items(), key=lambda kv: kv[1], reverse=True)
    return by_phase, top


@dataclass
class Task:
    """One phase measurement: ``fn`` timed; ``before``/``after`` untimed around it."""

    name: str
    fn: Callable[[], object]
    before: Callable[[], object] | None = None
    after: Callable[[], object] | None = None
    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)


def run_rounds(tasks: Sequence[Task], times: int) -> None:
    """``times`` rounds, each task once per round: every phase sees the same load."""
    for _ in range(times):
        for task in tasks:
            if task.before is not None:
                task.before()
            gc.collect()
            start = time.perf_counter()
            task.fn()
            task.seconds.append(time.perf_counter() - start)
            if task.after is not None:
                task.after()


def without_gc(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with the cyclic garbage collector off."""

    def run() -> object:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn()
        finally:
            if was_enabled:
                gc.enable()

    return run
