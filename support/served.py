"""A ``scheduled-prompts`` command serving HTTP (console, MCP over HTTP, exporter) as a
real process for the tests: on a free loopback port, its output in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .cluster import REPO
from .redis_server import free_port, stop_process, wait_listening

#: The console script installed beside the interpreter running the tests.
SCRIPT = Path(sys.executable).parent / "scheduled-prompts"


def command_env(redis_url: str, **extra: str) -> dict[str, str]:
    """This environment without its ``SCHEDULED_PROMPTS_*`` settings, pointed at
    ``redis_url``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULED_PROMPTS_")}
    return env | {"SCHEDULED_PROMPTS_REDIS_URL": redis_url, "PYTHONPATH": str(REPO)} | extra


class Served:
    """``scheduled-prompts *args --port N``, started and listening."""

    def __init__(self, tmp: Path, redis_url: str, *args: str, **env: str) -> None:
        self.port = free_port()
        self.log = tmp / f"{args[0]}.log"
        self._out = self.log.open("wb")
        self.popen = subprocess.Popen(
            [str(SCRIPT), *args, "--port", str(self.port)],
            env=command_env(redis_url, **env),
            cwd=REPO,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        wait_listening(self.port, self.popen, self.log)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        """Stop it with ``sig`` (SIGKILL after 20 s); its exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                stop_process(self.popen)
        self._out.close()
        return self.popen.returncode
