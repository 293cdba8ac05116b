"""A Redis primary, one replica and three sentinels on loopback, for failover scenarios.

Every node is a real ``redis-server`` (the sentinels run it with ``--sentinel``): the embedded 6.2
binary, or Debian's when the embedded one is missing. Sentinel timings are short (down after 1 s,
failover timeout 3 s), so a promotion takes a few seconds. ``kill_primary()`` is SIGKILL;
``wait_for_promotion()`` waits until every sentinel names another node the primary.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import redis.asyncio as aioredis

from daemon.embedded_redis import embedded_server_binary

HOST = "127.0.0.1"
MASTER = "mymaster"
START_S = 30.0


def redis_binary() -> str | None:
    """The embedded redis-server 6.2, else one on PATH; None when there is none."""
    try:
        return str(embedded_server_binary())
    except Exception:  # the embedded package may lack its binary on some platforms
        return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class SentinelCluster:
    """Start with :meth:`start`, stop with :meth:`stop` (kills whatever still runs)."""

    def __init__(self, directory: Path, binary: str, *, master: str = MASTER) -> None:
        self.directory = directory
        self.binary = binary
        self.master = master
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinels: dict[int, subprocess.Popen[bytes]] = {}
        self.primary_port = 0
        self.replica_port = 0

    @property
    def sentinel_addresses(self) -> str:
        """``GENRELAY_REDIS_SENTINELS``."""
        return ",".join(f"{HOST}:{port}" for port in self.sentinels)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with (self.directory / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
            return subprocess.Popen([self.binary, *args], stdout=log, stderr=subprocess.STDOUT)

    def _start_node(self, port: int, extra: list[str]) -> None:
        data = self.directory / f"node-{port}"
        data.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(port), "--bind", HOST, "--dir", str(data), "--save", "", "--appendonly", "no"]
        self.nodes[port] = self._spawn(f"node-{port}", [*args, *extra])

    async def start(self) -> SentinelCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.primary_port, self.replica_port = free_port(), free_port()
        # The primary refuses writes when no replica acknowledged within 10 s: that bounds what a
        # failover can lose (README: Redis high availability). The replica, once promoted, has none.
        self._start_node(self.primary_port, ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"])
        self._start_node(self.replica_port, ["--replicaof", HOST, str(self.primary_port)])
        await self._until(self._replica_in_sync, "the replica to sync with the primary")
        for _ in range(3):
            port = free_port()
            config = self.directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind {HOST}\ndir {self.directory}\n"
                f"sentinel monitor {self.master} {HOST} {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {self.master} 1000\n"
                f"sentinel failover-timeout {self.master} 3000\n"
                f"sentinel parallel-syncs {self.master} 1\n",
                encoding="utf-8",
            )
            self.sentinels[port] = self._spawn(f"sentinel-{port}", [str(config), "--sentinel"])
        await self._until(self._sentinels_agree_on(self.primary_port), "the sentinels to see the primary")
        return self

    async def _until(self, check: object, what: str, within_s: float = START_S) -> None:
        assert callable(check)
        try:
            async with asyncio.timeout(within_s):
                while True:
                    if await check():
                        return
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; logs in {self.directory}") from None

    async def _info(self, port: int, section: str) -> dict[str, object]:
        client = aioredis.Redis(host=HOST, port=port, socket_timeout=1, decode_responses=True)
        try:
            info: dict[str, object] = await client.info(section)
            return info
        except (OSError, aioredis.RedisError):
            return {}
        finally:
            await client.aclose()

    async def _replica_in_sync(self) -> bool:
        info = await self._info(self.replica_port, "replication")
        return info.get("master_link_status") == "up"

    def _sentinels_agree_on(self, port: int | None) -> object:
        async def agree() -> bool:
            named = [await self.primary_named_by(sentinel) for sentinel in self.sentinels]
            others = [p for p in named if p is not None and p != self.primary_port]
            if port is None:
                # Promotion: every sentinel names the same node, and it is not the old primary.
                return len(others) == len(named) and len(set(others)) == 1
            # Each sentinel also knows the other two (else a failover would lack a quorum) and the replica.
            for sentinel in self.sentinels:
                known: object = (await self._info(sentinel, "sentinel")).get("master0")
                if not isinstance(known, dict) or (known.get("sentinels"), known.get("slaves")) != (3, 1):
                    return False
            return all(p == port for p in named)

        return agree

    async def primary_named_by(self, sentinel_port: int) -> int | None:
        client = aioredis.Redis(host=HOST, port=sentinel_port, socket_timeout=1, decode_responses=True)
        try:
            address = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
        except (OSError, aioredis.RedisError):
            return None
        finally:
            await client.aclose()
        return int(address[1]) if address else None

    def kill_primary(self) -> None:
        process = self.nodes.pop(self.primary_port)
        process.kill()
        process.wait(timeout=10)

    async def wait_for_promotion(self, within_s: float = 60.0) -> int:
        """The port of the promoted node, once every sentinel names it."""
        await self._until(self._sentinels_agree_on(None), "the sentinels to promote the replica", within_s)
        promoted = await self.primary_named_by(next(iter(self.sentinels)))
        assert promoted == self.replica_port
        return promoted

    def stop(self) -> None:
        for process in [*self.sentinels.values(), *self.nodes.values()]:
            process.kill()
        for process in [*self.sentinels.values(), *self.nodes.values()]:
            process.wait(timeout=10)
        self.sentinels.clear()
        self.nodes.clear()
