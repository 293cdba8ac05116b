"""The emulator as the oracle (H2): what the provider side observed, read over its control routes.

Scenarios assert on these numbers, never on values the test computed itself:

* ``peaks()``: per account, the most jobs it ever ran at once, next to the maxJobs the emulator
  itself enforces (LTX keys by API key, useapi accounts by email);
* ``submissions_by_ref()``: accepted useapi submissions per ``replyRef``;
* ``submissions_by_prompt()``: accepted LTX submissions per prompt (LTX has no replyRef; scenarios
  give every job a unique prompt);
* ``rejected_429()``, ``polls()``: the 429s sent and the status reads answered, per account;
* ``executing()``: the jobs the provider is running right now.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True, slots=True)
class AccountPeak:
    account: str
    peak: int
    max_jobs: int


class Oracle:
    """A client of ``/_emulator/*`` on ``base_url`` (an in-process or a subprocess emulator)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session

    async def _get(self, path: str) -> dict[str, Any]:
        async with self.session.get(f"{self.base_url}/_emulator/{path}") as resp:
            assert resp.status == 200, f"emulator {path}: {resp.status} {await resp.text()}"
            data: dict[str, Any] = await resp.json()
            return data

    async def stats(self) -> dict[str, Any]:
        return await self._get("stats")

    async def accounts(self) -> dict[str, dict[str, int]]:
        """Every account's counters (``max_jobs``, ``executing``, ``peak``, ``submitted``,
        ``rejected_429``, ``polls``), LTX keys and useapi emails in one mapping."""
        stats = await self.stats()
        return {**stats.get("keys", {}), **stats.get("useapi_accounts", {})}

    async def peaks(self) -> list[AccountPeak]:
        return [
            AccountPeak(name, counters["peak"], counters["max_jobs"])
            for name, counters in (await self.accounts()).items()
        ]

    async def rejected_429(self) -> dict[str, int]:
        return {name: counters["rejected_429"] for name, counters in (await self.accounts()).items()}

    async def polls(self) -> dict[str, int]:
        return {name: counters["polls"] for name, counters in (await self.accounts()).items()}

    async def submissions_by_ref(self) -> dict[str, int]:
        stats = await self.stats()
        return {ref: int(n) for ref, n in stats.get("submissions_by_ref", {}).items()}

    async def jobs(self) -> list[dict[str, Any]]:
        """The LTX jobs the emulator retains (``id``, ``key``, ``prompt``, ``status``, ``executing``)."""
        jobs: list[dict[str, Any]] = (await self._get("jobs"))["jobs"]
        return jobs

    async def submissions_by_prompt(self) -> Counter[str]:
        return Counter(job["prompt"] for job in await self.jobs())

    async def executing(self) -> list[dict[str, Any]]:
        """The LTX jobs the provider is running now."""
        return [job for job in await self.jobs() if job["executing"]]
