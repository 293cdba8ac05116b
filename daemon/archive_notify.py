"""``archive: "before-notify"``: a job's completion reaches its ``replyUrl`` only once its artifact
is archived, or once the copy gave up (failed for good, expired): the app is never left without
its notification, and the body then carries the artifact's ``archive`` state.

The delivery task (``workers/deliver.py``) finds the copy unsettled and parks itself in the asset's
waiters set; the script that settles the copy (``lua/archive_finish.lua``) takes the waiters and
queues their deliveries again in the same step. A delivery that parks while the copy settles
re-checks after parking: whichever side removes the waiter sends it, so it is neither lost nor
sent twice.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from daemon import archive_state, keys
from daemon.slots import ARQ_EXPIRY_MS


def settled(fields: dict[str, str]) -> bool:
    return fields.get("state") == "archived" or fields.get("final") == "1"


async def hold_delivery(client: aioredis.Redis, asset_id: str, job_id: str, seq: int) -> bool:
    """True when the delivery must wait for the copy (it is parked); False: send it now."""
    state = archive_state.ArchiveState(client)
    if settled(await state.get(asset_id)) or not await client.exists(keys.asset_key(asset_id)):
        return False
    member = f"{job_id}:{seq}"
    await client.sadd(archive_state.waiters_key(asset_id), member)
    await client.pexpire(archive_state.waiters_key(asset_id), ARQ_EXPIRY_MS)
    if settled(await state.get(asset_id)):
        # Settled meanwhile: send it unless the archive loop took the waiter (it queues it again).
        return not await client.srem(archive_state.waiters_key(asset_id), member)
    return True
