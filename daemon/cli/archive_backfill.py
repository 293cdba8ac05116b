"""``genrelay archive backfill``: copy into the archive the assets recorded before it existed.

Every asset of every provider that has no archive record and is not queued is queued; then, unless
``--no-wait``, this process copies them itself (the same loop as a worker's, so workers running at
the same time share the work) and reports progress on stderr until every queued one is settled.
Exit 0 when all of them are archived, 1 when some failed or expired (``GET /v1/assets?archive=failed``
lists them), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

import redis.asyncio as aioredis

from daemon import archive_state, keys
from daemon.services import open_services
from daemon.settings import Settings


async def queue_unarchived(client: aioredis.Redis, provider: str) -> list[str]:
    """Queue every asset of ``provider`` without an archive record; the ids queued."""
    queued = []
    async for asset_id, _ in client.zscan_iter(keys.asset_index_key(provider), count=500):
        if await client.exists(archive_state.state_key(asset_id)):
            continue
        if await archive_state.ArchiveState(client).enqueue(asset_id):
            queued.append(asset_id)
    return queued


async def run_backfill(
    settings: Settings, redis_url: str, args: argparse.Namespace, err: TextIO = sys.stderr
) -> int:
    from workers.archive import Archiver
    from workers.runtime import WorkerRuntime, provider_session

    services = await open_services(settings, redis_url, sync_accounts=False)
    runtime = WorkerRuntime(services, provider_session(settings.archive.concurrency))
    try:
        pending: dict[str, str] = {}
        for provider in settings.providers():
            for asset_id in await queue_unarchived(services.client, provider):
                pending[asset_id] = provider
        print(f"archive backfill: {len(pending)} assets queued", file=err, flush=True)
        if args.no_wait or not pending:
            return 0
        streams = {archive_state.events_key(p): "$" for p in set(pending.values())}
        for stream in streams:
            found = await services.client.xrevrange(stream, count=1)
            streams[stream] = found[0][0] if found else "0-0"
        archiver = asyncio.create_task(Archiver(runtime).run())
        outcomes: dict[str, int] = {}
        total = len(pending)
        while pending:
            for stream, entries in await services.client.xread(streams, block=1000, count=1000):
                for entry_id, fields in entries:
                    streams[stream] = entry_id
                    if pending.pop(fields["asset"], None) is not None:
                        outcomes[fields["state"]] = outcomes.get(fields["state"], 0) + 1
                        done = total - len(pending)
                        summary = ", ".join(f"{n} {state}" for state, n in sorted(outcomes.items()))
                        print(f"archive backfill: {done}/{total} ({summary})", file=err, flush=True)
        runtime.stopping.set()
        await archiver
        print(", ".join(f"{n} {state}" for state, n in sorted(outcomes.items())))
        return 0 if set(outcomes) <= {"archived"} else 1
    finally:
        await runtime.close()
