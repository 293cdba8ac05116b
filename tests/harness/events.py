"""Waiting on what Redis records instead of sleeping: the providers' events streams (one entry per
transition, written by the same script as the transition) read with ``XREAD BLOCK``."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from daemon import keys

Event = dict[str, str]


class EventLog:
    """Every event of one provider's stream since the start, read on demand."""

    def __init__(self, client: aioredis.Redis, provider: str = "ltx") -> None:
        self.client = client
        self.stream = keys.events_key(provider)
        self.seen: list[Event] = []
        self.last = "0-0"

    async def read(self, block_ms: int = 200) -> list[Event]:
        """New events (waiting up to ``block_ms`` for the first one; 0: not at all)."""
        new: list[Event] = []
        block = block_ms or None  # BLOCK 0 would wait forever
        for _, entries in await self.client.xread({self.stream: self.last}, block=block, count=1000):
            for entry_id, fields in entries:
                self.last = entry_id
                new.append(fields)
        self.seen.extend(new)
        return new

    async def until(self, done: Callable[[list[Event]], bool]) -> list[Event]:
        """Read until ``done(every event so far)``; bound it with ``asyncio.timeout``."""
        while not done(self.seen):
            await self.read(block_ms=1000)
        return self.seen

    async def reached(self, job_id: str, state: str) -> Event:
        """Wait for ``job_id``'s event with ``state``; returns it."""
        await self.until(lambda seen: any(e["job"] == job_id and e["state"] == state for e in seen))
        return next(e for e in self.seen if e["job"] == job_id and e["state"] == state)

    def states(self, job_id: str) -> list[str]:
        return [e["state"] for e in self.seen if e["job"] == job_id]
