"""The ``submit_job`` arq task: hand a job that holds a slot to its provider.

The job's slot was granted by the allocator, which enqueued this task in the same script. The
task records the attempt first (``claim_submit``: write-ahead, so a crash mid-call is visible),
then calls the provider and records its job id, after which the poller follows the job.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from arq import Retry
from redis.exceptions import RedisError

from daemon import keys
from daemon.alerts import ACCOUNT_DISABLED, BREAKER_OPEN, CREDITS_LOW, credits_statuses, raise_alert
from daemon.backoff import backoff_seconds
from daemon.breaker import Breaker, BreakerState
from daemon.errors import Limit, ProviderAction, ProviderError
from daemon.jobs import Job, State, Update
from daemon.keys import provider_of
from daemon.metrics import count_submit_outcomes
from daemon.providers import get_provider, webhook_provider
from daemon.store import SubmitClaim
from daemon.task_guard import arq_id, refuse
from daemon.tasks import Task
from workers.capacity import fail_uncertain, lists_reply_refs, request_reconcile
from workers.provider_cancel import stop_at_provider
from workers.runtime import RUNTIME, WorkerRuntime
from workers.supervisor import until_redis_answers

log = structlog.get_logger("genrelay.submit")


@count_submit_outcomes
async def submit_job(ctx: dict[str, Any], job_id: str) -> str:
    runtime: WorkerRuntime = ctx[RUNTIME]
    store = runtime.services.store
    # Scheduled by the slot scripts (lua/lib.lua enqueue_submit) as 'submit:<job id>:<ms>'; the claim
    # script then checks the job holds a live lease.
    if provider_of(job_id) is None or not arq_id(ctx).startswith(f"submit:{job_id}:"):
        return await refuse(runtime.services.client, Task.SUBMIT, ctx, "not scheduled by genrelay")
    # Redis blips are waited out inside the attempt (see until_redis_answers), with one token for
    # the attempt so that a claim resent after a lost reply is not taken for a dead worker's.
    hold_s = runtime.services.settings.job_timeout / 2
    attempt = secrets.token_hex(8)
    claim = await until_redis_answers(lambda: store.claim_submit(job_id, attempt), "submit claim", hold_s)
    if claim.outcome == "interrupted":
        return await _interrupted(ctx, runtime, job_id, claim)
    if claim.outcome != "go":
        log.info("submit skipped", job_id=job_id, outcome=claim.outcome, state=claim.state)
        return claim.outcome
    job = await until_redis_answers(lambda: store.require(job_id), "job record", hold_s)
    account = runtime.account(job.provider, claim.account)
    if account is None:
        await store.requeue(
            job_id,
            claim.account or "",
            disable_reason="not in the accounts file any more",
            message=f"account {claim.account} is no longer configured",
        )
        return "requeued"
    provider = get_provider(job.provider)
    callback_url = _callback_url(runtime, job)
    try:
        provider_job_id = await provider.submit(runtime.session, account, job, callback_url)
    except ProviderError as exc:
        return await _submit_failed(ctx, runtime, job, claim, exc)
    settings = runtime.services.settings
    fields = {"submit_open": "0"}
    poll_in_ms = int(settings.poll_interval * 1000)
    if callback_url:
        # Callbacks carry the news; a slow safety poll (backing off) covers a lost one.
        poll_in_ms = int(settings.safety_poll_interval * 1000)
        fields.update(poll_ms=str(poll_in_ms), poll_backoff=str(poll_in_ms))
    update = Update(
        State.ACTIVE, progress=0, message="submitted", provider_job_id=provider_job_id, fields=fields
    )
    # The provider's job id exists only here until recorded: a Redis blip must not drop it.
    outcome = await until_redis_answers(
        lambda: store.apply(job_id, update, source="submit", poll_in_ms=poll_in_ms), "provider job id", hold_s
    )
    if outcome == "terminal":
        # Canceled while the provider was being called: the provider's job must be stopped too.
        ended = await store.require(job_id)
        fields = {**ended.fields, "provider_job_id": provider_job_id, "account": account.name}
        await stop_at_provider(runtime, dataclasses.replace(ended, fields=fields))
    await _record_outcome(runtime, job.provider, account.name, failed=False)
    log.info(
        "job submitted",
        job_id=job_id,
        provider=job.provider,
        account=account.name,
        provider_job_id=provider_job_id,
        tries=claim.tries,
        outcome=outcome,
    )
    return "submitted"


def _callback_url(runtime: WorkerRuntime, job: Job) -> str | None:
    """Our callback URL for this job, when its provider calls back and we are reachable."""
    public_url = runtime.services.settings.public_url
    if public_url is None or webhook_provider(job.provider) is None:
        return None
    token = runtime.services.callback_tokens().issue(job.provider, job.id)
    return f"{public_url.rstrip('/')}/callbacks/{job.provider}/{token}"


async def _submit_failed(
    ctx: dict[str, Any], runtime: WorkerRuntime, job: Job, claim: SubmitClaim, exc: ProviderError
) -> str:
    store = runtime.services.store
    settings = runtime.services.settings
    account = claim.account or ""
    context = {"job_id": job.id, "provider": job.provider, "account": account, "status": exc.status}
    if exc.maybe_accepted:
        # Sent, no answer: the provider may have started (and billed) it. Never sent again blindly.
        await _record_outcome(runtime, job.provider, account, failed=True, error=str(exc))
        return await _uncertain(ctx, runtime, job.id, account, f"submit got no answer: {exc}")
    if exc.action is ProviderAction.RETRY and exc.status == 429:
        return await _too_many(ctx, runtime, job, claim, exc)
    if exc.action is ProviderAction.STOP_ACCOUNT:
        outcome, newly = await store.requeue_disabling(
            job.id, account, disable_reason=str(exc), message=str(exc)
        )
        log.error(
            "account disabled: fix it, then run `genrelay accounts enable NAME` (or wait for the probe)",
            error=str(exc),
            **context,
        )
        if newly:
            await _account_stopped_alerts(runtime, job.provider, account, exc)
        return outcome
    if exc.action is ProviderAction.RETRY and (exc.status is None or exc.status >= 500):
        breaker = await _record_outcome(runtime, job.provider, account, failed=True, error=str(exc))
        if breaker.paused:
            # The account is paused: this job waits for another account instead of retrying here.
            outcome = await store.requeue(
                job.id, account, cooldown_until_ms=breaker.until_ms, message=f"account paused: {exc}"
            )
            await _dispatch_when_cooled(ctx, job.provider, breaker.until_ms)
            log.warning(
                "submit failed on a paused account, requeued", outcome=outcome, error=str(exc), **context
            )
            return "paused"
    if exc.action is ProviderAction.RETRY and claim.tries < settings.submit_max_tries:
        delay = backoff_seconds(claim.tries, settings.retry_base, settings.retry_max, exc.retry_after)
        log.warning(
            "submit failed, will retry", error=str(exc), tries=claim.tries, delay_s=round(delay, 3), **context
        )
        await store.submit_attempt_ended(job.id)
        raise Retry(defer=delay)
    if exc.action is ProviderAction.RETRY:
        message = f"gave up after {claim.tries} submit attempts: {exc}"
    else:
        message = str(exc)
    update = Update(State.FAILED, message=message, error_type=exc.error_type or "submit_failed")
    outcome = await store.apply(job.id, update, source="submit")
    log.warning("job failed at submit", error=message, outcome=outcome, **context)
    return "failed"


async def _too_many(
    ctx: dict[str, Any], runtime: WorkerRuntime, job: Job, claim: SubmitClaim, exc: ProviderError
) -> str:
    """A 429 on submit: the job goes back to the head of the line. A concurrency 429 (the account's
    slots are all in use at the provider: someone else runs jobs on it) lowers the account's
    effective slot count by one (docs/slots.md "Learned capacity"); a rate 429 cools the account
    down for ``Retry-After``, or 1, 2, 4 ... ``GENRELAY_RETRY_MAX`` s by the job's tries without one."""
    store, settings = runtime.services.store, runtime.services.settings
    account = claim.account or ""
    context = {"job_id": job.id, "provider": job.provider, "account": account, "status": exc.status}
    if exc.retry_after is not None:
        wait = exc.retry_after
    else:
        wait = min(settings.retry_max, settings.retry_base * 2 ** max(0, claim.tries - 1))
    until_ms = int((time.time() + wait) * 1000)
    concurrency = exc.limit is Limit.CONCURRENCY
    outcome = await store.requeue(
        job.id, account, cooldown_until_ms=until_ms, message=str(exc), concurrency=concurrency
    )
    await _dispatch_when_cooled(ctx, job.provider, until_ms)
    # A 429 with a local slot free means the mirror is stale (someone else's jobs, lost leases).
    await request_reconcile(ctx.get("redis"), job.provider)
    if concurrency:
        # One learned slot comes back after a quiet period: its waiting jobs get it then.
        recovery_ms = int((time.time() + settings.capacity_recovery) * 1000)
        await _dispatch_when_cooled(ctx, job.provider, recovery_ms)
        log.warning("account busy elsewhere: effective slots lowered", outcome=outcome, **context)
        return "busy"
    log.warning("account cooling down", cooldown_s=round(wait, 3), outcome=outcome, **context)
    return "cooldown"


async def _record_outcome(
    runtime: WorkerRuntime, provider: str, account: str, *, failed: bool, error: str = ""
) -> BreakerState:
    """Count one submit outcome in the account's breaker (``daemon/breaker.py``); when this failure
    opens it, log it and alert the operator. A Redis error here is logged: the breaker never stops
    the submit path."""
    services = runtime.services
    breaker = Breaker(services.scripts, services.slots, services.settings.breaker_cooldown)
    try:
        state = await breaker.record(provider, account, failed=failed)
    except (RedisError, OSError) as exc:
        log.warning("breaker outcome not recorded", provider=provider, account=account, error=str(exc))
        return BreakerState("closed")
    if state.state == "open":
        seconds = services.settings.breaker_cooldown
        log.warning(
            "account breaker open: recent submits mostly failed, paused",
            provider=provider,
            account=account,
            paused_s=seconds,
            error=error,
        )
        await raise_alert(
            services.client,
            services.settings,
            BREAKER_OPEN,
            provider=provider,
            account=account,
            message=(
                f"most recent submits failed with a 5xx or no answer (last: {error}); "
                f"paused for {seconds:g} s"
            ),
            pausedUntil=state.until_ms,
        )
    return state


async def _account_stopped_alerts(
    runtime: WorkerRuntime, provider: str, account: str, exc: ProviderError
) -> None:
    services = runtime.services
    kinds = [ACCOUNT_DISABLED, *([CREDITS_LOW] if exc.status in credits_statuses(provider) else [])]
    for kind in kinds:
        await raise_alert(
            services.client,
            services.settings,
            kind,
            provider=provider,
            account=account,
            message=str(exc),
            status=exc.status,
        )


async def _interrupted(ctx: dict[str, Any], runtime: WorkerRuntime, job_id: str, claim: SubmitClaim) -> str:
    """A worker died while calling the provider (or lost the answer). The provider may have started
    the job (and billed it) or not: it is looked up before anything is sent again."""
    reason = f"the submission to account {claim.account} was interrupted (a worker stopped mid-call)"
    return await _uncertain(ctx, runtime, job_id, claim.account or "", reason)


async def _uncertain(
    ctx: dict[str, Any], runtime: WorkerRuntime, job_id: str, account: str, reason: str
) -> str:
    """A submit that may have been accepted. Where the provider's listing echoes our ref, the job
    keeps its slot in 'submitting' and the capacity sync decides: listed -> adopted, absent well
    after the attempt -> sent again. Elsewhere there is no way to tell, and the job fails saying so."""
    provider = provider_of(job_id) or ""
    if not lists_reply_refs(provider):
        await fail_uncertain(runtime, job_id, account)
        return "interrupted"
    outcome = await runtime.services.store.mark_uncertain(
        job_id, f"{reason}; looking for it at the provider before submitting again"
    )
    if outcome == "marked":
        await request_reconcile(ctx.get("redis"), provider, grace=runtime.services.settings.reconcile_grace)
    log.warning(
        "submission uncertain, reconciling", job_id=job_id, account=account, reason=reason, outcome=outcome
    )
    return "uncertain"


async def _dispatch_when_cooled(ctx: dict[str, Any], provider: str, until_ms: int) -> None:
    """Hand the cooled account's slots out when its cooldown ends (one task per provider and second)."""
    pool = ctx.get("redis")
    if pool is None:
        return
    second = until_ms // 1000 + 1
    await pool.enqueue_job(
        Task.DISPATCH_WAITING,
        provider,
        _job_id=f"dispatch:{provider}:{second}",
        _defer_until=datetime.fromtimestamp(second, UTC),
    )


async def dispatch_waiting(ctx: dict[str, Any], provider: str) -> int:
    """Give every free slot of ``provider`` to its waiting jobs (after a cooldown ends)."""
    runtime: WorkerRuntime = ctx[RUNTIME]
    if provider not in runtime.services.settings.providers() or not arq_id(ctx).startswith(
        f"dispatch:{provider}:"
    ):
        await refuse(runtime.services.client, Task.DISPATCH_WAITING, ctx, "not scheduled by genrelay")
        return 0
    expired = await runtime.services.slots.sweep(provider, limit=0)
    # Learned slots come back one per quiet period: the next one's waiting jobs get it when it does.
    learned_due = keys.provider_keys(provider).learned_due
    nxt = await runtime.services.client.zrange(learned_due, 0, 0, withscores=True)
    if nxt:
        await _dispatch_when_cooled(ctx, provider, int(nxt[0][1]))
    return len(expired)
