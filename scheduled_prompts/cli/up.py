"""``up``: worker + beat (+ Flower) in the foreground, supervised, with an embedded Redis
when none answers. A stop signal stops every child, bounded; so does ``up`` dying."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click

from .. import embedded
from ..settings import get_settings, mask_url
from .common import CliError, Commands

commands = Commands()

DEFAULT_RUNNER = "scheduled_prompts.runners:LogRunner"

#: Worker, beat and Flower get SIGTERM together, then SIGKILL to their whole process group
#: if still running this long after. A worker's warm shutdown takes its longest runner
#: call in progress plus about 5 s (docs/reliability.md).
STOP_GRACE_SECONDS = 30.0
#: The embedded Redis goes last, once they are gone (the worker commits through it):
#: SIGTERM, which flushes its append-only file, then SIGKILL this long after.
REDIS_GRACE_SECONDS = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StopRequest:
    """What the stop signals asked for: set by the handlers, read by the loops."""

    def __init__(self) -> None:
        self.requested = False
        self.hurry = False

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # A closing terminal can deliver SIGHUP twice (the kernel's hang-up, then the
        # shell passing it on to its jobs): only a deliberate second signal hurries.
        if self.requested and signum != signal.SIGHUP:
            self.hurry = True
        self.requested = True


def _say(message: str) -> None:
    # After a hang-up the terminal is gone and a write fails (EIO): the stop goes on.
    with contextlib.suppress(OSError):
        click.echo(message, err=True)


def die_with_up(signum: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child ``signum`` when ``up`` dies, even
    by ``kill -9`` (``PR_SET_PDEATHSIG``); None where the kernel has no such thing.

    ``preexec_fn`` is unsafe in a process with threads (the child could inherit a lock
    another thread held at the fork): ``up`` has none. The alternatives cost more — a
    wrapper that arms the signal and execs starts a second interpreter per child, and a
    pipe to watch would need code in Celery's processes. The signal follows the *thread*
    that forked, here the main thread, which lives as long as ``up``, and it reaches the
    direct child only (a worker's pool processes get SIGKILL when the worker dies, from
    Celery's own ``PDEATHSIG``).
    """
    if sys.platform != "linux":
        # macOS and the BSDs have no PR_SET_PDEATHSIG: there a kill -9 of up leaves its
        # children running; the stop signals still stop them.
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork, not after
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum))
        if os.getppid() != parent:  # up died before prctl ran: no signal would come
            os._exit(1)

    return arm


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether ``process`` exited; it is then reaped, after SIGKILL to what is left of its
    process group (pool processes, a Redis rewrite child): until the reaping, its pid, so
    the group id, cannot be reused by an unrelated process."""
    if process.returncode is not None:
        return True
    if sys.platform == "linux":
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        if os.waitid(os.P_PID, process.pid, flags) is None:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True
    return process.poll() is not None  # no waitid(WNOWAIT) on macOS before Python 3.13


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.returncode is None:  # not reaped, so the group id is still this child's
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


@dataclass
class Child:
    """A supervised process: restarted with backoff when it dies, sent ``orphaned`` by
    the kernel when ``up`` dies."""

    name: str
    args: list[str]
    env: dict[str, str]
    orphaned: signal.Signals = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None

    def start(self) -> None:
        # Own session: a terminal's Ctrl-C or hang-up reaches `up` only, which then stops
        # the children itself (gently, Redis last) instead of all of them dying at once.
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            start_new_session=True,
            preexec_fn=die_with_up(self.orphaned),  # noqa: PLW1509 - see die_with_up
        )
        self.started = time.monotonic()
        self.restart_at = None

    def check(self) -> None:
        """Restart the child if it exited: 1, 2, 4 … 30 s after, reset by a minute up."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                _say(f"[up] restarting {self.name}")
                self.start()
            return
        if self.process is None or not _exited(self.process):
            return
        if now - self.started > 60:
            self.failures = 0
        delay = min(30.0, 2.0**self.failures)
        self.failures += 1
        _say(
            f"[up] {self.name} exited with status {self.process.returncode}; "
            f"restarting in {delay:.0f}s"
        )
        self.restart_at = now + delay


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "scheduled_prompts", *args]


@commands.command(
    help=f"""Run worker and beat in the foreground (Ctrl-C stops them).

    \b
    SIGINT, SIGTERM, SIGHUP or SIGQUIT stops everything: worker, beat and Flower get
    SIGTERM (a warm shutdown: runner calls in progress finish), then SIGKILL
    {STOP_GRACE_SECONDS:g} s later if still running; the embedded Redis goes last
    (SIGTERM, SIGKILL after {REDIS_GRACE_SECONDS:g} s).
    A second SIGINT, SIGTERM or SIGQUIT while stopping kills them at once.
    On Linux, when up dies (even by kill -9), the kernel sends the worker SIGKILL and
    beat, Flower and Redis SIGTERM.
    """
)
@click.option(
    "--runner",
    metavar="PKG.MOD:ATTR",
    help="Runner the worker delivers to [SCHEDULED_PROMPTS_RUNNER, else LogRunner].",
)
@click.option("--flower", is_flag=True, help="Also run Flower on 127.0.0.1.")
@click.option("--flower-port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option(
    "--loglevel",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".scheduled-prompts"),
    show_default=True,
    help="Embedded Redis data and beat state.",
)
def up(
    *,
    runner: str | None,
    flower: bool,
    flower_port: int,
    concurrency: int,
    loglevel: str,
    data_dir: Path,
) -> None:
    """Run worker and beat in the foreground; the help text says how it stops."""
    settings = get_settings()
    url = settings.redis_url
    if flower:
        try:
            import flower as _flower  # noqa: F401, PLC0415
        except ImportError:
            raise CliError(
                "--flower needs Flower: pip install 'scheduled-prompts[flower]'"
            ) from None
    env = dict(os.environ)
    env["SCHEDULED_PROMPTS_REDIS_URL"] = url
    env["SCHEDULED_PROMPTS_RUNNER"] = runner or settings.runner or DEFAULT_RUNNER
    children = [
        # SIGKILL, not a warm shutdown, when up dies: no one is left to bound it. The
        # embedded Redis gets its SIGTERM at the same moment, and a delivery in progress
        # would retry its commit and its message against it for about a minute; it is
        # delivered again instead, with the same key, as after a worker's kill -9.
        Child("worker", _celery("worker", f"--loglevel={loglevel}",
                                f"--concurrency={concurrency}"), env, signal.SIGKILL),
        Child("beat", _celery("beat", f"--loglevel={loglevel}",
                              "-s", str(data_dir / "celerybeat-schedule")), env),
    ]  # fmt: skip
    if flower:
        children.append(
            Child("flower", _celery("flower", "--address=127.0.0.1", f"--port={flower_port}"), env)
        )
    stop = StopRequest()
    stop.install()
    redis_child: subprocess.Popen[bytes] | None = None
    try:
        redis_child = _ensure_redis(url, data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        _say(f"[up] runner: {env['SCHEDULED_PROMPTS_RUNNER']}")
        if flower:
            _say(f"[up] Flower: http://127.0.0.1:{flower_port}/")
        redis_child = _supervise(children, redis_child, url, data_dir, stop)
    finally:
        # Whatever happened (an error, a signal before the children started), the embedded
        # Redis started here is stopped here, after the children.
        if redis_child is not None:
            _stop({"redis-server": redis_child}, REDIS_GRACE_SECONDS, lambda: False)


def _ensure_redis(url: str, data_dir: Path) -> subprocess.Popen[bytes] | None:
    """Use the Redis at ``url``, or start an embedded one when it is local and silent."""
    shown = mask_url(url)
    if embedded.answers(url):
        _say(f"[up] using Redis at {shown}")
        return None
    if not embedded.is_local(url):
        raise CliError(f"no Redis answers at {shown}; start it or set SCHEDULED_PROMPTS_REDIS_URL")
    try:
        process, binary = _start_redis(url, data_dir)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    _say(
        f"[up] no Redis answered at {shown}: started an embedded redis-server "
        f"({binary}) with append-only persistence in {data_dir}/"
    )
    return process


def _start_redis(url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    # SIGTERM when up dies: Redis then writes out its append-only file before it exits.
    return embedded.start(url, data_dir, preexec_fn=die_with_up(signal.SIGTERM))


def _supervise(
    children: list[Child],
    redis_child: subprocess.Popen[bytes] | None,
    url: str,
    data_dir: Path,
    stop: StopRequest,
) -> subprocess.Popen[bytes] | None:
    """Run until a stop is requested, restarting what dies; then stop the children.

    Returns the embedded Redis process (it may have been restarted) for the caller to stop.
    """
    try:
        for child in children:
            if not stop.requested:
                child.start()
        while not stop.requested:
            for child in children:
                child.check()
            if redis_child is not None and _exited(redis_child):
                _say("[up] the embedded redis-server exited; restarting it")
                redis_child, _ = _start_redis(url, data_dir)
            time.sleep(0.2)
    finally:
        _say("[up] stopping")
        started = {c.name: c.process for c in children if c.process is not None}
        _stop(started, STOP_GRACE_SECONDS, lambda: stop.hurry)
        _say("[up] stopped")
    return redis_child


def _stop(
    processes: dict[str, subprocess.Popen[bytes]], grace: float, hurry: Callable[[], bool]
) -> None:
    """SIGTERM to each process at once, then wait for all of them; SIGKILL to the process
    groups of those still running after ``grace`` seconds, or as soon as ``hurry()``.

    The SIGTERM goes to the main process alone: a worker's pool processes exit on SIGTERM
    at once, cutting their runner calls short, whereas the worker's own warm shutdown lets
    them finish."""
    running = {name: p for name, p in processes.items() if not _exited(p)}
    for process in running.values():
        os.kill(process.pid, signal.SIGTERM)  # not reaped yet: the pid is still this child's
    deadline = time.monotonic() + grace
    while running := {name: p for name, p in running.items() if not _exited(p)}:
        if hurry() or time.monotonic() > deadline:
            why = "a second signal" if hurry() else f"still running after {grace:.0f}s"
            _say(f"[up] {why}: killing {', '.join(running)}")
            for process in running.values():
                _kill_group(process)
                process.wait()
            return
        time.sleep(0.05)
