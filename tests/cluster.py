"""A Redis Cluster of loopback redis-servers for tests: three masters, optionally replicas."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from stocksync.daemon.services import LOOPBACK, RedisServer

__all__ = ["LocalCluster", "cluster_port"]


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too, as Redis requires."""
    while True:
        port = random.randint(20_000, 45_000)
        if _free(port) and _free(port + 10_000):
            return port


class LocalCluster:
    """``masters`` masters (and ``replicas`` replicas each) made one cluster by redis-cli."""

    def __init__(self, data_dir: str | os.PathLike[str], *, masters: int = 3,
                 replicas: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.masters = masters
        self.replicas = replicas
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """The URL of the first node: the client finds the others."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start every node, join them into one cluster, wait until it serves every slot."""
        for i in range(self.masters * (1 + self.replicas)):
            node_dir = self.data_dir / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node = RedisServer(
                cluster_port(),
                data_dir=node_dir,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", "1500",
                ],
            )
            node.start()
            self.nodes.append(node)
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH (it comes with redis-server)")
        subprocess.run(
            [cli, "--cluster", "create", *(self.address(n) for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node says the cluster is ok and agrees on the masters."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in self.nodes:
                if not node.running:
                    continue
                with contextlib.closing(redis.Redis.from_url(node.url)) as client:
                    try:
                        info = client.cluster("info")
                        states.append(info.get("cluster_state") == "ok")
                    except (redis.RedisError, OSError):
                        states.append(False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not become ok")
            time.sleep(0.1)

    @staticmethod
    def address(node: RedisServer) -> str:
        """``host:port`` of a node."""
        return node.url.split("//", 1)[1].rsplit("/", 1)[0]

    def flush(self) -> None:
        """Remove every key on every master."""
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.closing(redis.Redis.from_url(node.url)) as client:
                if client.info("replication").get("role") == "master":
                    client.flushall()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
