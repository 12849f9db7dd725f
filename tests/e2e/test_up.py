"""``scheduled-prompts up`` as a real process: an embedded redis-server with persistence
when none answers, a supervised worker and beat, LogRunner deliveries, a clean Ctrl-C."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import scheduled_prompts as sp
from scheduled_prompts import embedded
from scheduled_prompts.settings import mask_url
from support.cluster import Process
from support.recording_runner import read_records
from support.redis_server import free_port
from support.sentinel import SentinelGroup

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


def _started_at(pid: int) -> str | None:
    """The process's start time (clock ticks after boot), None once it is gone or a
    zombie: with the pid, an identity that a reused pid does not match."""
    fields = _read(f"/proc/{pid}/stat").decode(errors="replace").rpartition(")")[2].split()
    return None if not fields or fields[0] == "Z" else fields[19]


def _tree(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> command line."""
    parents = {pid: _ppid(pid) for pid in _pids()}
    found: dict[int, str] = {}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found.keys()
        for pid in frontier:
            found[pid] = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode()
    return found


class Descendants:
    """The processes ``up`` started (worker, its pool, beat, redis-server, Flower), each
    recorded with its start time so that a reused pid never passes for one of them."""

    def __init__(self, up: subprocess.Popen[bytes], *, pool: int, flower: bool) -> None:
        self.up = up
        self.expected = {"redis-server": 1, "worker": 1 + pool, "beat": 1, "flower": int(flower)}
        self.started: dict[int, tuple[str, str]] = {}

    @staticmethod
    def _kind(cmd: str) -> str:
        words = cmd.split()
        if words and "redis-server" in words[0]:
            return "redis-server"
        return next((w for w in ("worker", "beat", "flower") if w in words), cmd)

    def record(self, timeout: float = 30) -> None:
        """Wait until all of them run (pool processes fork after the worker), record them."""
        deadline = time.monotonic() + timeout
        while True:
            tree = _tree(self.up.pid)
            counts = Counter(self._kind(cmd) for cmd in tree.values())
            if counts == Counter(self.expected):  # missing counts as zero
                break
            assert time.monotonic() < deadline, (counts, tree)
            time.sleep(0.1)
        for pid, cmd in tree.items():
            started = _started_at(pid)
            assert started is not None, cmd
            self.started[pid] = (started, cmd)

    def alive(self) -> dict[int, str]:
        return {pid: cmd for pid, (at, cmd) in self.started.items() if _started_at(pid) == at}

    def wait_gone(self, timeout: float = 30) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left


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


def restart_keeps(deployment: Deployment, far: sp.ScheduledPrompt) -> Up:
    """A second `up` on the same data folder; ``far`` (not yet due) is still scheduled."""
    again = deployment.up()
    again.wait_for(" ready.")
    assert "started an embedded redis-server" in again.text()
    deployment.use()  # drop connections to the first embedded server
    kept = sp.get_prompt(far.id)
    assert kept is not None
    assert kept.status is sp.Status.SCHEDULED
    assert kept.next_run_at == far.next_run_at
    return again


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

    again = restart_keeps(deployment, far)
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


def _record_calls(deployment: Deployment, seconds: float) -> Path:
    """Deliveries of the deployment's ``up`` go to the recording runner, ``seconds`` each."""
    records = deployment.tmp / "records.jsonl"
    deployment.env |= {
        "SCHEDULED_PROMPTS_RUNNER": "support.recording_runner:RecordingRunner",
        "SP_TEST_RECORD_FILE": str(records),
        "SP_TEST_RUNNER_SLEEP": str(seconds),
        "SCHEDULED_PROMPTS_LEASE_SECONDS": "5",  # a cut call is re-driven soon
    }
    return records


def _wait_for_call(records: Path, up: Up) -> None:
    """Until a runner call has started (and so is in progress: it lasts seconds)."""
    deadline = time.monotonic() + 30
    while not read_records(str(records)):
        assert time.monotonic() < deadline, up.text()[-3000:]
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("signum", "flower"),
    [
        (signal.SIGINT, False),
        (signal.SIGTERM, True),
        (signal.SIGHUP, False),
        (signal.SIGQUIT, False),
    ],
    ids=["SIGINT", "SIGTERM-with-flower", "SIGHUP", "SIGQUIT"],
)
def test_up_stopped_by_a_signal_finishes_the_call_in_progress_and_leaves_nothing(
    deployment: Deployment, signum: signal.Signals, flower: bool
) -> None:
    records = _record_calls(deployment, seconds=2)
    up = deployment.up(*(["--flower", f"--flower-port={free_port()}"] if flower else []))
    up.wait_for(" ready.")
    if flower:
        up.wait_for("Visit me at")
    family = Descendants(up.popen, pool=2, flower=flower)
    family.record()
    deployment.use()
    soon = sp.schedule_prompt("soon", user_id="ana", platform="cli", delay=1)
    _wait_for_call(records, up)

    started = time.monotonic()
    os.kill(up.popen.pid, signum)
    try:
        status = up.popen.wait(60)  # the bound is 30 s for the children + 10 s for Redis
    except subprocess.TimeoutExpired:
        raise AssertionError(f"up did not stop:\n{up.text()[-4000:]}") from None
    took = time.monotonic() - started
    assert status == 0, up.text()[-3000:]
    assert family.wait_gone() == {}
    print(f"{signum.name}: up exited {took:.2f}s after the signal")
    out = up.text()
    assert "killing" not in out, out[-3000:]  # everything stopped within its grace
    assert "[up] stopped" in out
    # A warm shutdown: the runner call in progress ran to its end and was committed.
    assert [r["event"] for r in read_records(str(records))] == ["start", "end"]
    assert "succeeded in" in out and "'delivered'" in out, out[-3000:]
    assert deployment.wait_no_leftovers() == {}
    assert not embedded.answers(deployment.url, 0.5)
    assert soon.id in read_records(str(records))[0]["key"]


@pytest.mark.parametrize(
    ("first", "second", "hurried"),
    [(signal.SIGTERM, signal.SIGINT, True), (signal.SIGHUP, signal.SIGHUP, False)],
    ids=["SIGTERM-then-SIGINT-kills", "SIGHUP-twice-stays-warm"],
)
def test_up_second_signal_while_stopping_kills_at_once_unless_a_repeated_hangup(
    deployment: Deployment, first: signal.Signals, second: signal.Signals, hurried: bool
) -> None:
    records = _record_calls(deployment, seconds=6)
    up = deployment.up()
    up.wait_for(" ready.")
    family = Descendants(up.popen, pool=2, flower=False)
    family.record()
    deployment.use()
    sp.schedule_prompt("slow", user_id="ana", platform="cli", delay=1)
    _wait_for_call(records, up)

    os.kill(up.popen.pid, first)
    up.wait_for("[up] stopping")
    os.kill(up.popen.pid, second)  # a closing terminal can send SIGHUP twice
    assert up.popen.wait(60) == 0, up.text()[-3000:]
    assert family.wait_gone() == {}
    assert deployment.wait_no_leftovers() == {}
    calls = [r["event"] for r in read_records(str(records))]
    if hurried:  # the call in progress was cut; it is delivered again after a restart
        assert calls == ["start"]
        assert "[up] a second signal: killing worker" in up.text()
    else:
        assert calls == ["start", "end"]
        assert "killing" not in up.text()


def test_up_killed_with_sigkill_mid_delivery_leaves_nothing_and_loses_nothing(
    deployment: Deployment,
) -> None:
    records = _record_calls(deployment, seconds=2)
    up = deployment.up("--flower", f"--flower-port={free_port()}")
    up.wait_for(" ready.")
    up.wait_for("Visit me at")
    deployment.use()
    far = sp.schedule_prompt("far ahead", user_id="ana", platform="cli", delay=86_400)
    soon = sp.schedule_prompt("soon", user_id="ana", platform="cli", delay=1)
    family = Descendants(up.popen, pool=2, flower=True)
    family.record()
    _wait_for_call(records, up)

    os.kill(up.popen.pid, signal.SIGKILL)  # up alone: its children are in other groups
    up.popen.wait()
    killed = time.monotonic()
    left = family.wait_gone()
    took = time.monotonic() - killed
    assert left == {}, up.text()[-3000:]
    print(f"SIGKILL: every process up started gone {took:.2f}s after up died")
    assert deployment.wait_no_leftovers() == {}

    again = restart_keeps(deployment, far)
    deadline = time.monotonic() + 60  # the cut call is delivered again, in full
    while not [r for r in read_records(str(records)) if r["event"] == "end"]:
        assert time.monotonic() < deadline, again.text()[-3000:]
        time.sleep(0.1)
    assert {r["prompt_id"] for r in read_records(str(records))} == {soon.id}
    assert again.interrupt() == 0, again.text()[-3000:]
    assert deployment.wait_no_leftovers() == {}


def test_up_stops_everything_when_its_terminal_closes(deployment: Deployment) -> None:
    # A real hang-up, not a signal sent by hand: up's controlling terminal is a pty whose
    # master side closes, so up gets SIGHUP from the kernel and every write of up and its
    # children to the terminal fails from then on (EIO).
    master, terminal = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    popen = subprocess.Popen(
        [str(SCRIPT), "up"],
        cwd=deployment.tmp,
        env=deployment.env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        preexec_fn=take_terminal,  # noqa: PLW1509 - the test process has no threads
    )
    os.close(terminal)
    try:
        out = b""
        deadline = time.monotonic() + 30
        while b" ready." not in out:
            assert popen.poll() is None and time.monotonic() < deadline, out.decode()[-3000:]
            if select.select([master], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):
                    out += os.read(master, 65536)
        family = Descendants(popen, pool=2, flower=False)
        family.record()
        os.close(master)
        master = -1
        started = time.monotonic()
        assert popen.wait(60) == 0
        print(f"terminal closed: up exited {time.monotonic() - started:.2f}s after")
        assert family.wait_gone() == {}
        assert deployment.wait_no_leftovers() == {}
    finally:
        if master >= 0:
            os.close(master)
        if popen.poll() is None:
            popen.kill()
            popen.wait()


def _flower_workers(port: int) -> dict[str, object]:
    """Flower's workers, asking them afresh; {} while Flower does not answer yet."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/workers?refresh=1",
        headers={"Authorization": "Basic " + base64.b64encode(b"ops:flower-pw").decode()},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return dict(json.loads(reply.read()))
    except (OSError, ValueError):
        return {}


@pytest.mark.xdist_group("sentinel")
def test_up_and_flower_run_behind_sentinel_without_embedding_a_redis(tmp_path: Path) -> None:
    with SentinelGroup(password="up-data-pw", sentinel_password="up-sentinel-pw") as group:
        deployment = Deployment(tmp_path, url=group.url())
        deployment.env["SCHEDULED_PROMPTS_SENTINEL_PASSWORD"] = "up-sentinel-pw"
        deployment.env["FLOWER_BASIC_AUTH"] = "ops:flower-pw"
        try:
            port = free_port()
            up = deployment.up("--flower", f"--flower-port={port}")
            up.wait_for(" ready.")
            out = up.text()
            assert f"[up] using Redis at {mask_url(group.url())}" in out
            assert "embedded" not in out and "up-data-pw" not in out
            sp.configure(
                redis_url=group.url(), sentinel_password="up-sentinel-pw", queue=deployment.queue
            )
            soon = sp.schedule_prompt("soon", user_id="ana", platform="cli", delay=2)
            up.wait_for(f"delivered {soon.id}:", timeout=30)
            # Flower reaches the broker through the sentinels too: it lists the worker.
            deadline = time.monotonic() + 60
            workers: dict[str, object] = {}
            while not workers and time.monotonic() < deadline:
                workers = _flower_workers(port)
                time.sleep(0.5)
            assert workers, up.text()[-3000:]
            assert up.interrupt() == 0, up.text()[-3000:]
            assert deployment.wait_no_leftovers() == {}
        finally:
            deployment.close()
