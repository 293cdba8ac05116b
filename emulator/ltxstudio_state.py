"""What the useapi.net LTX Studio emulator remembers: accounts per API token, jobs, and the
callbacks they will get (docs/providers.md §1.2–§1.5).

Choices where the documents are silent ([I]):

* retention: a job answers ``404 Job not found or has expired`` ``retention_seconds`` after it
  ends (the same knob as the LTX part; useapi publishes no number);
* cancel (``DELETE scheduler/{jobId}``): useapi "no longer tracks" the job, so it is forgotten at
  once: its slot frees, its pending callbacks are void, and ``GET assets/{jobId}`` answers 404;
* ``submissions_by_ref`` counts accepted submissions only: a submit refused with 429 created
  nothing, and the invariant "at most one submission per replyRef" (docs/fault-scenarios.md, H6)
  is about jobs.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from emulator.config import EmulatorConfig
from emulator.ltx_state import EmulatorState
from emulator.ltxstudio_models import (
    StudioAccount,
    StudioJob,
    scheduler_entry,
    status_model,
    with_envelope,
)
from emulator.webhooks import Delivery, WebhookDispatcher

# Progress callbacks (knob webhook_progress) report the job at these fractions of its run; the
# reorder knob replays the STALE_FRACTION one after the terminal callback.
PROGRESS_FRACTIONS = (0.0, 0.5)
STALE_FRACTION = 0.5


class StudioState:
    """Accounts, jobs and callbacks of the useapi.net LTX Studio contract.

    It reads knobs, clock and random source from the shared ``EmulatorState`` on every use, so
    ``POST /_emulator/config`` and a test's fake clock act here too.
    """

    def __init__(self, emulator: EmulatorState) -> None:
        self.emulator = emulator
        self.webhooks = WebhookDispatcher(emulator.clock, lambda: emulator.config, emulator.rng)
        self.accounts: dict[str, dict[str, StudioAccount]] = {}
        self.jobs: dict[str, StudioJob] = {}
        self.submissions_by_ref: Counter[str] = Counter()
        self._expiry: list[tuple[float, str]] = []
        self._load_accounts()

    @property
    def config(self) -> EmulatorConfig:
        return self.emulator.config

    def now(self) -> float:
        return self.emulator.clock()

    def token_accounts(self, token: str) -> dict[str, StudioAccount] | None:
        return self.accounts.get(token)

    def register(self, token: str, email: str, max_jobs: int) -> None:
        """Add or update an account; ValueError when another token already has this email."""
        for other, emails in self.accounts.items():
            if other != token and email in emails:
                raise ValueError(f"account {email} is configured under another token")
        found = self.accounts.setdefault(token, {}).get(email)
        if found is None:
            self.accounts[token][email] = StudioAccount(token, email, max_jobs)
        else:
            found.max_jobs = max_jobs

    def submit(
        self, account: StudioAccount, kind: str, prompt: str, cap: int, reply: tuple[str | None, str | None]
    ) -> StudioJob | None:
        """A new job, or None (counted as a 429) when ``cap`` jobs are already executing."""
        now = self.now()
        self._drop_expired(now)
        executing = account.executing(now)
        if executing >= cap:
            account.rejected_429 += 1
            return None
        job = self._new_job(account, kind, prompt, now, reply)
        self.jobs[job.job_id] = job
        account.live[job.job_id] = job
        heapq.heappush(self._expiry, (job.end, job.job_id))
        account.submitted += 1
        account.peak = max(account.peak, executing + 1)
        if job.reply_ref is not None:
            self.submissions_by_ref[job.reply_ref] += 1
        return job

    def lookup(self, token: str, job_id: str) -> StudioJob | None:
        """The token's job while retained; anyone else's job does not exist."""
        self._drop_expired(self.now())
        job = self.jobs.get(job_id)
        return job if job is not None and job.token == token else None

    def read_status(self, job: StudioJob) -> dict[str, Any]:
        """A status read: counts the poll and spends one "completed without artifact" read."""
        now = self.now()
        self.accounts[job.token][job.email].polls += 1
        with_artifact = True
        if job.status_at(now) == "completed" and job.artifact_lag > 0:
            job.artifact_lag -= 1
            with_artifact = False
        return status_model(job, now, self.config.public_base, with_artifact=with_artifact)

    def cancel(self, token: str, job_id: str) -> bool:
        """Stop tracking a running job: slot freed, callbacks void, job forgotten."""
        job = self.lookup(token, job_id)
        if job is None or job.end <= self.now():
            return False
        del self.jobs[job_id]
        self.accounts[token][job.email].live.pop(job_id, None)
        self.webhooks.cancel(job_id)
        return True

    def executing(self, token: str) -> list[dict[str, Any]]:
        """``GET scheduler``: the token's running jobs, oldest first (``executing``,
        docs/providers.md §1.5)."""
        now = self.now()
        running: list[StudioJob] = []
        for account in self._accounts_of(token):
            account.executing(now)  # prunes the finished ones
            running.extend(account.live.values())
        return [scheduler_entry(job, now) for job in sorted(running, key=lambda job: job.start)]

    def available(self, token: str) -> list[dict[str, Any]]:
        now = self.now()
        listed = []
        for account in self._accounts_of(token):
            executing = account.executing(now)
            listed.append(
                {
                    "email": account.email,
                    "maxJobs": account.max_jobs,
                    "executing": executing,
                    "available": max(0, account.max_jobs - executing),
                }
            )
        return listed

    def finished_assets(self, account: StudioAccount, kinds: frozenset[str]) -> list[StudioJob]:
        """Completed jobs of the account with one of ``kinds``, newest first."""
        now = self.now()
        self._drop_expired(now)
        found = [
            job
            for job in self.jobs.values()
            if job.token == account.token
            and job.email == account.email
            and job.kind in kinds
            and job.status_at(now) == "completed"
        ]
        return found[::-1]  # jobs are kept in submit order

    def callbacks(self, job: StudioJob) -> list[Delivery]:
        """The callbacks a new job will get, in order, as the knobs stand at submit time."""
        if job.reply_url is None:
            return []
        config, base = self.config, self.config.public_base
        planned = []
        if config.webhook_progress and job.duration > 0:
            for fraction in PROGRESS_FRACTIONS:
                at = job.start + fraction * job.duration
                planned.append(self._delivery(job, at, status_model(job, at, base), "progress"))
        terminal = status_model(
            job, job.end, base, with_artifact=config.completed_without_artifact_reads == 0
        )
        planned.append(self._delivery(job, job.end, terminal, "terminal"))
        if config.webhook_reorder:
            stale = with_envelope(job, {"type": "active", "progress": int(STALE_FRACTION * 100)})
            planned.append(self._delivery(job, job.end, stale, "stale"))
        return planned

    def submit_snapshot(self, job: StudioJob) -> Delivery:
        """A callback with the job as it is at submit time (active, progress 0, unless instant)."""
        body = status_model(job, job.start, self.config.public_base)
        return self._delivery(job, job.start, body, "progress")

    def reset(self) -> None:
        self.jobs.clear()
        self._expiry.clear()
        self.submissions_by_ref.clear()
        self.webhooks.reset()
        self._load_accounts()

    def stats(self) -> dict[str, Any]:
        now = self.now()
        return {
            "useapi_accounts": {
                account.email: account.to_json(now)
                for emails in self.accounts.values()
                for account in emails.values()
            },
            "submissions_by_ref": dict(self.submissions_by_ref),
            "callbacks": self.webhooks.stats(),
        }

    def _accounts_of(self, token: str) -> Iterable[StudioAccount]:
        return self.accounts.get(token, {}).values()

    def _delivery(self, job: StudioJob, at: float, body: dict[str, Any], kind: str) -> Delivery:
        assert job.reply_url is not None
        return Delivery(job.job_id, job.reply_url, job.reply_ref, body, at, kind)

    def _new_job(
        self, account: StudioAccount, kind: str, prompt: str, now: float, reply: tuple[str | None, str | None]
    ) -> StudioJob:
        duration, error_type = self.emulator.plan(prompt)
        rng = self.emulator.rng
        job_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return StudioJob(
            job_id=f"email:{account.email}-job:{job_uuid}-type:{kind}",
            uuid=job_uuid,
            generation_id=f"gen_{rng.getrandbits(96):024x}",
            token=account.token,
            email=account.email,
            kind=kind,
            start=now,
            duration=duration,
            error_type=error_type,
            wall_start=time.time(),
            reply_url=reply[0],
            reply_ref=reply[1],
            artifact_lag=self.config.completed_without_artifact_reads,
        )

    def _drop_expired(self, now: float) -> None:
        expiry, retention = self._expiry, self.config.retention_seconds
        while expiry and expiry[0][0] + retention <= now:
            _, job_id = heapq.heappop(expiry)
            self.jobs.pop(job_id, None)

    def _load_accounts(self) -> None:
        self.accounts = {
            token: {email: StudioAccount(token, email, max_jobs) for email, max_jobs in emails.items()}
            for token, emails in self.config.useapi_accounts.items()
        }


STUDIO_KEY = web.AppKey("emulator_ltxstudio", StudioState)
