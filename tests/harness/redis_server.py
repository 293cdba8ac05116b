"""A throwaway redis-server for fault scenarios: the embedded binary (``daemon.embedded_redis.EmbeddedRedis``)
on a TCP port (with its generated password) that stays the same across restarts, so processes pointed at
it, directly or through a ``FaultProxy``, find it again.

``restart()`` is a graceful SHUTDOWN (the AOF is fsynced) and a start on the same port and data dir;
``kill()`` is ``kill -9`` (what the last second of ``appendfsync everysec`` did not write is lost);
``config_set`` changes the running server (``maxmemory``, ``maxmemory-policy``...).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path

import redis

from daemon.embedded_redis import HOST, EmbeddedRedis


class RedisServer:
    """One redis-server under ``data_dir``; ``appendonly`` and ``config`` apply to every (re)start."""

    def __init__(
        self, data_dir: Path, *, appendonly: bool = True, config: Mapping[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.config = dict(config or {})
        self._port: int | None = None
        self._password: str | None = None
        self._config_command = "CONFIG"
        self._server: EmbeddedRedis | None = None
        self.starts = 0

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server was never started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{HOST}:{self.port}/0"

    @property
    def password(self) -> str:
        if self._password is None:
            raise RuntimeError("the server was never started")
        return self._password

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    def start(self) -> str:
        """Start the server (on the port of the first start, once it had one) and wait for PING."""
        self._server = EmbeddedRedis(
            self.data_dir, port=self._port or 0, appendonly=self.appendonly, extra_config=self.config
        )
        self._server.start()
        self._port = self._server.port
        self._password = self._server.password
        self._config_command = self._server.config_command
        self.starts += 1
        return self.url

    def stop(self) -> None:
        """Graceful: SHUTDOWN fsyncs the AOF before the server exits."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def restart(self) -> str:
        self.stop()
        return self.start()

    def kill(self) -> None:
        """``kill -9``: nothing is flushed; the lock and state files are released as a crash leaves them."""
        server = self._server
        if server is None or server.pid is None:
            return
        os.kill(server.pid, signal.SIGKILL)
        server.stop()  # reaps the dead process and releases the data dir's lock
        self._server = None

    def client(self) -> redis.Redis:
        """A synchronous client straight to the server (never through a proxy)."""
        return redis.Redis(
            host=HOST, port=self.port, password=self.password, decode_responses=True, socket_timeout=5
        )

    def config_set(self, name: str, value: str) -> None:
        with self.client() as client:
            client.execute_command(self._config_command, "SET", name, value)
        self.config[name] = value
