"""The capacity mirror: what each provider says runs on each account, reconciled with our slots.

The provider's own ``maxJobs`` is the real limit (docs/providers.md, "What genrelay builds on these
contracts"): Redis can lose leases, other clients can run jobs on the same account, and a submit
whose answer was lost may still have started a job. So every ``GENRELAY_CAPACITY_SYNC_INTERVAL``
seconds one worker reads each account's running jobs (useapi ``scheduler/available``; any adapter
that offers ``capacity()``) and applies them in one script per account (``lua/reconcile.lua``): jobs
not ours count as busy slots, ours that the provider lists are adopted by their ref (never submitted
twice) and keep their lease, and our leases the provider no longer runs get one status read now. A
submit that may have been accepted asks for a sync at once and again after the grace period
(``request_reconcile``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any, cast

import structlog

from daemon import keys
from daemon.errors import ProviderError
from daemon.jobs import State, Update
from daemon.providers import get_provider
from daemon.providers.base import CapacityProvider, ProviderCapacity
from daemon.slots import Reconciled
from daemon.task_guard import arq_id, refuse
from daemon.tasks import Task
from workers.runtime import RUNTIME, WorkerRuntime

log = structlog.get_logger("genrelay.capacity")

CAPACITY_TASK = Task.SYNC_CAPACITY


def capacity_provider(provider: str) -> CapacityProvider | None:
    """The adapter when it can list what runs on an account, else None."""
    adapter = get_provider(provider)
    return cast(CapacityProvider, adapter) if callable(getattr(adapter, "capacity", None)) else None


def lists_reply_refs(provider: str) -> bool:
    """Whether the provider's listing echoes the ref we submit with, so a job missing from it was
    never accepted (useapi). Without it, a job can be matched by its provider id only."""
    return capacity_provider(provider) is not None and bool(
        getattr(get_provider(provider), "lists_reply_refs", False)
    )


async def sync_provider(runtime: WorkerRuntime, provider: str) -> list[Reconciled]:
    """Read and reconcile every account of ``provider``; an account whose listing cannot be read
    is left as it is until the next sync."""
    adapter = capacity_provider(provider)
    if adapter is None:
        return []
    services = runtime.services
    settings = services.settings
    results = []
    for account in settings.accounts_for(provider):
        seconds, micros = await services.client.time()
        listed_at_ms = int(seconds) * 1000 + int(micros) // 1000
        try:
            listing = await adapter.capacity(runtime.session, account)
        except ProviderError as exc:
            log.warning("capacity listing failed", provider=provider, account=account.name, error=str(exc))
            continue
        listing = await place_unnamed(services.client, listing, account.name)
        result = await services.slots.reconcile(
            provider,
            account.name,
            listing,
            listed_at_ms=listed_at_ms,
            lists_refs=lists_reply_refs(provider),
            grace_ms=int(settings.reconcile_grace * 1000),
            poll_ms=int(settings.poll_interval * 1000),
        )
        for job_id in result.interrupted:
            await fail_uncertain(runtime, job_id, account.name)
        if result.changed:
            log.info(
                "capacity reconciled",
                provider=provider,
                account=account.name,
                foreign=result.foreign,
                adopted=list(result.adopted),
                rebuilt=list(result.rebuilt),
                resubmitted=list(result.resubmitted),
                interrupted=list(result.interrupted),
                checked=list(result.checked),
            )
        results.append(result)
    return results


async def place_unnamed(client: Any, listing: ProviderCapacity, account: str) -> ProviderCapacity:
    """Keep the entries that name no account (useapi MiniMax, PixVerse: ``executing[]`` has no
    account field, and an id need not embed one) only when they are ours and our record of the job
    names ``account``: the adapter lists them under every account of the token."""
    unnamed = [entry for entry in listing.executing if not entry.account and entry.reply_ref]
    if not unnamed:
        return listing
    async with client.pipeline(transaction=False) as pipe:
        for entry in unnamed:
            pipe.hget(keys.job_key(str(entry.reply_ref)), "account")
        owners = dict(zip((entry.provider_job_id for entry in unnamed), await pipe.execute(), strict=True))
    kept = tuple(
        dataclasses.replace(entry, account=account) if not entry.account else entry
        for entry in listing.executing
        if entry.account or owners.get(entry.provider_job_id) == account
    )
    return dataclasses.replace(listing, executing=kept)


async def fail_uncertain(runtime: WorkerRuntime, job_id: str, account: str) -> str:
    """End a submit that may have been accepted and cannot be looked up: sending it again could
    pay for it twice, so the job fails with a message that says so."""
    message = (
        f"the submission to account {account} got no answer (or a worker stopped mid-call): the "
        "provider may have started it; not submitted again so it is not paid for twice. "
        "Submit a new job if no result appears at the provider"
    )
    update = Update(State.FAILED, message=message, error_type="submit_interrupted")
    outcome = await runtime.services.store.apply(job_id, update, source="submit")
    log.warning("submission interrupted", job_id=job_id, account=account, outcome=outcome)
    return outcome


async def sync_capacity(ctx: dict[str, Any], provider: str) -> int:
    """arq task: reconcile one provider now (asked for by a submit that got no answer, or a 429)."""
    runtime: WorkerRuntime = ctx[RUNTIME]
    if provider not in runtime.services.settings.providers() or not arq_id(ctx).startswith(
        f"capacity:{provider}:"
    ):
        await refuse(runtime.services.client, CAPACITY_TASK, ctx, "not scheduled by genrelay")
        return 0
    return len(await sync_provider(runtime, provider))


async def request_reconcile(pool: Any, provider: str, *, grace: float | None = None) -> None:
    """Enqueue a sync of ``provider`` now and, with ``grace``, once more when a listing read then
    can rule a missing job out (one task per provider and tenth of a second)."""
    if pool is None:
        return
    now = time.time()
    await pool.enqueue_job(CAPACITY_TASK, provider, _job_id=f"capacity:{provider}:{int(now * 10)}")
    if grace is not None:
        later = now + grace + max(0.25, grace * 0.2)
        await pool.enqueue_job(
            CAPACITY_TASK,
            provider,
            _job_id=f"capacity:{provider}:{int(later * 10)}",
            _defer_until=datetime.fromtimestamp(later, UTC),
        )


async def capacity_forever(runtime: WorkerRuntime) -> None:
    """Every interval, sync each provider that can list its running jobs; of all the workers, the
    one that takes the provider's lock for this interval does it."""
    settings = runtime.services.settings
    interval = settings.capacity_sync_interval
    providers = [p for p in settings.providers() if capacity_provider(p) is not None]
    if not providers:
        return
    client = runtime.services.client
    while not runtime.stopping.is_set():
        for provider in providers:
            try:
                taken = await client.set(
                    keys.capacity_lock_key(provider), "1", nx=True, px=max(1, int(interval * 900))
                )
                if taken:
                    await sync_provider(runtime, provider)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("capacity sync failed", provider=provider, error=repr(exc))
        try:
            await asyncio.wait_for(runtime.stopping.wait(), interval)
        except TimeoutError:
            pass
