"""Polling without one arq job per poll.

The poll schedule is a sorted set per provider (job -> due time, ms). Each worker runs one
``Poller`` per provider: it claims due polls in batches with ``claim_polls.lua`` (a job is held by
one worker at a time; a claim left by a dead worker comes back when it expires), reads the job
records in one pipeline, runs the status reads concurrently over the process's shared session
with a bound per account, applies what changed, and reschedules what did not in one script call.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

import structlog

from daemon import keys
from daemon.errors import ProviderAction, ProviderError
from daemon.jobs import TERMINAL, Job, State, Update
from daemon.metrics import METRICS
from daemon.providers import get_provider
from daemon.request_budget import BudgetExhausted, RequestBudget, attach
from workers.runtime import WorkerRuntime

log = structlog.get_logger("genrelay.poll")

# Longest idle wait between claims; a newly scheduled poll is due no sooner than the poll interval.
MAX_IDLE_S = 1.0
# Shortest wait between claims that did not come back full (a tenth of the poll interval when that
# is shorter): polls due within it are taken together, at that much lateness.
MIN_CLAIM_GAP_S = 0.05
# How often a poller also gives back the claims that processes of the previous slot layout left in
# its zset of claims ('polling'; layout 3 keeps claims in the schedule, where they come back alone).
ABANDONED_EVERY_S = 5.0


@dataclass(slots=True)
class PollStats:
    polls: int = 0
    changed: int = 0
    errors: int = 0
    lateness_ms: list[int] = field(default_factory=list)

    def record_lateness(self, ms: int) -> None:
        if len(self.lateness_ms) < 100_000:
            self.lateness_ms.append(ms)


class Poller:
    """Follows one provider's active jobs until they end."""

    def __init__(self, runtime: WorkerRuntime, provider: str) -> None:
        self.runtime = runtime
        self.provider = provider
        self.adapter = get_provider(provider)
        settings = runtime.services.settings
        self.interval_ms = int(settings.poll_interval * 1000)
        # A claim a dead worker left comes back after this; one that outlives a slow status read
        # only costs a second, harmless read (updates are idempotent).
        self.claim_ms = int(settings.job_timeout * 1000)
        self.batch = settings.poll_batch
        self.in_flight_limit = settings.poll_batch
        self.account_limits: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(settings.poll_concurrency)
        )
        self.in_flight: set[asyncio.Task[None]] = set()
        self.unchanged: list[str] = []
        self.wake = asyncio.Event()
        self.stats = PollStats()
        # Providers that limit requests per window (vydra) take every request from a budget
        # shared through Redis; it rides on the process's provider session.
        services = runtime.services
        self.budget = RequestBudget(services.client, services.scripts)
        attach(runtime.session, self.budget)

    async def run(self) -> None:
        store = self.runtime.services.store
        stopping = self.runtime.stopping
        loop = asyncio.get_running_loop()
        # When a claim may find something: at once while claims come back full, else at the next
        # poll due, and no later than the poll interval (a poll scheduled meanwhile is due no
        # sooner) or MAX_IDLE_S (a callback's hint makes a poll due now). A finished status read
        # wakes the loop to flush what it read, not to claim again.
        next_claim = loop.time()
        next_abandoned_check = next_claim
        min_gap_s = min(MIN_CLAIM_GAP_S, self.interval_ms / 10_000)
        while not stopping.is_set():
            self.wake.clear()
            await self._flush_unchanged()
            free = self.in_flight_limit - len(self.in_flight)
            if free > 0 and loop.time() >= next_claim:
                want = min(free, self.batch)
                abandoned = loop.time() >= next_abandoned_check
                if abandoned:
                    next_abandoned_check = loop.time() + ABANDONED_EVERY_S
                batch = await store.claim_polls(self.provider, want, self.claim_ms, abandoned=abandoned)
                if batch.due:
                    await self._start(batch.now_ms, batch.due)
                if len(batch.due) == want:
                    continue  # more may be due right now
                wait_s = min(MAX_IDLE_S, self.interval_ms / 1000)
                if batch.next_due_ms is not None:
                    wait_s = min(wait_s, max(0.0, (batch.next_due_ms - batch.now_ms) / 1000))
                next_claim = loop.time() + max(wait_s, min_gap_s)
            timeout = max(0.0, next_claim - loop.time()) if free > 0 else MAX_IDLE_S
            if timeout > 0 and not self.unchanged:
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except TimeoutError:
                    pass
        await asyncio.gather(*self.in_flight, return_exceptions=True)
        await self._flush_unchanged()

    async def _start(self, now_ms: int, due: list[tuple[str, int]]) -> None:
        client = self.runtime.services.client
        async with client.pipeline(transaction=False) as pipe:
            for job_id, _ in due:
                pipe.hgetall(keys.job_key(job_id))
            records = await pipe.execute()
        gone: list[str] = []
        for (job_id, due_ms), fields in zip(due, records, strict=True):
            if not fields or State(fields["state"]) in TERMINAL:
                gone.append(job_id)
                continue
            self.stats.record_lateness(max(0, now_ms - due_ms))
            METRICS.observe_poll_lateness(self.provider, max(0, now_ms - due_ms))
            task = asyncio.create_task(self._poll(Job(fields)))
            self.in_flight.add(task)
            task.add_done_callback(self._done)
        if gone:
            await client.zrem(keys.provider_keys(self.provider).polls, *gone)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("poll crashed", provider=self.provider, error=repr(task.exception()))

    async def _poll(self, job: Job) -> None:
        store = self.runtime.services.store
        account = self.runtime.account(job.provider, job.account)
        self.stats.polls += 1
        try:
            if account is None or job.provider_job_id is None:
                raise ProviderError(
                    f"cannot poll: account {job.account!r} is not configured or no provider job id",
                    action=ProviderAction.RETRY,
                )
            async with self.account_limits[account.name]:
                update = await self.adapter.status(self.runtime.session, account, job)
        except BudgetExhausted as exc:
            # Not sent, so not an error: the poll waits for the account's budget.
            await self.budget.postpone_poll(self.provider, job.id, exc)
            return
        except ProviderError as exc:
            self.stats.errors += 1
            retry_ms = int((exc.retry_after or 0) * 1000)
            outcome = await store.poll_failed(job.id, str(exc), retry_after_ms=retry_ms)
            log.warning(
                "status read failed",
                job_id=job.id,
                provider=job.provider,
                account=job.account,
                error=str(exc),
                outcome=outcome,
            )
            return
        if _unchanged(job, update):
            self.unchanged.append(job.id)
            return
        self.stats.changed += 1
        outcome = await store.apply(job.id, update, source="poll", poll_in_ms=self.interval_ms)
        if outcome != "applied":
            # Nothing moved (e.g. 'completed' without its artifact yet): poll again on schedule.
            self.unchanged.append(job.id)

    async def _flush_unchanged(self) -> None:
        if not self.unchanged:
            return
        batch, self.unchanged = self.unchanged, []
        await self.runtime.services.store.reschedule(self.provider, batch, self.interval_ms)


def _unchanged(job: Job, update: Update) -> bool:
    if update.state is not job.state or job.state is not State.ACTIVE:
        return False
    return (update.progress or 0) <= int(job.fields.get("progress") or 0) and update.artifact is None


async def poll_forever(runtime: WorkerRuntime, provider: str) -> None:
    """Run a poller, restarting it after an unexpected error (a Redis outage, say)."""
    while not runtime.stopping.is_set():
        poller = Poller(runtime, provider)
        try:
            await poller.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("poller stopped, restarting", provider=provider, error=repr(exc))
            try:
                await asyncio.wait_for(runtime.stopping.wait(), 1.0)
            except TimeoutError:
                pass
