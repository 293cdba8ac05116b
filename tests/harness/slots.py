"""Reading the slot indexes (layout 2, daemon/lua/lib.lua) in tests: who holds a lease, when it
expires, who waits. Writes only where a test stages a fault (a lease that ran out, lost keys)."""

from __future__ import annotations

import redis.asyncio as aioredis

from daemon import keys


async def leases_on(client: aioredis.Redis, provider: str, account: str) -> list[str]:
    """The jobs holding a lease on ``account`` (expired or not), in job id order."""
    members = await client.zrangebylex(keys.provider_keys(provider).held_by, *keys.held_by_range(account))
    return [str(m).split("\n", 1)[1] for m in members]


async def lease_count(client: aioredis.Redis, provider: str, account: str) -> int:
    return int(await client.zlexcount(keys.provider_keys(provider).held_by, *keys.held_by_range(account)))


async def lease_expiry(client: aioredis.Redis, provider: str, job_id: str) -> float | None:
    """When the job's lease runs out (ms, Redis clock), or None when it holds none."""
    score: float | None = await client.zscore(keys.provider_keys(provider).leases, job_id)
    return score


async def lease_account(client: aioredis.Redis, provider: str, job_id: str) -> str | None:
    account: str | None = await client.hget(keys.provider_keys(provider).lease_account, job_id)
    return account


async def expire_lease(client: aioredis.Redis, provider: str, job_id: str, at_ms: int = 1) -> None:
    """Stage a lease that ran out (its holder died): the next slot script drops it. The job's record
    keeps the lease's expiry as its last renewal wrote it, which is never later than the lease
    (lib.lua's renew_due): it is staged to match."""
    await client.zadd(keys.provider_keys(provider).leases, {job_id: at_ms}, xx=True)
    if await client.hexists(keys.job_key(job_id), "lease_until"):
        await client.hset(keys.job_key(job_id), "lease_until", at_ms)


async def lose_lease_keys(client: aioredis.Redis, provider: str) -> None:
    """Stage lost lease keys (a Redis restored from an older snapshot, an operator's DEL)."""
    pk = keys.provider_keys(provider)
    await client.delete(pk.leases, pk.lease_account, pk.held_by)


async def waiting_jobs(client: aioredis.Redis, provider: str) -> list[str]:
    """Every waiting job, pinned or not, best first."""
    pk = keys.provider_keys(provider)
    unpinned = await client.zrange(pk.waiting, 0, -1, withscores=True)
    pinned = []
    for member in await client.zrange(pk.waiting_pinned, 0, -1):
        _, score, job = str(member).split("\n")
        pinned.append((job, float(score)))
    return [job for job, _ in sorted([*unpinned, *pinned], key=lambda entry: entry[1])]
