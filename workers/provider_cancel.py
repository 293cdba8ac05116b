"""The ``cancel_at_provider`` arq task: after a job was canceled here, ask its provider to stop it."""

from __future__ import annotations

from typing import Any

import structlog

from daemon import keys
from daemon.errors import ProviderAction, ProviderError
from daemon.jobs import Job, State
from daemon.providers import get_provider
from daemon.slots import EVENTS_MAXLEN
from daemon.task_guard import arq_id, refuse
from daemon.tasks import Task
from workers.runtime import RUNTIME, WorkerRuntime

log = structlog.get_logger("genrelay.cancel")


async def cancel_at_provider(ctx: dict[str, Any], job_id: str) -> str:
    runtime: WorkerRuntime = ctx[RUNTIME]
    # Scheduled by daemon.cancellation as 'cancel:<job id>' once the job is canceled here; anything else
    # (a forged task, a job that was not canceled, or one already answered for) is refused.
    if arq_id(ctx) != f"cancel:{job_id}":
        return await refuse(
            runtime.services.client, Task.CANCEL_AT_PROVIDER, ctx, "not scheduled by genrelay"
        )
    job = await runtime.services.store.get(job_id)
    if job is None or job.provider_job_id is None:
        return "nothing to cancel"
    if job.state is not State.CANCELED or job.fields.get("cancel_note"):
        return await refuse(
            runtime.services.client, Task.CANCEL_AT_PROVIDER, ctx, f"the job is {job.state.value}"
        )
    return await stop_at_provider(runtime, job)


async def stop_at_provider(runtime: WorkerRuntime, job: Job) -> str:
    """Ask the provider to stop ``job`` and keep its answer on the record (``cancelNote``)."""
    account = runtime.account(job.provider, job.account)
    if account is None:
        note = f"not canceled at the provider: account {job.account!r} is no longer configured"
    else:
        try:
            note = await get_provider(job.provider).cancel(runtime.session, account, job)
        except ProviderError as exc:
            if exc.action is ProviderAction.RETRY:
                raise  # arq tries again (network, 5xx, 429)
            note = f"the provider refused the cancel: {exc}"
    async with runtime.services.client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job_key(job.id), "cancel_note", note)
        # Not a transition (the job is already canceled): an event apps and tests can wait for.
        pipe.xadd(
            keys.events_key(job.provider),
            {
                "job": job.id,
                "state": "provider_canceled",
                "progress": "0",
                "account": job.account or "",
                "source": "cancel",
            },
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )
        await pipe.execute()
    log.info("canceled at the provider", job_id=job.id, provider=job.provider, account=job.account, note=note)
    return note
