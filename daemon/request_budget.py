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
from collections.abc import Mapping
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


# The windows a budget may count over, by the name the providers give them, in minutes.
WINDOW_MINUTES = {"minute": 1, "hour": 60, "day": 1440}


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """A budget's limits over each of its windows (``minute``, ``hour``, ``day``); a limit of 0
    requests is one not known (yet). ``learnt``: the limits the provider reported (``learn``)
    replace these, which are then only the defaults until it reports."""

    windows: tuple[tuple[str, RequestLimit], ...]
    learnt: bool = False

    @classmethod
    def scaled(cls, requests: Mapping[str, int], minute_s: float, *, learnt: bool) -> RequestLimits:
        """``requests`` per window name, the longer windows scaled from the minute's length
        (a minute of ``minute_s`` seconds makes an hour of 60 of them)."""
        return cls(
            tuple(
                (name, RequestLimit(requests.get(name, 0), minutes * minute_s))
                for name, minutes in WINDOW_MINUTES.items()
                if name in requests or learnt
            ),
            learnt,
        )

    @property
    def minute(self) -> RequestLimit:
        return self.windows[0][1]


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
        # (provider, holder, keep, windows) -> (the limits this process last stored for those
        # windows, when): what needs no write.
        self._stored: dict[
            tuple[str, str, bool, tuple[str, ...]], tuple[tuple[tuple[str, int], ...], float]
        ] = {}

    async def take(
        self, provider: str, holder: str, limits: RequestLimit | RequestLimits, share: float
    ) -> float:
        """Take one request from every window of ``holder``'s budget (an account, or what its
        accounts share: a token, an organisation); 0.0 when taken, else the seconds until each
        window has room for this share."""
        if isinstance(limits, RequestLimit):
            limits = RequestLimits((("minute", limits),))
        budget_keys = [keys.request_limit_key(provider, holder)]
        args: list[str | int] = [os.urandom(8).hex(), repr(share) if limits.learnt else ""]
        for name, limit in limits.windows:
            budget_keys.append(keys.request_budget_key(provider, holder, name))
            args += [name, limit.window_ms(), limit.allowed(share) if limit.requests else 0]
        wait_ms = await self.scripts.take_request(keys=budget_keys, args=args)
        return int(wait_ms) / 1000

    async def correct(
        self, provider: str, holder: str, limit: RequestLimit, provider_used: int, window: str = "minute"
    ) -> int:
        """Count at least ``provider_used`` requests in ``holder``'s ``window`` of ``limit`` (what
        the provider says it counts: requests made elsewhere take from the budget too); how many
        were added."""
        added = await self.scripts.correct_budget(
            keys=[keys.request_budget_key(provider, holder, window)],
            args=[limit.window_ms(), provider_used, os.urandom(8).hex()],
        )
        return int(added)

    async def learn(
        self,
        provider: str,
        holder: str,
        reported: Mapping[str, int],
        *,
        keep: bool = False,
        complete: bool = False,
    ) -> bool:
        """Keep the limits per window the provider reported for ``holder`` (from its answers'
        headers or its limits endpoint) for every process; written when they change, and renewed
        well before they expire. ``keep``: only where nothing is known yet (a guess);
        ``complete``: every window's, from the provider's own account of them (``learnt`` then
        says ``complete``). True when they differ from what this process stored last."""
        values = tuple(sorted((name, requests) for name, requests in reported.items() if requests >= 1))
        if not values:
            return False
        now = time.monotonic()
        memo = (provider, holder, keep, tuple(name for name, _ in values))
        last = self._stored.get(memo)
        if last is not None and last[0] == values and now - last[1] < LEARNT_LIMIT_TTL_S / 4:
            return False
        self._stored[memo] = (values, now)
        key = keys.request_limit_key(provider, holder)
        async with self.client.pipeline(transaction=True) as pipe:
            for name, requests in values:
                if keep:
                    pipe.hsetnx(key, name, requests)
                else:
                    pipe.hset(key, name, requests)
            if complete:
                pipe.hset(key, "complete", 1)
            pipe.expire(key, LEARNT_LIMIT_TTL_S)
            await pipe.execute()
        return last is not None and last[0] != values

    async def learnt(self, provider: str, holder: str) -> dict[str, int]:
        """The limits per window last reported for ``holder`` (and ``complete``: 1 when they came
        from the provider's account of every window)."""
        values = await self.client.hgetall(keys.request_limit_key(provider, holder))
        return {str(name): int(value) for name, value in values.items() if str(value).isdigit()}

    async def postpone_poll(self, provider: str, job_id: str, exhausted: BudgetExhausted) -> None:
        """Make a claimed poll due again when the budget has room, plus some jitter (so the
        postponed polls of many jobs do not all come back in the same instant)."""
        delay = exhausted.wait_s + random.uniform(0, exhausted.window_s / 4)
        pk = keys.provider_keys(provider)
        await self.scripts.postpone_poll(keys=[pk.polls], args=[job_id, math.ceil(delay * 1000)])


# useapi.net counts requests per API token, whatever the service (Kling, MiniMax, ...): their
# accounts take from budgets under this one name instead of their provider's.
USEAPI_BUDGET = "useapi"


def useapi_budget_limit(account: Account) -> RequestLimit | None:
    """The limit a useapi account's token budget takes with: its ``requests_per_minute`` (per
    ``rate_window_seconds``), or None when the accounts file sets none (no budget then)."""
    if account.requests_per_minute is None:
        return None
    return RequestLimit(account.requests_per_minute, account.rate_window_seconds or 60.0)


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
