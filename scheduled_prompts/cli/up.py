"""``up``: worker + beat (+ Flower) in the foreground, supervised, with an embedded Redis
when none answers. Ctrl-C stops every child cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import click

from .. import embedded
from ..settings import get_settings, mask_url
from . import cli
from .common import CliError

DEFAULT_RUNNER = "scheduled_prompts.runners:LogRunner"


@dataclass
class Child:
    """A supervised process: restarted with backoff when it dies."""

    name: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    log: list[str] = field(default_factory=list)

    def start(self) -> None:
        # Own process group: a terminal's Ctrl-C reaches `up` only, which then stops
        # each child in order instead of all of them dying at once.
        self.process = subprocess.Popen(self.args, env=self.env, start_new_session=True)
        self.started = time.monotonic()
        self.restart_at = None

    def check(self) -> None:
        """Restart the child if it exited: 1, 2, 4 … 30 s after, reset by a minute up."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                click.echo(f"[up] restarting {self.name}", err=True)
                self.start()
            return
        if self.process is None or self.process.poll() is None:
            return
        if now - self.started > 60:
            self.failures = 0
        delay = min(30.0, 2.0**self.failures)
        self.failures += 1
        click.echo(
            f"[up] {self.name} exited with status {self.process.returncode}; "
            f"restarting in {delay:.0f}s",
            err=True,
        )
        self.restart_at = now + delay

    def stop(self, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            click.echo(f"[up] {self.name} did not stop in {timeout:.0f}s; killing it", err=True)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "scheduled_prompts", *args]


@cli.command()
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
    """Run worker and beat in the foreground (Ctrl-C stops them)."""
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
        Child("worker", _celery("worker", f"--loglevel={loglevel}",
                                f"--concurrency={concurrency}"), env),
        Child("beat", _celery("beat", f"--loglevel={loglevel}",
                              "-s", str(data_dir / "celerybeat-schedule")), env),
    ]  # fmt: skip
    if flower:
        children.append(
            Child("flower", _celery("flower", "--address=127.0.0.1", f"--port={flower_port}"), env)
        )
    stop = _stop_on_signals()
    redis_child: subprocess.Popen[bytes] | None = None
    try:
        redis_child = _ensure_redis(url, data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        click.echo(f"[up] runner: {env['SCHEDULED_PROMPTS_RUNNER']}", err=True)
        if flower:
            click.echo(f"[up] Flower: http://127.0.0.1:{flower_port}/", err=True)
        redis_child = _supervise(children, redis_child, url, data_dir, stop)
    finally:
        # Whatever happened (an error, Ctrl-C before the children started), the embedded
        # Redis started here is stopped here. SIGTERM makes it flush its append-only file.
        if redis_child is not None and redis_child.poll() is None:
            redis_child.terminate()
            try:
                redis_child.wait(10)
            except subprocess.TimeoutExpired:
                redis_child.kill()


def _stop_on_signals() -> list[bool]:
    """SIGINT and SIGTERM set the returned flag (``flag[0]``) instead of raising."""
    flag = [False]

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        flag[0] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return flag


def _ensure_redis(url: str, data_dir: Path) -> subprocess.Popen[bytes] | None:
    """Use the Redis at ``url``, or start an embedded one when it is local and silent."""
    shown = mask_url(url)
    if embedded.answers(url):
        click.echo(f"[up] using Redis at {shown}", err=True)
        return None
    if not embedded.is_local(url):
        raise CliError(f"no Redis answers at {shown}; start it or set SCHEDULED_PROMPTS_REDIS_URL")
    try:
        process, binary = embedded.start(url, data_dir)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    click.echo(
        f"[up] no Redis answered at {shown}: started an embedded redis-server "
        f"({binary}) with append-only persistence in {data_dir}/",
        err=True,
    )
    return process


def _supervise(
    children: list[Child],
    redis_child: subprocess.Popen[bytes] | None,
    url: str,
    data_dir: Path,
    stop: list[bool],
) -> subprocess.Popen[bytes] | None:
    """Run until ``stop[0]``, restarting what dies; then stop the children in order.

    Returns the embedded Redis process (it may have been restarted) for the caller to stop.
    """
    try:
        for child in children:
            if not stop[0]:
                child.start()
        while not stop[0]:
            for child in children:
                child.check()
            if redis_child is not None and redis_child.poll() is not None:
                click.echo("[up] the embedded redis-server exited; restarting it", err=True)
                redis_child, _ = embedded.start(url, data_dir)
            time.sleep(0.2)
    finally:
        click.echo("[up] stopping", err=True)
        for child in reversed(children):
            child.stop(timeout=20)
        click.echo("[up] stopped", err=True)
    return redis_child
