"""A real Redis Cluster on loopback for the tests: ``redis-server --cluster-enabled yes``
nodes joined by ``redis-cli --cluster create``, each in its own temporary directory."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

import redis

from support.redis_server import RedisServer, tool_binary

#: A node's cluster bus listens on its port plus this.
BUS_OFFSET = 10_000


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_OFFSET > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) on loopback")


class RedisCluster:
    """``primaries`` primaries with ``replicas`` replicas each, covering all 16,384 slots.

    ``url`` is the store's ``redis+cluster://`` form of the primaries' addresses.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        extra: tuple[str, ...] = (),
    ) -> None:
        """``extra``: more redis-server arguments for every node (e.g. AOF). One primary
        (no replicas) is a one-node cluster that serves every slot itself."""
        if primaries < 3 and not (primaries == 1 and replicas == 0):
            raise ValueError(
                "redis-cli --cluster create needs at least 3 primaries (or 1, without replicas)"
            )
        self.primaries = primaries
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                *extra,
                port=cluster_port(),
            )
            for _ in range(primaries * (1 + replicas))
        ]  # fmt: skip

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(self.addresses[: self.primaries]) + "/"

    def start(self, timeout: float = 60) -> RedisCluster:
        for node in self.nodes:
            node.start()
        if self.primaries == 1:
            _ask(self.nodes[0], "CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            self.wait_ready(timeout)
            return self
        create = [
            tool_binary("redis-cli"), "--cluster", "create", *self.addresses,
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            self.cleanup()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        self.wait_ready(timeout)
        return self

    def client(self) -> redis.RedisCluster:
        host, port = self.addresses[0].split(":")
        return redis.RedisCluster(host=host, port=int(port), decode_responses=True)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every node sees the cluster ok with all slots served and every replica
        is linked to its primary (a node just created or restarted takes a moment)."""
        deadline = time.monotonic() + timeout
        while not all(self._node_ready(node) for node in self.nodes):
            if time.monotonic() > deadline:
                states = {node.port: self._info(node) for node in self.nodes}
                raise TimeoutError(f"cluster not ready after {timeout}s: {states}")
            time.sleep(0.1)

    @staticmethod
    def _info(node: RedisServer) -> dict[str, str]:
        """The node's CLUSTER INFO fields, its role and its replication link."""
        try:
            text = str(_ask(node, "CLUSTER", "INFO"))
            role = _ask(node, "INFO", "replication")
        except redis.RedisError as exc:
            return {"error": str(exc)}
        info = dict(line.split(":", 1) for line in text.split() if ":" in line)
        info["role"] = str(role.get("role"))
        info["link"] = str(role.get("master_link_status", ""))
        return info

    @staticmethod
    def _serves_all(info: dict[str, str]) -> bool:
        return info.get("cluster_state") == "ok" and info.get("cluster_slots_ok") == "16384"

    def _node_ready(self, node: RedisServer) -> bool:
        info = self._info(node)
        if not self._serves_all(info) or info.get("cluster_known_nodes") != str(len(self.nodes)):
            return False
        if info.get("role") == "slave":
            return info.get("link") == "up"
        # A primary lists its slot ranges with every replica once it knows their roles.
        try:
            ranges = _ask(node, "CLUSTER", "SLOTS")
        except redis.RedisError:
            return False
        return all(len(r) == 3 + self.replicas for r in ranges)

    def primary_nodes(self) -> list[RedisServer]:
        """The nodes that are primaries now (a failover changes which)."""
        return [node for node in self.nodes if self._info(node).get("role") == "master"]

    def flush(self) -> None:
        """Empty every primary (the replicas follow): ours alone, the tests started it."""
        for node in self.primary_nodes():
            _ask(node, "FLUSHALL")
        for node in self.nodes:  # a replica answers reads: wait until it is empty too
            deadline = time.monotonic() + 30
            while _ask(node, "DBSIZE") and time.monotonic() < deadline:
                time.sleep(0.02)

    def owner(self, key: str) -> RedisServer:
        """The node that is the primary of ``key``'s slot now."""
        client = self.client()
        try:
            name = client.get_node_from_key(key).name  # type: ignore[no-untyped-call]
        finally:
            client.close()
        return next(node for node in self.nodes if f"127.0.0.1:{node.port}" == name)

    def kill9(self, node: RedisServer) -> str:
        """SIGKILL one node (its data directory and ``nodes.conf`` stay); returns its
        cluster node id."""
        node_id = str(_ask(node, "CLUSTER", "MYID"))
        assert node.process is not None
        node.process.kill()
        node.process.wait()
        node.process = None
        return node_id

    def wait_failover(self, dead: RedisServer, dead_id: str, timeout: float = 60) -> None:
        """Until every other node marks ``dead`` failed, none gives it a slot any more (a
        replica of it was promoted) and all serve every slot."""
        deadline = time.monotonic() + timeout
        others = [node for node in self.nodes if node is not dead]
        while not all(self._failed_over(node, dead_id) for node in others):
            if time.monotonic() > deadline:
                states = {node.port: self._info(node) for node in others}
                raise TimeoutError(f"no failover after {timeout}s: {states}")
            time.sleep(0.1)

    def _failed_over(self, node: RedisServer, dead_id: str) -> bool:
        if not self._serves_all(self._info(node)):
            return False
        try:
            text = str(_ask(node, "CLUSTER", "NODES"))
        except redis.RedisError:
            return False
        line = next((row.split() for row in text.splitlines() if row.startswith(dead_id)), [])
        # id addr flags master ping pong epoch link [slot ranges...]: failed, and no slot
        return len(line) == 8 and "fail" in line[2].split(",")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _ask(node: RedisServer, *command: str | int) -> Any:
    """One command to one node, on a connection of its own (replies decoded)."""
    client = redis.Redis(port=node.port, decode_responses=True, socket_timeout=5)
    try:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        client.close()


__all__ = ["RedisCluster", "cluster_port"]
