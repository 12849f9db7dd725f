"""``scheduled-prompts up`` as a real process: an embedded redis-server with persistence
when none answers, a supervised worker and beat, LogRunner deliveries, a clean Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import scheduled_prompts as sp
from scheduled_prompts import embedded
from tests.e2e.cluster import Process
from tests.redis_server import free_port

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "scheduled-prompts"


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or not ours to read
        return b""


def _ppid(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not stat:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] == "Z" else int(fields[1])  # zombies are already dead


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


class Up(Process):
    """One ``scheduled-prompts up`` in its own session, output in a log file."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str, name: str = "up") -> None:
        super().__init__(name, [str(SCRIPT), "up", *args], env, cwd / f"{name}.log", cwd)

    def wait_for(self, needle: str, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < count:
            if self.popen.poll() is not None:
                raise RuntimeError(f"up exited early ({self.popen.returncode}):\n{self.text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {needle!r} x{count} in {timeout}s:\n{self.text()[-4000:]}")
            time.sleep(0.05)

    def children(self) -> dict[int, str]:
        """Direct children of ``up``: pid -> command line."""
        return {
            pid: _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
            for pid in _pids()
            if _ppid(pid) == self.popen.pid
        }

    def child(self, word: str) -> int:
        found = [pid for pid, cmd in self.children().items() if word in cmd.split()]
        assert len(found) == 1, self.children()
        return found[0]

    def interrupt(self, timeout: float = 25) -> int:
        """Ctrl-C: SIGINT to ``up`` alone; returns its exit status."""
        os.kill(self.popen.pid, signal.SIGINT)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"up did not stop in {timeout}s:\n{self.text()[-4000:]}") from None

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._out.close()


class Deployment:
    """A unique queue and a free port: every process ``up`` starts carries the queue in
    its environment (and redis-server the port in its title), so leftovers are found."""

    def __init__(self, tmp: Path, url: str | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = url or f"redis://127.0.0.1:{self.port}/0"
        self.queue = f"up-{uuid.uuid4().hex[:10]}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULED_PROMPTS_")}
        self.env |= {
            "SCHEDULED_PROMPTS_REDIS_URL": self.url,
            "SCHEDULED_PROMPTS_QUEUE": self.queue,
            "PYTHONPATH": str(REPO),
        }
        self.ups: list[Up] = []

    def up(self, *args: str, env: dict[str, str] | None = None) -> Up:
        proc = Up(self.tmp, env or self.env, *args, name=f"up{len(self.ups) + 1}")
        self.ups.append(proc)
        return proc

    def use(self) -> None:
        """Point this process's API (and its Celery producer) at the deployment."""
        sp.configure(redis_url=self.url, queue=self.queue)

    def leftovers(self) -> dict[int, str]:
        """Live processes started for this deployment (by environment or title)."""
        mark_env = f"SCHEDULED_PROMPTS_QUEUE={self.queue}".encode()
        mark_title = f":{self.port}".encode()
        out = {}
        for pid in _pids():
            if pid == os.getpid() or _ppid(pid) is None:
                continue
            cmd = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ")
            if mark_env in _read(f"/proc/{pid}/environ").split(b"\0") or (
                b"redis-server" in cmd and mark_title in cmd
            ):
                out[pid] = cmd.decode(errors="replace")
        return out

    def wait_no_leftovers(self, timeout: float = 5) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def close(self) -> None:
        for proc in self.ups:
            proc.close()
        for pid in self.leftovers():  # only processes this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        sp.configure()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    yield d
    d.close()


def test_up_embeds_redis_delivers_stops_cleanly_and_keeps_prompts(
    deployment: Deployment, tmp_path: Path
) -> None:
    up = deployment.up()
    up.wait_for("[up] runner: ")
    out = up.text()
    assert f"no Redis answered at {deployment.url}: started an embedded redis-server" in out
    assert "with append-only persistence in .scheduled-prompts/" in out
    assert "[up] runner: scheduled_prompts.runners:LogRunner" in out
    up.wait_for(" ready.")

    deployment.use()
    soon = sp.schedule_prompt("soon", user_id="ana", platform="cli", delay=2)
    up.wait_for(f"delivered {soon.id}:", timeout=20)
    far = sp.schedule_prompt("far ahead", user_id="ana", platform="cli", delay=86_400)
    assert {"worker", "beat"} <= {w for cmd in up.children().values() for w in cmd.split()}

    started = time.monotonic()
    assert up.interrupt() == 0, up.text()[-3000:]
    assert time.monotonic() - started < 25
    assert "[up] stopped" in up.text()
    assert deployment.wait_no_leftovers() == {}
    assert not embedded.answers(deployment.url, 0.5)
    assert (tmp_path / ".scheduled-prompts" / "appendonlydir").is_dir()

    again = deployment.up()
    again.wait_for(" ready.")
    assert "started an embedded redis-server" in again.text()
    deployment.use()  # drop connections to the first embedded server
    kept = sp.get_prompt(far.id)
    assert kept is not None
    assert kept.status is sp.Status.SCHEDULED
    assert kept.next_run_at == far.next_run_at
    done = sp.get_prompt(soon.id)
    assert done is not None and done.status is sp.Status.EXECUTED
    assert again.interrupt() == 0, again.text()[-3000:]
    assert deployment.wait_no_leftovers() == {}


def test_up_restarts_a_worker_killed_with_sigkill(deployment: Deployment) -> None:
    up = deployment.up()
    up.wait_for(" ready.")
    worker = up.child("worker")
    os.kill(worker, signal.SIGKILL)
    up.wait_for("[up] worker exited with status -9; restarting in")
    up.wait_for("[up] restarting worker")
    up.wait_for(" ready.", count=2)
    assert up.child("worker") != worker

    deployment.use()
    later = sp.schedule_prompt("after the crash", user_id="ana", platform="cli", delay=2)
    up.wait_for(f"delivered {later.id}:", timeout=20)
    assert up.interrupt() == 0, up.text()[-3000:]
    assert deployment.wait_no_leftovers() == {}


def test_up_with_a_silent_redis_it_cannot_embed_exits_2_with_one_line(tmp_path: Path) -> None:
    # rediss:// is never embedded; a free port on 127.0.0.1 keeps all traffic local.
    port = free_port()
    d = Deployment(tmp_path, url=f"rediss://127.0.0.1:{port}/0")
    try:
        proc = subprocess.run(
            [str(SCRIPT), "up"],
            check=False,
            cwd=tmp_path,
            env=d.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"Error: no Redis answers at rediss://127.0.0.1:{port}/0")
        assert not (tmp_path / ".scheduled-prompts").exists()
        assert d.wait_no_leftovers(1) == {}
    finally:
        d.close()


def test_up_refusing_flower_leaves_no_embedded_redis_behind(
    deployment: Deployment, tmp_path: Path
) -> None:
    # A `flower` package that cannot be imported stands in for Flower not installed.
    shadow = tmp_path / "shadow" / "flower"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('Flower is not installed')\n")
    env = deployment.env | {"PYTHONPATH": f"{shadow.parent}{os.pathsep}{REPO}"}
    up = deployment.up("--flower", env=env)
    status = up.popen.wait(30)
    lines = [line for line in up.text().splitlines() if line.startswith("Error:")]
    assert status == 2, up.text()
    assert lines == ["Error: --flower needs Flower: pip install 'scheduled-prompts[flower]'"]
    assert deployment.wait_no_leftovers(2) == {}, "the embedded redis-server was left running"
