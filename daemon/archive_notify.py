"""``archive: "before-notify"``: a job's completion reaches its ``replyUrl`` only once its artifact
is archived, or once the copy gave up (failed for good, expired): the app is never left without
its notification, and the body then carries the artifact's ``archive`` state.

The delivery task (``workers/deliver.py``) finds the copy unsettled and parks itself in the asset's
waiters set; the archive loop, after settling the copy, takes the waiters and queues their
deliveries again (arq tasks written as ``lua/lib.lua`` writes them). A delivery that parks while
the copy settles re-checks after parking: whichever side removes the waiter sends it, so it is
neither lost nor sent twice.
"""

from __future__ import annotations

import time

import orjson
import redis.asyncio as aioredis

from daemon import archive_state, keys
from daemon.slots import ARQ_EXPIRY_MS
from daemon.tasks import Task


def waiters_key(asset_id: str) -> str:
    return f"{archive_state.state_key(asset_id)}:waiters"


def settled(fields: dict[str, str]) -> bool:
    return fields.get("state") == "archived" or fields.get("final") == "1"


async def hold_delivery(client: aioredis.Redis, asset_id: str, job_id: str, seq: int) -> bool:
    """True when the delivery must wait for the copy (it is parked); False: send it now."""
    state = archive_state.ArchiveState(client)
    if settled(await state.get(asset_id)) or not await client.exists(keys.asset_key(asset_id)):
        return False
    member = f"{job_id}:{seq}"
    await client.sadd(waiters_key(asset_id), member)
    await client.pexpire(waiters_key(asset_id), ARQ_EXPIRY_MS)
    if settled(await state.get(asset_id)):
        # Settled meanwhile: send it unless the archive loop took the waiter (it queues it again).
        return not await client.srem(waiters_key(asset_id), member)
    return True


async def release_deliveries(client: aioredis.Redis, asset_id: str) -> int:
    """Queue the deliveries parked on ``asset_id`` again; how many."""
    key = waiters_key(asset_id)
    async with client.pipeline(transaction=True) as pipe:
        pipe.smembers(key)
        pipe.delete(key)
        members, _ = await pipe.execute()
    now = int(time.time() * 1000)
    async with client.pipeline(transaction=True) as pipe:
        for member in members:
            job_id, _, seq = str(member).rpartition(":")
            arq_id = f"deliver:{job_id}:{seq}:archived"
            payload: dict[str, object] = {
                "t": None,
                "f": Task.DELIVER,
                "a": [job_id, int(seq)],
                "k": {},
                "et": now,
            }
            pipe.set(keys.ARQ_JOB_PREFIX + arq_id, orjson.dumps(payload), px=ARQ_EXPIRY_MS)
            pipe.zadd(keys.ARQ_QUEUE, {arq_id: now})
        await pipe.execute()
    return len(members)
