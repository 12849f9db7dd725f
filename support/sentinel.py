"""A primary, its replicas and three sentinels on loopback: real ``redis-server`` and
``redis-server --sentinel`` processes, for the tests and the fault suite."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import redis

from support.redis_server import RedisServer, free_port, redis_server_binary, stop_process


class Sentinel:
    """One ``redis-server --sentinel`` process watching ``service``."""

    def __init__(self, directory: Path, service: str, primary_port: int, **options: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.conf = directory / f"sentinel-{self.port}.conf"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 2",
            f"sentinel down-after-milliseconds {service} {options['down_after_ms']}",
            f"sentinel failover-timeout {service} {options['failover_timeout_ms']}",
            f"sentinel parallel-syncs {service} 1",
        ]
        if options.get("auth_pass"):
            lines.append(f"sentinel auth-pass {service} {options['auth_pass']}")
        if options.get("requirepass"):
            lines.append(f"requirepass {options['requirepass']}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.password = options.get("requirepass") or None

    def start(self) -> Sentinel:
        self.process = subprocess.Popen(
            [redis_server_binary(), str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, decode_responses=True, socket_timeout=2
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class SentinelGroup:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum 2).

    ``password`` protects the data nodes (the URL carries it), ``sentinel_password``
    the sentinels. A primary down for ``down_after_ms`` is failed over.
    """

    def __init__(
        self,
        service: str = "sp-primary",
        *,
        replicas: int = 1,
        sentinels: int = 3,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        persistent: bool = False,
    ) -> None:
        self.service = service
        self.password = password
        self.sentinel_password = sentinel_password
        self.directory = Path(tempfile.mkdtemp(prefix="sp-sentinel-"))
        node = ["--appendonly", "yes", "--appendfsync", "everysec"] if persistent else []
        self._node_args = node
        self.nodes = [self._node(i) for i in range(1 + replicas)]
        self._sentinel_count = sentinels
        self._options = {
            "down_after_ms": str(down_after_ms),
            "failover_timeout_ms": str(failover_timeout_ms),
            "auth_pass": password or "",
            "requirepass": sentinel_password or "",
        }
        self.sentinels: list[Sentinel] = []

    def _node(self, index: int, *extra: str) -> RedisServer:
        directory = self.directory / f"node-{index}"
        directory.mkdir(exist_ok=True)
        return RedisServer(
            *self._node_args, *extra, directory=str(directory), password=self.password
        )

    # --- addresses --------------------------------------------------------------------

    def url(self, scheme: str = "redis+sentinel", db: int = 0) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"{scheme}://{auth}{hosts}/{self.service}/{db}"

    def node_client(self, server: RedisServer) -> redis.Redis:
        return redis.Redis(
            port=server.port, password=self.password, decode_responses=True, socket_timeout=2
        )

    def primary_port(self) -> int:
        """The primary's port as the sentinels name it (the majority answer)."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                addr = client.sentinel_get_master_addr_by_name(self.service)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if addr:
                votes[int(addr[1])] = votes.get(int(addr[1]), 0) + 1
        if not votes:
            raise RuntimeError("no sentinel names a primary")
        return max(votes, key=lambda port: votes[port])

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(n for n in self.nodes if n.port == port)

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> SentinelGroup:
        primary, *replicas = self.nodes
        primary.start()
        for replica in replicas:
            replica.extra = (*replica.extra, "--replicaof", "127.0.0.1", str(primary.port))
            replica.start()
        for replica in replicas:
            self.wait_replicated(replica)
        self.sentinels = [
            Sentinel(self.directory, self.service, primary.port, **self._options).start()
            for _ in range(self._sentinel_count)
        ]
        self.wait_ready()
        return self

    def wait_replicated(self, replica: RedisServer, timeout: float = 30) -> None:
        """Until ``replica``'s link to its primary is up."""
        try:
            self._until(lambda: self._info(replica).get("master_link_status") == "up", timeout, "")
        except TimeoutError:
            info = self._info(replica)
            seen = {k: info.get(k) for k in ("role", "master_port", "master_link_status")}
            raise TimeoutError(f"replica on port {replica.port} did not sync: {seen}") from None

    def wait_settled(self, timeout: float = 120) -> RedisServer:
        """Until every live node but the primary the sentinels name is its replica with
        the link up; returns the primary. After a node is restarted this is usually that
        node becoming a replica; but a sentinel that saw the new primary down for a
        moment (down-after is 1 s here, and a loaded machine stalls processes that long)
        may fail over again — onto the restarted node — and then the other one must
        become its replica."""

        def settled() -> bool:
            try:
                primary = self.primary()
            except (RuntimeError, StopIteration):
                return False
            if self._info(primary).get("role") != "master":
                return False
            return all(
                (info := self._info(node)).get("master_link_status") == "up"
                and info.get("master_port") == str(primary.port)
                for node in self.nodes
                if node is not primary and node.process is not None
            )

        self._until(settled, timeout, "the nodes did not settle under one primary")
        return self.primary()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every sentinel knows the others, the primary and every live replica, so
        that a failover can happen (sentinels find each other through hello messages)."""
        live = sum(1 for n in self.nodes if n.process is not None) - 1

        def ready() -> bool:
            for sentinel in self.sentinels:
                client = sentinel.client()
                try:
                    master = client.sentinel_master(self.service)
                    replicas = client.sentinel_slaves(self.service)
                except (redis.RedisError, OSError):
                    return False
                finally:
                    client.close()
                up = [r for r in replicas if "s_down" not in r.get("flags", "")]
                if int(master.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                    return False
                if len(up) < live:
                    return False
            return True

        self._until(ready, timeout, "the sentinels did not find each other and the replicas")

    def kill_primary(self) -> RedisServer:
        """``kill -9`` the current primary; returns its server (to start it again)."""
        primary = self.primary()
        assert primary.process is not None
        os.kill(primary.process.pid, signal.SIGKILL)
        primary.process.wait()
        primary.process = None
        return primary

    def wait_failover(self, old_port: int, timeout: float = 60) -> int:
        """Until the sentinels name a primary other than ``old_port`` that accepts writes;
        returns its port."""

        def promoted() -> bool:
            try:
                port = self.primary_port()
            except RuntimeError:
                return False
            if port == old_port:
                return False
            node = next(n for n in self.nodes if n.port == port)
            return self._info(node).get("role") == "master"

        self._until(promoted, timeout, f"no failover away from port {old_port}")
        return self.primary_port()

    def restart(self, server: RedisServer) -> None:
        """Start a killed node again on its port; the sentinels make it a replica of the
        current primary (as a process supervisor restarting Redis would)."""
        server.extra = _without_replicaof(server.extra)
        server.start()

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.cleanup()
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- helpers ----------------------------------------------------------------------

    def _info(self, server: RedisServer) -> dict[str, str]:
        client = self.node_client(server)
        try:
            return {k: str(v) for k, v in client.info("replication").items()}
        except (redis.RedisError, OSError):
            return {}
        finally:
            client.close()

    @staticmethod
    def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            time.sleep(0.05)

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _without_replicaof(args: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    skip = 0
    for arg in args:
        if skip:
            skip -= 1
            continue
        if arg == "--replicaof":
            skip = 2
            continue
        out.append(arg)
    return tuple(out)


__all__ = ["Sentinel", "SentinelGroup"]
