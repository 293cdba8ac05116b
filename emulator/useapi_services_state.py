"""What the emulator remembers of the Kling, MiniMax, PixVerse and Runway contracts: accounts per
service and API token, jobs, and the callbacks they will get (``emulator/useapi_contracts.py``).

Choices where the documents are silent ([I]): a job is readable ``retention_seconds`` after its end
(the knob the other contracts use); ``submissions_by_ref`` counts accepted submissions only, as in
the LTX Studio part; an account with no ``maxJobs`` slot free answers 429 ``API query is full``.
"""

from __future__ import annotations

import heapq
import itertools
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from emulator.config import EmulatorConfig
from emulator.ltx_state import EmulatorState
from emulator.useapi_contracts import CONTRACTS, PROGRESS_FRACTIONS, Contract, ServiceJob, new_id
from emulator.webhooks import Delivery, WebhookDispatcher

FIRST_NUMBER = 310_000_000  # Kling's task ids are 9-digit numbers
_MARKERS = {"[moderated-later]": "moderated", "[removed]": "removed"}
_UID = re.compile(r"user:(\d+)")


@dataclass(slots=True)
class ServiceAccount:
    service: str
    token: str
    name: str  # the email (Kling, PixVerse, Runway) or MiniMax account id
    max_jobs: int
    counts_kind: frozenset[str]
    peak: int = 0  # the most jobs of any kind it ran at once
    submitted: int = 0
    rejected_429: int = 0
    polls: int = 0
    live: dict[str, ServiceJob] = field(default_factory=dict)  # tracked jobs that may still run

    def executing(self, now: float, *, counted_only: bool = False) -> int:
        for job_id in [job_id for job_id, job in self.live.items() if job.end <= now]:
            del self.live[job_id]
        if counted_only:
            return sum(1 for job in self.live.values() if job.kind in self.counts_kind)
        return len(self.live)

    def to_json(self, now: float) -> dict[str, int]:
        return {
            "max_jobs": self.max_jobs,
            "executing": self.executing(now),
            "peak": self.peak,
            "submitted": self.submitted,
            "rejected_429": self.rejected_429,
            "polls": self.polls,
        }


class ServicesState:
    """Accounts, jobs and callbacks of the four services; knobs, clock and random source are read
    from the shared ``EmulatorState`` on every use."""

    def __init__(self, emulator: EmulatorState) -> None:
        self.emulator = emulator
        self.webhooks = WebhookDispatcher(emulator.clock, lambda: emulator.config, emulator.rng)
        self.accounts: dict[str, dict[str, dict[str, ServiceAccount]]] = {}
        self.jobs: dict[str, dict[str, ServiceJob]] = {name: {} for name in CONTRACTS}
        self.submissions_by_ref: dict[str, Counter[str]] = {name: Counter() for name in CONTRACTS}
        self._numbers = itertools.count(FIRST_NUMBER)
        self._expiry: list[tuple[float, str, str]] = []
        self._load_accounts()

    @property
    def config(self) -> EmulatorConfig:
        return self.emulator.config

    def now(self) -> float:
        return self.emulator.clock()

    def token_accounts(self, service: str, token: str) -> dict[str, ServiceAccount] | None:
        return self.accounts.get(service, {}).get(token)

    def known_token(self, token: str) -> bool:
        return any(token in tokens for tokens in self.accounts.values())

    def register(self, service: str, token: str, name: str, max_jobs: int) -> None:
        """Add or update an account; ValueError when another token of the service already has it."""
        tokens = self.accounts.setdefault(service, {})
        for other, names in tokens.items():
            if other != token and name in names:
                raise ValueError(f"{service} account {name} is configured under another token")
        found = tokens.setdefault(token, {}).get(name)
        if found is None:
            counts = CONTRACTS[service].counts_kind
            tokens[token][name] = ServiceAccount(service, token, name, max_jobs, counts)
        else:
            found.max_jobs = max_jobs

    def has_room(self, account: ServiceAccount, kind: str, cap: int) -> bool:
        if kind not in account.counts_kind:
            return True  # MiniMax images take none of the video capacity
        return account.executing(self.now(), counted_only=True) < cap

    def submit(
        self,
        contract: Contract,
        account: ServiceAccount,
        kind: str,
        prompt: str,
        cap: int,
        reply: tuple[str | None, str | None],
    ) -> ServiceJob | None:
        """A new job, or None (counted as a 429) when ``cap`` jobs it counts are executing."""
        now = self.now()
        self._drop_expired(now)
        if not self.has_room(account, kind, cap):
            account.rejected_429 += 1
            return None
        duration, error_type = self.emulator.plan(prompt)
        fate = next((fate for marker, fate in _MARKERS.items() if marker in prompt), None)
        if fate is None and error_type is not None:
            fate = "failed"
        number = next(self._numbers)
        match = _UID.match(account.token)
        uid, opaque = (match.group(1) if match else "1"), self.config.useapi_opaque_ids
        job = ServiceJob(
            service=contract.service,
            job_id=new_id(contract, uid, account.name, kind, number, opaque=opaque),
            number=number,
            token=account.token,
            account=account.name,
            kind=kind,
            start=now,
            duration=duration,
            fate=fate,
            wall_start=time.time(),
            reply_url=reply[0],
            reply_ref=reply[1],
            throttled="[throttled]" in prompt,
        )
        self.jobs[contract.service][job.job_id] = job
        account.live[job.job_id] = job
        heapq.heappush(self._expiry, (job.end, contract.service, job.job_id))
        account.submitted += 1
        account.peak = max(account.peak, account.executing(now))
        if job.reply_ref is not None:
            self.submissions_by_ref[contract.service][job.reply_ref] += 1
        return job

    def lookup(self, service: str, token: str, job_id: str) -> ServiceJob | None:
        self._drop_expired(self.now())
        job = self.jobs[service].get(job_id)
        return job if job is not None and job.token == token else None

    def read(self, contract: Contract, job: ServiceJob) -> dict[str, Any] | None:
        self.accounts[job.service][job.token][job.account].polls += 1
        return contract.status(job, self.now(), self.config.public_base)

    def stop_tracking(self, service: str, token: str, job_id: str) -> bool:
        """``DELETE scheduler/{id}``: slot freed and callbacks void; the job itself runs on."""
        job = self.lookup(service, token, job_id)
        if job is None or not job.tracked or job.end <= self.now():
            return False
        job.tracked = False
        self.accounts[service][token][job.account].live.pop(job_id, None)
        self.webhooks.cancel(job_id)
        return True

    def executing(self, service: str, token: str) -> list[ServiceJob]:
        now = self.now()
        running: list[ServiceJob] = []
        for account in self.accounts.get(service, {}).get(token, {}).values():
            account.executing(now)
            running.extend(account.live.values())
        return sorted(running, key=lambda job: job.start)

    def available(self, contract: Contract, token: str) -> list[dict[str, Any]]:
        now = self.now()
        listed = []
        for account in self.accounts.get(contract.service, {}).get(token, {}).values():
            executing = account.executing(now, counted_only=True)
            listed.append(
                {
                    contract.available_field or "email": account.name,
                    "maxJobs": account.max_jobs,
                    "executing": executing,
                    "available": max(0, account.max_jobs - executing),
                }
            )
        return sorted(listed, key=lambda entry: -int(entry["available"]))

    def schedule_callbacks(self, contract: Contract, job: ServiceJob) -> None:
        """Kling: progress, then the result; the others: the result only ("completed or failed"),
        and progress too with the knob ``webhook_progress`` (MiniMax's first page described it)."""
        if job.reply_url is None:
            return
        base = self.config.public_base
        planned: list[tuple[float, str]] = []
        progress = contract.progress_callbacks or self.config.webhook_progress
        if progress and job.duration > 0:
            planned += [(job.start + fraction * job.duration, "progress") for fraction in PROGRESS_FRACTIONS]
        planned.append((job.end, "terminal"))
        if progress and self.config.webhook_reorder:
            planned.append((job.end, "stale"))
        for at, kind in planned:
            body_at = job.start + PROGRESS_FRACTIONS[-1] * job.duration if kind == "stale" else at
            body = contract.status(job, body_at, base)
            if body is not None:
                self.webhooks.schedule(Delivery(job.job_id, job.reply_url, job.reply_ref, body, at, kind))

    def submit_snapshot(self, contract: Contract, job: ServiceJob) -> Delivery | None:
        """A callback with the job as it is at submit time (the knob webhook_before_submit_response);
        None where the status read has nothing to say yet (PixVerse answers 404)."""
        body = contract.status(job, job.start, self.config.public_base)
        if job.reply_url is None or body is None:
            return None
        return Delivery(job.job_id, job.reply_url, job.reply_ref, body, job.start, "progress")

    def reset(self) -> None:
        for jobs in self.jobs.values():
            jobs.clear()
        for counter in self.submissions_by_ref.values():
            counter.clear()
        self._expiry.clear()
        self.webhooks.reset()
        self._load_accounts()

    def stats(self) -> dict[str, Any]:
        now = self.now()
        services: dict[str, Any] = {}
        for service in CONTRACTS:
            accounts = {
                account.name: account.to_json(now)
                for names in self.accounts.get(service, {}).values()
                for account in names.values()
            }
            by_ref = dict(self.submissions_by_ref[service])
            services[service] = {"accounts": accounts, "submissions_by_ref": by_ref}
        return {"useapi_services": services, "useapi_services_callbacks": self.webhooks.stats()}

    def _drop_expired(self, now: float) -> None:
        expiry, retention = self._expiry, self.config.retention_seconds
        while expiry and expiry[0][0] + retention <= now:
            _, service, job_id = heapq.heappop(expiry)
            self.jobs[service].pop(job_id, None)

    def _load_accounts(self) -> None:
        self.accounts = {}
        for service, tokens in self.config.useapi_services.items():
            for token, names in tokens.items():
                for name, max_jobs in names.items():
                    self.register(service, token, name, max_jobs)


SERVICES_KEY = web.AppKey("emulator_useapi_services", ServicesState)
