"""The job store: create, read, list and update jobs in Redis, every change through a script."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog

from daemon import keys
from daemon.assets import artifact_fields
from daemon.errors import InvalidRequest, NotFound
from daemon.input_limits import check_reply_url
from daemon.jobs import Job, JobRequest, State, Update, new_job_id
from daemon.providers import get_provider
from daemon.scripts import Scripts
from daemon.settings import Settings
from daemon.slots import EVENTS_MAXLEN, SlotAllocator

log = structlog.get_logger("genrelay.jobs")

MAX_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class Created:
    job_id: str
    created: bool  # False: the request id was seen before and this is the existing job
    dispatched: bool  # a slot was free and the submission is on its way


@dataclass(frozen=True, slots=True)
class SubmitClaim:
    outcome: str  # go | interrupted | skip | requeued | missing
    account: str | None = None
    tries: int = 0
    state: str | None = None


@dataclass(frozen=True, slots=True)
class PollBatch:
    now_ms: int
    next_due_ms: int | None
    due: list[tuple[str, int]]  # (job id, due ms)


class JobStore:
    """Job records and their transitions; see ``lua/transition.lua`` for the rules."""

    def __init__(self, client: aioredis.Redis, scripts: Scripts, slots: SlotAllocator) -> None:
        self.client = client
        self.scripts = scripts
        self.slots = slots

    @property
    def settings(self) -> Settings:
        return self.slots.settings

    def check(self, request: JobRequest) -> None:
        """Refuse a request genrelay cannot run, with a message that says what to change."""
        configured = self.settings.providers()
        if request.provider not in configured:
            raise InvalidRequest(
                f"unknown provider {request.provider!r}: configured providers are {', '.join(configured)}"
            )
        operations = get_provider(request.provider).operations
        if request.operation not in operations:
            raise InvalidRequest(
                f"unknown operation {request.operation!r} for {request.provider}: "
                f"use one of {', '.join(sorted(operations))}"
            )
        if request.account and self.settings.account(request.provider, request.account) is None:
            raise InvalidRequest(f"no {request.provider} account named {request.account!r}")
        check_reply_url(request.reply_url, self.settings.delivery_allow_private)

    async def create(self, request: JobRequest, job_id: str | None = None) -> Created:
        """Store the job and dispatch it if a slot is free; idempotent on the request id (or on
        ``job_id``, which an app enqueuing through Redis chooses itself)."""
        self.check(request)
        if job_id is None:
            job_id = new_job_id(request.provider, request.request_id)
        elif keys.provider_of(job_id) != request.provider:
            raise InvalidRequest(f"job id {job_id!r} must look like '{request.provider}-<32 hex digits>'")
        fields = {
            "id": job_id,
            "provider": request.provider,
            "operation": request.operation,
            "params": orjson.dumps(request.params).decode(),
            "pinned": request.account or "",
            "reply_url": request.reply_url or "",
            "reply_ref": request.reply_ref or "",
            "priority": str(request.priority),
            "request_id": request.request_id or "",
            "notify_progress": "1" if request.notify_progress else "",
            "archive_notify": "1"
            if (request.archive or self.settings.archive.notify) == "before-notify"
            else "",
        }
        # Fields left empty are not stored: a record of a plain job stays small (readers default them).
        fields = {name: value for name, value in fields.items() if value}
        scope = self.slots.scope(request.provider)
        result = await self.scripts.create_job(
            keys=scope.keys_with(keys.job_key(job_id)),
            args=[scope.config(), orjson.dumps(fields), request.account or "", request.priority],
        )
        created = Created(job_id=job_id, created=result[0] != "exists", dispatched=result[0] == "dispatched")
        if created.created:
            log.info("job queued", job_id=job_id, provider=request.provider, dispatched=created.dispatched)
        return created

    async def reject(self, job_id: str, body: object, message: str) -> str:
        """Record a request that arrived through Redis and was invalid, as a failed job, so the app
        waiting on it learns why; only when no job has that id (``lua/reject_job.lua``), and nothing
        else (slots, queues) is touched. Returns ``rejected`` or ``exists``."""
        provider = keys.provider_of(job_id)
        if provider is None:
            return "exists"
        operation = body.get("operation") if isinstance(body, dict) else None
        fields = {
            "id": job_id,
            "provider": provider,
            "operation": operation[:200] if isinstance(operation, str) else "",
            "params": "{}",
            "state": State.FAILED.value,
            "message": f"invalid request: {message}",
            "error_type": "invalid_request",
            "ended_by": "api",
        }
        outcome = str(
            await self.scripts.reject_job(
                keys=[keys.job_key(job_id), keys.events_key(provider)],
                args=[orjson.dumps(fields), int(self.settings.job_retention), EVENTS_MAXLEN],
            )
        )
        log.warning("job rejected", job_id=job_id, provider=provider, error=message, outcome=outcome)
        return outcome

    async def get(self, job_id: str) -> Job | None:
        if keys.provider_of(job_id) is None:
            return None
        fields = await self.client.hgetall(keys.job_key(job_id))
        return Job(fields) if fields else None

    async def require(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (unknown, or expired after its retention period)")
        return job

    async def list_jobs(
        self, *, state: str | None, provider: str | None, page: int, limit: int
    ) -> tuple[list[Job], int]:
        """Newest first; returns one page and the total count matching the filters."""
        providers = [provider] if provider else list(self.settings.providers())
        index_keys = [self._index_key(p, state) for p in providers]
        start, stop = (page - 1) * limit, page * limit - 1
        async with self.client.pipeline(transaction=False) as pipe:
            for key in index_keys:
                pipe.zcard(key)
            counts: list[int] = await pipe.execute()
        total = sum(counts)
        if start >= total:
            return [], total  # past the end: nothing is read
        if len(index_keys) == 1:
            # One index: Redis pages it (O(log n + limit)), however deep the page.
            rows = await self.client.zrevrange(index_keys[0], start, stop)
            ids = list(rows)
        else:
            # Several: the top page*limit of each (bounded by what each holds), merged by score.
            async with self.client.pipeline(transaction=False) as pipe:
                for key, count in zip(index_keys, counts, strict=True):
                    pipe.zrevrange(key, 0, min(stop, count - 1), withscores=True)
                results = await pipe.execute()
            merged = sorted((entry for rows in results for entry in rows), key=lambda e: -e[1])
            ids = [job_id for job_id, _ in merged[start : stop + 1]]
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keys.job_key(job_id))
            records = await pipe.execute()
        return [Job(r) for r in records if r], total

    @staticmethod
    def _index_key(provider: str, state: str | None) -> str:
        pk = keys.provider_keys(provider)
        return pk.state(state) if state else pk.index

    async def claim_submit(self, job_id: str, attempt: str = "") -> SubmitClaim:
        """The write-ahead claim; ``attempt`` (one token per submit attempt) makes a resent call of the
        same attempt (its reply was lost) 'go' again instead of 'interrupted'."""
        scope = self.slots.scope(keys.provider_of(job_id) or "")
        r = await self.scripts.claim_submit(
            keys=scope.keys_with(keys.job_key(job_id)), args=[scope.config(), attempt]
        )
        if r[0] == "go":
            return SubmitClaim("go", account=r[1], tries=int(r[2]), state=r[3])
        if r[0] == "interrupted":
            return SubmitClaim("interrupted", account=r[1], tries=int(r[2]), state="submitting")
        return SubmitClaim(r[0], state=r[1] if len(r) > 1 else None)

    async def apply(self, job_id: str, update: Update, *, source: str, poll_in_ms: int = 0) -> str:
        """Apply one update through the transition script; returns its outcome (applied, duplicate, ...)."""
        scope = self.slots.scope(keys.provider_of(job_id) or "")
        # A completion records the job's asset in the same script (see daemon/assets.py).
        asset = b""
        if update.state is State.COMPLETED and update.artifact and not update.confirm:
            asset = orjson.dumps(artifact_fields(update.artifact))
        r = await self.scripts.transition(
            keys=scope.keys_with(
                keys.job_key(job_id),
                keys.asset_index_key(scope.provider),
                keys.asset_key_prefix(scope.provider),
            ),
            args=[
                scope.config(),
                update.to_json(),
                poll_in_ms,
                source,
                asset,
                int(self.settings.asset_retention * 1000),
            ],
        )
        outcome = str(r[0])
        if outcome == "applied":
            log.info(
                "job " + update.state.value,
                job_id=job_id,
                provider=scope.provider,
                account=r[2] if len(r) > 2 else None,
                source=source,
                progress=update.progress,
                message=update.message,
            )
        return outcome

    async def submit_attempt_ended(self, job_id: str) -> None:
        """The provider call ended (with an error worth retrying): a rerun is not an interruption."""
        await self.client.hset(keys.job_key(job_id), "submit_open", "0")

    async def mark_uncertain(self, job_id: str, message: str) -> str:
        """The submit may have been accepted (sent, no answer): keep the job in 'submitting' with its
        lease until the capacity sync finds it or rules it out (``lua/mark_uncertain.lua``)."""
        scope = self.slots.scope(keys.provider_of(job_id) or "")
        r = await self.scripts.mark_uncertain(
            keys=scope.keys_with(keys.job_key(job_id)), args=[scope.config(), message]
        )
        return str(r[0])

    async def requeue(
        self,
        job_id: str,
        account: str,
        *,
        cooldown_until_ms: int = 0,
        disable_reason: str = "",
        message: str,
        concurrency: bool = False,
    ) -> str:
        """Give the slot back and put the job in line again (``lua/requeue.lua``). ``concurrency``: the
        provider answered that every slot of the account is in use, which lowers the account's
        effective slot count instead of cooling it down (down to one; then the cooldown applies)."""
        outcome, _ = await self.requeue_disabling(
            job_id,
            account,
            cooldown_until_ms=cooldown_until_ms,
            disable_reason=disable_reason,
            message=message,
            concurrency=concurrency,
        )
        return outcome

    async def requeue_disabling(
        self,
        job_id: str,
        account: str,
        *,
        cooldown_until_ms: int = 0,
        disable_reason: str = "",
        message: str,
        concurrency: bool = False,
    ) -> tuple[str, bool]:
        """``requeue``, and whether this call disabled an account that was enabled until now (so
        the one caller that did it raises the alert, whatever the number of jobs that failed)."""
        scope = self.slots.scope(keys.provider_of(job_id) or "")
        r = await self.scripts.requeue(
            keys=scope.keys_with(keys.job_key(job_id)),
            args=[
                scope.config(),
                account,
                cooldown_until_ms,
                disable_reason,
                message,
                "1" if concurrency else "0",
            ],
        )
        outcome = str(r[0])
        return outcome, outcome in ("requeued", "failed") and len(r) > 1 and str(r[1]) == "1"

    async def poll_failed(self, job_id: str, message: str, *, retry_after_ms: int = 0) -> str:
        scope = self.slots.scope(keys.provider_of(job_id) or "")
        s = self.settings
        r = await self.scripts.poll_failed(
            keys=scope.keys_with(keys.job_key(job_id)),
            args=[
                scope.config(),
                int(s.retry_base * 1000),
                int(s.retry_max * 1000),
                s.poll_max_errors,
                message,
                retry_after_ms,
                random.randrange(1001),
            ],
        )
        return str(r[0])

    async def claim_polls(
        self, provider: str, batch: int, claim_ms: int, abandoned: bool = True
    ) -> PollBatch:
        """Due polls, at most ``batch``, each held for ``claim_ms`` (a claim a dead worker left is
        due again then); ``abandoned``: also give back the expired claims a process of the previous
        slot layout left in 'polling'. Due is judged by this process's clock: a skew between hosts
        only moves a poll by as much."""
        pk = keys.provider_keys(provider)
        now_ms = int(time.time() * 1000)
        r = await self.scripts.claim_polls(
            keys=[pk.polls, pk.polling], args=[batch, claim_ms, now_ms, "1" if abandoned else "0"]
        )
        due = [(r[i], int(float(r[i + 1]))) for i in range(2, len(r), 2)]
        return PollBatch(now_ms=int(r[0]), next_due_ms=int(float(r[1])) if r[1] else None, due=due)

    async def reschedule(self, provider: str, job_ids: list[str], delay_ms: int) -> int:
        if not job_ids:
            return 0
        scope = self.slots.scope(provider)
        done: int = await self.scripts.reschedule_polls(
            keys=scope.keys_with(*(keys.job_key(j) for j in job_ids)),
            args=[scope.config(), delay_ms, *job_ids],
        )
        return done

    async def fail_timed_out(self, job_id: str, lease_ttl: float) -> str:
        update = Update(
            State.FAILED,
            message=f"timed out: no sign of life for {lease_ttl:g} s (lease expired)",
            error_type="timeout",
        )
        return await self.apply(job_id, update, source="sweep")

    async def events_since(
        self, provider: str, last_id: str, block_ms: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """Entries of the provider's events stream after ``last_id``, waiting up to ``block_ms``."""
        reply = await self.client.xread({keys.events_key(provider): last_id}, block=block_ms, count=500)
        return [(entry_id, fields) for _, entries in reply for entry_id, fields in entries]
