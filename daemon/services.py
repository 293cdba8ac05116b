"""The parts every process shares, opened once: the Redis client, the scripts, slots and the store."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import redis.asyncio as aioredis

from daemon import keys
from daemon.redis import connect
from daemon.scripts import Scripts
from daemon.settings import Settings
from daemon.slots import SlotAllocator
from daemon.store import JobStore


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    client: aioredis.Redis
    scripts: Scripts
    slots: SlotAllocator
    store: JobStore
    secret: str

    async def close(self) -> None:
        await self.client.aclose()


async def open_services(settings: Settings, redis_url: str, *, sync_accounts: bool = True) -> Services:
    """Connect, load the scripts and (by default) the accounts into Redis."""
    client = await connect(redis_url)
    try:
        scripts = Scripts.register(client)
        await scripts.load()
        slots = SlotAllocator(client, scripts, settings)
        if sync_accounts:
            await slots.sync_accounts()
        secret = settings.secret or await shared_secret(client)
    except BaseException:
        await client.aclose()
        raise
    return Services(settings, client, scripts, slots, JobStore(client, scripts, slots), secret)


async def shared_secret(client: aioredis.Redis) -> str:
    """The secret generated once and kept in Redis, so every process signs with the same key."""
    await client.set(keys.SECRET, secrets.token_urlsafe(32), nx=True)
    value: str = await client.get(keys.SECRET)
    return value
