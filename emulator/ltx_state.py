from __future__ import annotations

import heapq
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web

from emulator.config import EmulatorConfig
from emulator.faults import FaultQueue

PENDING_FRACTION = 0.1
TERMINAL = frozenset({"completed", "failed"})

_SECONDS_MARKER = re.compile(r"\[seconds=(\d+(?:\.\d*)?|\.\d+)\]")
# [fail] ends the job with content_filtered_error; [fail=api_error] picks the error.type.
_FAIL_MARKER = re.compile(r"\[fail(?:=([a-z_]+))?\]")
DEFAULT_FAILURE_TYPE = "content_filtered_error"


def iso_utc(wall: float) -> str:
    stamp = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@dataclass(slots=True)
class Job:
    id: str
    endpoint: str
    key: str
    prompt: str
    start: float  # monotonic clock; status is derived from it on every read
    duration: float
    error_type: str | None  # None: the job completes; otherwise the error.type it fails with
    created_at: str
    completed_at: str

    @property
    def end(self) -> float:
        return self.start + self.duration

    def status_at(self, now: float) -> str:
        elapsed = now - self.start
        if elapsed < self.duration * PENDING_FRACTION:
            return "pending"
        if elapsed < self.duration:
            return "processing"
        return "completed" if self.error_type is None else "failed"

    def executing_at(self, now: float) -> bool:
        return now < self.end


class CountedAccount(Protocol):
    """What the stats route shows of an account, in either emulated API."""

    max_jobs: int
    peak: int
    submitted: int
    rejected_429: int
    polls: int

    def executing(self, now: float) -> int: ...


def account_stats(account: CountedAccount, now: float) -> dict[str, int]:
    return {
        "max_jobs": account.max_jobs,
        "executing": account.executing(now),
        "peak": account.peak,
        "submitted": account.submitted,
        "rejected_429": account.rejected_429,
        "polls": account.polls,
    }


@dataclass(slots=True)
class KeyAccount:
    max_jobs: int
    peak: int = 0
    submitted: int = 0
    rejected_429: int = 0
    # The 429s by error.type (https://docs.ltx.video/rate-limits): every slot busy / too many requests.
    rejected_concurrency: int = 0
    rejected_rate: int = 0
    polls: int = 0
    # End times of this key's jobs, a min-heap: popping the finished ones leaves the live count.
    ends: list[float] = field(default_factory=list)
    # Jobs started outside the emulated client (another app on the same key): id -> end (inf: until
    # ended by the control route). They hold slots and are never listed or polled.
    foreign: dict[str, float] = field(default_factory=dict)

    def executing(self, now: float) -> int:
        ends = self.ends
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        for job_id in [j for j, end in self.foreign.items() if end <= now]:
            del self.foreign[job_id]
        return len(ends) + len(self.foreign)

    def to_json(self, now: float) -> dict[str, int]:
        return account_stats(self, now) | {
            "rejected_concurrency": self.rejected_concurrency,
            "rejected_rate": self.rejected_rate,
            "foreign": sum(1 for end in self.foreign.values() if end > now),
        }


class EmulatorState:
    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.initial_config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.accounts: dict[str, KeyAccount] = {k: KeyAccount(max_jobs=m) for k, m in config.keys.items()}
        self.jobs: dict[str, Job] = {}
        self.faults = FaultQueue()
        # Keys and tokens of any provider revoked at run time (POST /_emulator/revoked-keys): every
        # request with one is answered 401 until it is restored.
        self.revoked: set[str] = set()
        # (end, id) of every stored job, so expired ones are dropped without scanning the table.
        self._expiry: list[tuple[float, str]] = []

    def account(self, key: str) -> KeyAccount | None:
        found = self.accounts.get(key)
        if found is None and key and self.config.accept_any_key:
            found = self.accounts[key] = KeyAccount(max_jobs=self.config.default_max_jobs)
        return found

    def register_key(self, key: str, max_jobs: int) -> None:
        found = self.accounts.get(key)
        if found is None:
            self.accounts[key] = KeyAccount(max_jobs=max_jobs)
        else:
            found.max_jobs = max_jobs

    def rate_limited(self, key: str) -> bool:
        """Whether this submit gets a ``rate_limit_error`` 429 (the ``ltx_rate_limit_rate`` knob);
        counted on the key."""
        rate = self.config.ltx_rate_limit_rate
        if rate <= 0 or self.rng.random() >= rate:
            return False
        account = self.accounts[key]
        account.rejected_429 += 1
        account.rejected_rate += 1
        return True

    def start_foreign(self, key: str, seconds: float | None) -> str:
        """A job started on ``key`` by another client: it holds one of the key's slots for ``seconds``
        (None: until ``end_foreign``), whatever the key's limit says."""
        account = self.accounts[key]
        job_id = f"foreign-{self.rng.getrandbits(64):016x}"
        now = self.clock()
        account.foreign[job_id] = now + seconds if seconds is not None else float("inf")
        account.peak = max(account.peak, account.executing(now))
        return job_id

    def end_foreign(self, job_id: str) -> bool:
        for account in self.accounts.values():
            if account.foreign.pop(job_id, None) is not None:
                return True
        return False

    def submit(self, key: str, endpoint: str, prompt: str) -> Job | None:
        """Create a job, or None when the key already has max_jobs jobs that are not yet terminal
        (its own and the foreign ones)."""
        now = self.clock()
        self._drop_expired(now)
        account = self.accounts[key]
        executing = account.executing(now)
        if executing >= account.max_jobs:
            account.rejected_429 += 1
            account.rejected_concurrency += 1
            return None
        job = self._new_job(key, endpoint, prompt, now)
        self.jobs[job.id] = job
        heapq.heappush(account.ends, job.end)
        heapq.heappush(self._expiry, (job.end, job.id))
        account.submitted += 1
        account.peak = max(account.peak, executing + 1)
        return job

    def lookup(self, key: str, endpoint: str, job_id: str) -> Job | None:
        """The caller's job while it is retained; a job that belongs to anyone else does not exist."""
        job = self.jobs.get(job_id)
        if job is None or job.key != key or job.endpoint != endpoint:
            return None
        if self.clock() >= job.end + self.config.retention_seconds:
            del self.jobs[job_id]
            return None
        return job

    def reset(self) -> None:
        """Back to the state at start-up: startup config and keys, no jobs, faults or counters."""
        self.config = self.initial_config
        self.accounts = {k: KeyAccount(max_jobs=m) for k, m in self.config.keys.items()}
        self.jobs.clear()
        self._expiry.clear()
        self.faults.clear()
        self.revoked.clear()

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        keys = {key: account.to_json(now) for key, account in self.accounts.items()}
        return {
            "keys": keys,
            "injected_remaining": self.faults.remaining(),
            "revoked_keys": sorted(self.revoked),
        }

    def _new_job(self, key: str, endpoint: str, prompt: str, now: float) -> Job:
        duration, error_type = self._plan(prompt)
        wall = time.time()
        return Job(
            id=f"{self.rng.getrandbits(128):032x}",
            endpoint=endpoint,
            key=key,
            prompt=prompt,
            start=now,
            duration=duration,
            error_type=error_type,
            created_at=iso_utc(wall),
            completed_at=iso_utc(wall + duration),
        )

    def plan(self, prompt: str) -> tuple[float, str | None]:
        """Duration and fate of a new job for the other provider contracts (LTX Studio): the same
        knobs and prompt markers as here."""
        return self._plan(prompt)

    def _plan(self, prompt: str) -> tuple[float, str | None]:
        """Duration and fate (None or the failure's error.type) of a new job, drawn once so every
        later poll agrees."""
        config = self.config
        marker = _SECONDS_MARKER.search(prompt)
        if marker is not None:
            duration = float(marker.group(1))
        else:
            jitter = config.job_seconds_jitter
            duration = max(0.0, config.job_seconds * (1.0 + self.rng.uniform(-jitter, jitter)))
        fail = _FAIL_MARKER.search(prompt)
        if fail is not None:
            return duration, fail.group(1) or DEFAULT_FAILURE_TYPE
        if "[ok]" in prompt:
            return duration, None
        return duration, DEFAULT_FAILURE_TYPE if self.rng.random() < config.failure_rate else None

    def _drop_expired(self, now: float) -> None:
        expiry, retention = self._expiry, self.config.retention_seconds
        while expiry and expiry[0][0] + retention <= now:
            _, job_id = heapq.heappop(expiry)
            self.jobs.pop(job_id, None)


STATE_KEY = web.AppKey("emulator_state", EmulatorState)
