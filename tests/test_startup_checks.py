"""The Redis configuration check at start, against real throwaway redis-servers of each kind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from daemon.embedded_redis import EmbeddedRedis
from daemon.errors import SettingsError
from daemon.redis_connection import connect
from daemon.services import open_services
from daemon.settings import Settings
from daemon.startup_checks import check_redis, runs_embedded_binary
from tests.conftest import process_env

ServerFactory = Callable[..., str]
Connect = Callable[[str], Awaitable[aioredis.Redis]]


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start throwaway embedded redis-servers (AOF off unless asked); all stop at the end of the test."""
    servers: list[EmbeddedRedis] = []

    def start(appendonly: bool = False, **config: str) -> str:
        server = EmbeddedRedis(
            tmp_path / f"redis-{len(servers)}",
            appendonly=appendonly,
            extra_config=config,
            lock_admin_commands=False,  # these tests change the configuration with CONFIG SET
        )
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
async def connect_to() -> AsyncIterator[Connect]:
    """Open clients on the throwaway servers; all are closed at the end of the test."""
    clients: list[aioredis.Redis] = []

    async def open_(url: str) -> aioredis.Redis:
        client = await connect(url)
        clients.append(client)
        return client

    try:
        yield open_
    finally:
        for client in clients:
            await client.aclose()


async def test_an_evicting_policy_is_refused_with_the_setting_to_use(
    start_redis: ServerFactory, connect_to: Connect
) -> None:
    """allkeys-lru would silently drop queued jobs: refused, and the message names the fix."""
    client = await connect_to(start_redis(appendonly=True, **{"maxmemory-policy": "allkeys-lru"}))
    with pytest.raises(SettingsError) as info:
        await check_redis(client, embedded=False)
    assert "maxmemory-policy noeviction" in str(info.value)
    assert "allkeys-lru" in str(info.value)


async def test_no_persistence_is_warned_about(start_redis: ServerFactory, connect_to: Connect) -> None:
    """appendonly no and no save rules: one loud warning saying what to set."""
    client = await connect_to(start_redis(appendonly=False))
    warnings = await check_redis(client, embedded=False)
    assert len(warnings) == 1
    assert "PERSISTENCE IS OFF" in warnings[0]
    assert "appendonly yes" in warnings[0]


async def test_the_embedded_server_is_not_warned_about_its_persistence(
    start_redis: ServerFactory, connect_to: Connect
) -> None:
    """genrelay chose the embedded server's persistence itself (off only for throwaway servers)."""
    client = await connect_to(start_redis(appendonly=False))
    assert await check_redis(client, embedded=True) == []


async def test_noeviction_with_aof_is_clean(start_redis: ServerFactory, connect_to: Connect) -> None:
    """noeviction plus AOF, as deploy/redis.conf sets it, passes without a word."""
    client = await connect_to(start_redis(appendonly=True))
    assert await check_redis(client, embedded=False) == []


async def test_rdb_snapshots_count_as_persistence(start_redis: ServerFactory, connect_to: Connect) -> None:
    """AOF off but save rules on: a restart loses minutes, not everything; no warning."""
    client = await connect_to(start_redis(appendonly=False))
    await client.config_set("save", "900 1")
    assert await check_redis(client, embedded=False) == []


async def test_a_redis_that_denies_config_is_warned_about_not_refused(
    start_redis: ServerFactory, connect_to: Connect
) -> None:
    """Managed Redis (or our own ACL advice) denies CONFIG: even an evicting server only gets a warning,
    since the check cannot see it."""
    url = start_redis(appendonly=False, **{"maxmemory-policy": "allkeys-lru"})
    admin = await connect_to(url)
    await admin.execute_command(
        "ACL", "SETUSER", "app", "on", ">app-password", "~*", "&*", "+@all", "-config"
    )
    client = await connect_to(url.replace("unix://", "unix://app:app-password@"))
    warnings = await check_redis(client, embedded=False)
    assert len(warnings) == 1
    assert warnings[0].startswith("COULD NOT CHECK")
    assert "noeviction" in warnings[0]


@pytest.fixture
def foreign_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A redis-server that is not genrelay's embedded binary (Debian's), with persistence off."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH besides the embedded one")
    monkeypatch.setattr("daemon.embedded_redis.embedded_server_binary", lambda: Path(binary))
    server = EmbeddedRedis(tmp_path / "foreign", appendonly=False, lock_admin_commands=False)
    server.start()
    monkeypatch.undo()  # the check itself must compare against the real embedded binary
    try:
        yield server.url
    finally:
        server.stop()


async def test_open_services_tells_the_embedded_server_from_another_and_logs_the_warning(
    foreign_redis: str,
    start_redis: ServerFactory,
    connect_to: Connect,
    make_settings: Callable[..., Settings],
) -> None:
    """Without ``embedded=``, the server decides: a foreign one without persistence is warned about in
    the log, the embedded binary (as under ``genrelay run``) is not."""
    embedded_url = start_redis(appendonly=False)
    assert await runs_embedded_binary(await connect_to(embedded_url)) is True
    assert await runs_embedded_binary(await connect_to(foreign_redis)) is False
    settings = make_settings()
    with capture_logs() as logs:
        for url in (embedded_url, foreign_redis):
            services = await open_services(settings, url)
            await services.close()
    warnings = [entry["event"] for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "PERSISTENCE IS OFF" in warnings[0]


async def test_open_services_refuses_an_evicting_redis_before_writing_to_it(
    start_redis: ServerFactory, connect_to: Connect, make_settings: Callable[..., Settings]
) -> None:
    """The refusal comes first: no script, account or secret lands in the rejected Redis."""
    url = start_redis(appendonly=True, **{"maxmemory-policy": "volatile-lru"})
    with pytest.raises(SettingsError, match="maxmemory-policy noeviction"):
        await open_services(make_settings(), url)
    client = await connect_to(url)
    assert await client.dbsize() == 0


@pytest.mark.parametrize("command", ["web", "worker"])
def test_the_process_exits_with_the_message_and_no_traceback(
    command: str, start_redis: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """``python -m daemon web|worker`` on an allkeys-lru Redis: a one-line configuration error, exit 2."""
    url = start_redis(appendonly=True, **{"maxmemory-policy": "allkeys-lru"})
    env = {
        **os.environ,
        **process_env(tmp_path, redis_url, "http://127.0.0.1:9"),
        "GENRELAY_REDIS_URL": url,
        "GENRELAY_PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "daemon", command], env=env, capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 2, result.stderr
    assert "genrelay: configuration error: Redis has maxmemory-policy allkeys-lru" in result.stderr
    assert "maxmemory-policy noeviction" in result.stderr
    assert "Traceback" not in result.stderr
