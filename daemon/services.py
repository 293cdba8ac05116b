"""The parts every process shares, opened once: the Redis client, the scripts, slots and the store."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from daemon.callback_tokens import CallbackTokens
from daemon.embedded_redis import config_command
from daemon.redis_connection import BACKGROUND, Timeouts, connect
from daemon.scripts import Scripts
from daemon.secret_store import resolve_secret
from daemon.settings import Settings
from daemon.slots import SlotAllocator
from daemon.startup_checks import check_redis, runs_embedded_binary
from daemon.store import JobStore

log = structlog.get_logger("genrelay.redis")


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    client: aioredis.Redis
    scripts: Scripts
    slots: SlotAllocator
    store: JobStore
    secret: str

    def callback_tokens(self) -> CallbackTokens:
        return _tokens(self.secret, self.settings.secret_previous)

    async def close(self) -> None:
        await self.client.aclose()


@functools.cache
def _tokens(current: str, previous: str | None) -> CallbackTokens:
    return CallbackTokens(current, previous)


async def open_services(
    settings: Settings,
    redis_url: str,
    *,
    sync_accounts: bool = True,
    embedded: bool | None = None,
    timeouts: Timeouts = BACKGROUND,
) -> Services:
    """Connect, check the Redis configuration, load the scripts and (by default) the accounts into Redis.

    Args:
        settings: The daemon settings.
        redis_url: The Redis to use.
        sync_accounts: Write the accounts of ``settings`` into Redis.
        embedded: Whether ``redis_url`` is genrelay's embedded server (its persistence is not warned
            about); ``None`` asks the server (see :func:`~daemon.startup_checks.runs_embedded_binary`).
        timeouts: How long a command may take (the web uses ``REQUEST_PATH``: a request answers 503
            within 5 s when Redis is unreachable).

    Raises:
        SettingsError: Redis evicts keys (``maxmemory-policy`` is not ``noeviction``).
    """
    client = await connect(redis_url, timeouts=timeouts)
    try:
        await check_redis_config(client, embedded=embedded, config_command=config_command(settings.data_dir))
        scripts = Scripts.register(client)
        await scripts.load()
        slots = SlotAllocator(client, scripts, settings)
        await slots.upgrade_layout()
        if sync_accounts:
            await slots.sync_accounts()
        secret = await resolve_secret(settings, client, redis_url)
    except BaseException:
        await client.aclose()
        raise
    return Services(settings, client, scripts, slots, JobStore(client, scripts, slots), secret)


async def check_redis_config(
    client: aioredis.Redis, *, embedded: bool | None, config_command: str | None = None
) -> None:
    """Refuse an evicting Redis before anything is written to it; log what an operator must fix.

    ``config_command``: the name of ``CONFIG`` on the embedded server of the data dir, when it has one.
    """
    if embedded is None:
        embedded = await runs_embedded_binary(client)
    command = config_command if embedded and config_command else "CONFIG"
    for warning in await check_redis(client, embedded=embedded, config_command=command):
        log.warning(warning)
