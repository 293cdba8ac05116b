"""A per-account request budget for providers that limit requests per window (vydra: 10 req/min
on the Free plan, https://www.vydra.ai/docs/errors), shared by every process through Redis.

Every request to such a provider takes one unit first (``lua/take_request.lua``, a sliding window
per account). Callers get a share of the limit, so status polls can never crowd out submits and
the reads a callback asks for: polls use at most ``POLL_SHARE`` of a window. A poll that finds no
budget is postponed (``lua/postpone_poll.lua``), never failed; other requests wait a little, then
answer like a provider 429 (the submit path cools the account down and requeues the job).

The budget travels with the process's provider session (``attach``): adapters receive the session
on every call, and providers without a budget never look it up, so they pay nothing for it.
The limit comes from the accounts file when it says, else from the provider itself: vydra reports
an account's plan limit on every answer (``X-RateLimit-Limit``) and at ``/account/rate-limits``;
``learn`` keeps it in Redis, where the take script reads it, so every process uses a plan from the
first answer any of them got.
The daemon keeps a margin under the provider's own limit: one request of headroom and a slightly
longer window, because a request taken here reaches the provider a little later, and the
provider counts it then.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
import weakref
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis

from daemon import keys
from daemon.accounts_file import Account
from daemon.errors import ProviderAction, ProviderError
from daemon.metrics import METRICS
from daemon.scripts import Scripts

POLL_SHARE = 0.7  # status polls
CONFIRM_SHARE = 0.85  # status reads of jobs that get callbacks: mostly a callback asked for them
FULL_SHARE = 1.0  # submits, cancels
WINDOW_PADDING = 0.05  # the daemon's window is this much longer than the provider's ...
MIN_WINDOW_PADDING_S = 0.5  # ... and at least this much
# Requests that may wait for budget wait at most this long before giving up like a 429.
MAX_WAIT_S = 2.0
# A limit a provider reported is kept this long after it was last reported (renewed by use).
LEARNT_LIMIT_TTL_S = 3600


@dataclass(frozen=True, slots=True)
class RequestLimit:
    """The provider's request limit for one account: ``requests`` per ``window_s`` seconds."""

    requests: int
    window_s: float

    def allowed(self, share: float) -> int:
        """Requests a caller with ``share`` may make per window, after the one of headroom."""
        usable = self.requests - 1 if self.requests > 2 else self.requests
        return max(1, math.floor(usable * share))

    def window_ms(self) -> int:
        padding = max(MIN_WINDOW_PADDING_S, self.window_s * WINDOW_PADDING)
        return math.ceil((self.window_s + padding) * 1000)


class BudgetExhausted(ProviderError):
    """Raised instead of sending a request when the account's budget has no room for it now."""

    def __init__(self, provider: str, account: str, wait_s: float, window_s: float) -> None:
        super().__init__(
            f"{provider} account {account}: request budget used up for {wait_s:.1f} s",
            action=ProviderAction.RETRY,
            retry_after=wait_s,
        )
        self.wait_s = wait_s
        self.window_s = window_s
        # Made only to be raised in place of a request: each one is a refusal for rate, like a 429.
        METRICS.rate_limited.labels(provider, "budget").inc()


class RequestBudget:
    """Takes units from the accounts' shared windows in Redis, and keeps the limits providers
    report there for every process (``learn``)."""

    def __init__(self, client: aioredis.Redis, scripts: Scripts) -> None:
        self.client = client
        self.scripts = scripts
        # (provider, account) -> (the limit this process last stored, when): what needs no write.
        self._stored: dict[tuple[str, str], tuple[int, float]] = {}

    async def take(
        self, provider: str, account: str, limit: RequestLimit, share: float, *, learnt: bool = False
    ) -> float:
        """Take one request; 0.0 when taken, else the seconds until there is room for this share.
        ``learnt``: a limit the provider reported for the account (``learn``) replaces
        ``limit.requests`` (``limit`` is then only the default until one is reported)."""
        budget_keys = [keys.request_budget_key(provider, account), keys.request_limit_key(provider, account)]
        reported_share = repr(share) if learnt else ""
        args = [limit.window_ms(), limit.allowed(share), os.urandom(8).hex(), reported_share]
        wait_ms = await self.scripts.take_request(keys=budget_keys, args=args)
        return int(wait_ms) / 1000

    async def learn(self, provider: str, account: str, requests: int) -> None:
        """Keep the limit per window the provider reported for ``account`` (from its answers'
        headers or its limits endpoint) for every process; written when it changes, and renewed
        well before it expires."""
        if requests < 1:
            return
        now = time.monotonic()
        stored = self._stored.get((provider, account))
        if stored is not None and stored[0] == requests and now - stored[1] < LEARNT_LIMIT_TTL_S / 4:
            return
        self._stored[(provider, account)] = (requests, now)
        await self.client.set(keys.request_limit_key(provider, account), requests, ex=LEARNT_LIMIT_TTL_S)

    async def learnt(self, provider: str, account: str) -> int | None:
        """The limit per window last reported for ``account``, if any."""
        value = await self.client.get(keys.request_limit_key(provider, account))
        return int(value) if value is not None and str(value).isdigit() else None

    async def postpone_poll(self, provider: str, job_id: str, exhausted: BudgetExhausted) -> None:
        """Make a claimed poll due again when the budget has room, plus some jitter (so the
        postponed polls of many jobs do not all come back in the same instant)."""
        delay = exhausted.wait_s + random.uniform(0, exhausted.window_s / 4)
        pk = keys.provider_keys(provider)
        await self.scripts.postpone_poll(keys=[pk.polls], args=[job_id, math.ceil(delay * 1000)])


# useapi.net counts requests per API token, whatever the service (Kling, MiniMax, ...): their
# accounts take from budgets under this one name instead of their provider's.
USEAPI_BUDGET = "useapi"


def shared_budget_holder(account: Account) -> str:
    """The budget a useapi account takes from: one per API token (and API root), so every
    account of one token shares it. The key itself never appears, only a digest of it."""
    digest = hashlib.blake2b(f"{account.base_url}\0{account.api_key}".encode(), digest_size=8).hexdigest()
    return f"token-{digest}"


_BUDGETS: weakref.WeakKeyDictionary[aiohttp.ClientSession, RequestBudget] = weakref.WeakKeyDictionary()


def attach(session: aiohttp.ClientSession, budget: RequestBudget) -> None:
    """Requests over ``session`` to budgeted providers take from ``budget`` from now on."""
    _BUDGETS[session] = budget


def budget_of(session: aiohttp.ClientSession) -> RequestBudget | None:
    return _BUDGETS.get(session)
