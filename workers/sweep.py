"""The slow repair loop: expired leases, waiting jobs with a free slot and nothing in flight.

Dispatch itself is driven by events (a release hands its slot over in the same script); this loop
only repairs what a crash left behind, so it runs every ``GENRELAY_SWEEP_INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio

import structlog

from daemon.metrics import METRICS
from workers.runtime import WorkerRuntime

log = structlog.get_logger("genrelay.maintenance")


async def sweep_once(runtime: WorkerRuntime) -> int:
    """One pass over every provider; returns how many jobs were failed as timed out."""
    services = runtime.services
    failed = 0
    # Restores the accounts after a Redis that lost its data came back (one read when it did not).
    await services.slots.sync_accounts(unless_loaded=True)
    for provider in services.settings.providers():
        for job_id in await services.slots.sweep(provider):
            outcome = await services.store.fail_timed_out(job_id, services.settings.lease_ttl_for(provider))
            log.warning("lease expired", job_id=job_id, provider=provider, outcome=outcome)
            if outcome == "applied":
                failed += 1
                METRICS.lease_expiries.labels(provider).inc()
    return failed


async def sweep_forever(runtime: WorkerRuntime) -> None:
    interval = runtime.services.settings.sweep_interval
    while not runtime.stopping.is_set():
        try:
            await sweep_once(runtime)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("sweep failed", error=repr(exc))
        try:
            await asyncio.wait_for(runtime.stopping.wait(), interval)
        except TimeoutError:
            pass
