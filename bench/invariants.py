"""The invariants every load run and the soak end with (docs/fault-scenarios.md, H6), read from what Redis
holds and what the emulator observed, never from what the run itself counted:

* every enqueued id has one terminal record;
* the lease sets are empty after the drain;
* the emulator's peak concurrency per account is at most the account's ``maxJobs`` (for LTX keys the
  emulator's own cap is set above genrelay's, so an over-allocation shows as a peak, not a 429);
* at most one accepted submission per job (useapi: per ``replyRef``; LTX: per prompt, which names
  the job);
* no 5xx seen by the clients of the run;
* no secret string in the captured logs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from daemon import keys
from daemon.settings import Settings

TERMINAL = ("completed", "failed", "canceled")
# Secrets are long URL-safe strings; anything shorter cannot be one of ours.
_CANDIDATE = re.compile(rb"[A-Za-z0-9_\-]{16,}")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def lines(self) -> list[str]:
        return [f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]


@dataclass
class Outcomes:
    states: Counter[str]
    ended_by: Counter[str]
    failures: Counter[str]  # failed jobs by error type
    unfinished: list[str]

    def describe(self, total: int) -> str:
        return (
            f"{self.terminal}/{total}: {dict(self.states)}; ended by {dict(self.ended_by)}; "
            f"failed as {dict(self.failures)}"
        )

    @property
    def terminal(self) -> int:
        return sum(self.states[s] for s in TERMINAL)


async def job_outcomes(client: aioredis.Redis, job_ids: list[str], chunk: int = 1000) -> Outcomes:
    """Each job's state and what ended it (poll, callback, sweep, ...), read from its record."""
    states: Counter[str] = Counter()
    ended_by: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    unfinished: list[str] = []
    for start in range(0, len(job_ids), chunk):
        part = job_ids[start : start + chunk]
        async with client.pipeline(transaction=False) as pipe:
            for job_id in part:
                pipe.hmget(keys.job_key(job_id), "state", "ended_by", "error_type")
            rows = await pipe.execute()
        for job_id, (state, source, error_type) in zip(part, rows, strict=True):
            states[state or "missing"] += 1
            if state == "failed":
                failures[error_type or "?"] += 1
            if state in TERMINAL:
                ended_by[source or "?"] += 1
            else:
                unfinished.append(job_id)
    return Outcomes(states, ended_by, failures, unfinished)


async def count_terminal(client: aioredis.Redis, providers: Iterable[str]) -> int:
    async with client.pipeline(transaction=False) as pipe:
        for provider in providers:
            for state in TERMINAL:
                pipe.zcard(keys.provider_keys(provider).state(state))
        counts = await pipe.execute()
    return int(sum(counts))


async def leases_left(client: aioredis.Redis, settings: Settings) -> int:
    async with client.pipeline(transaction=False) as pipe:
        for provider in settings.providers():
            pipe.zcard(keys.provider_keys(provider).leases)
        counts = await pipe.execute()
    return int(sum(counts))


async def emulator_view(base_url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The emulator's stats and its job list (LTX jobs with their prompts)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.get(f"{base_url}/_emulator/stats") as resp:
            stats: dict[str, Any] = await resp.json()
        async with http.get(f"{base_url}/_emulator/jobs") as resp:
            jobs: list[dict[str, Any]] = (await resp.json())["jobs"]
    return stats, jobs


def allocation_checks(
    report: Report,
    settings: Settings,
    ltx_keys: dict[str, str],
    stats: dict[str, Any],
    jobs: list[dict[str, Any]],
) -> None:
    """Peak vs maxJobs per account, 429s, and submissions per job, as the emulator counted them."""
    over: dict[str, int] = {}
    rejected = 0
    for account in settings.accounts:
        if account.provider == "ltx":
            seen = stats["keys"].get(ltx_keys[account.name], {})
        else:
            seen = stats["useapi_accounts"].get(account.name, {})
        over[account.name] = int(seen.get("peak", 0)) - account.max_jobs
        rejected += int(seen.get("rejected_429", 0))
    worst = max(over.values(), default=0)
    report.add(
        "emulator peak <= maxJobs",
        worst <= 0,
        f"max over accounts of (peak - maxJobs) = {worst}; 429s from the emulator: {rejected}",
    )
    by_ref = Counter(stats.get("submissions_by_ref", {}))
    by_prompt = Counter(job["prompt"] for job in jobs if job.get("prompt"))
    worst_ref = max([*by_ref.values(), *by_prompt.values()], default=0)
    repeated = sum(1 for n in [*by_ref.values(), *by_prompt.values()] if n > 1)
    report.add(
        "submissions per job <= 1",
        worst_ref <= 1,
        f"max {worst_ref}, {repeated} jobs submitted more than once "
        f"({len(by_ref)} useapi refs, {len(by_prompt)} LTX prompts)",
    )


def secrets_in_logs(logs: Iterable[Path], secrets: Iterable[str], macs: Iterable[str] = ()) -> dict[str, int]:
    """How often each secret (by a safe label) shows in the logs: API keys and signing secrets as
    substrings, callback-token MACs (the secret part of a callback URL) as whole words."""
    wanted = {s.encode(): f"secret#{n}" for n, s in enumerate(secrets) if len(s) >= 8}
    token_macs = {mac.encode() for mac in macs}
    found: Counter[str] = Counter()
    for path in logs:
        for candidate in _CANDIDATE.findall(path.read_bytes()):
            if candidate in token_macs:
                found["callback token"] += 1
            for secret, label in wanted.items():
                if secret in candidate:
                    found[label] += 1
    return dict(found)
