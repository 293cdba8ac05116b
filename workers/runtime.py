"""What a worker process holds while it runs: the shared services, one HTTP session for every
provider call, and the background loops (pollers, maintenance)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from daemon.accounts_file import Account
from daemon.providers.base import USER_AGENT
from daemon.services import Services

# Where arq's ctx keeps the runtime.
RUNTIME = "runtime"


@dataclass(slots=True)
class WorkerRuntime:
    services: Services
    session: aiohttp.ClientSession
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def account(self, provider: str, name: str | None) -> Account | None:
        return self.services.settings.account(provider, name) if name else None

    async def close(self, grace: float = 0.0) -> None:
        """Stop the loops: each finishes what it has in flight (up to ``grace`` seconds) and gives
        back nothing half done; whatever is still running after that is cancelled."""
        self.stopping.set()
        if self.tasks and grace > 0:
            await asyncio.wait(self.tasks, timeout=grace)
        pending = {task for task in self.tasks if not task.done()}
        while pending:
            # Cancelled again each second: on Python 3.11 a cancel can be lost inside redis-py's
            # wait_for, and one lost cancel must not hold the process up for good.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in self.tasks:
            if not task.cancelled():
                task.exception()  # retrieved: a loop that failed was logged by the loop itself
        await self.session.close()
        await self.services.close()


def provider_session(connections: int) -> aiohttp.ClientSession:
    """One pooled session for every provider request of the process."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": USER_AGENT}, raise_for_status=False
    )
