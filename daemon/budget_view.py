"""What a request budget shows (``requestBudget`` of ``GET /v1/scheduler/available``, ``genrelay
accounts``, the dashboard and ``/metrics``): per window, the limit it takes with and the requests
it counted, as every process sees them in Redis (``daemon/request_budget.py``)."""

from __future__ import annotations

import math
from typing import Any

import redis.asyncio as aioredis

from daemon import keys
from daemon.accounts_file import Account
from daemon.providers import vydra
from daemon.request_budget import (
    USEAPI_BUDGET,
    RequestLimit,
    RequestLimits,
    shared_budget_holder,
)
from daemon.settings import Settings

# Providers whose accounts never take from a budget.
UNBUDGETED = frozenset({"ltx"})

WindowUse = dict[str, int]


async def request_budget(
    client: aioredis.Redis, account: Account, now_ms: int
) -> dict[str, WindowUse] | None:
    """``{window: {"limit", "used"}}`` of the budget the account takes from; None when it has none
    (an LTX account; a useapi account without ``requests_per_minute``)."""
    if account.provider == "vydra":
        provider, holder = "vydra", await vydra.known_holder(client, account)
        limits = vydra.request_limits(account)
    elif account.provider not in UNBUDGETED and account.requests_per_minute is not None:
        provider, holder = USEAPI_BUDGET, shared_budget_holder(account)
        minute = RequestLimit(account.requests_per_minute, account.rate_window_seconds or 60.0)
        limits = RequestLimits((("minute", minute),))
    else:
        return None
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.request_limit_key(provider, holder))
        for name, limit in limits.windows:
            pipe.zcount(keys.request_budget_key(provider, holder, name), now_ms - limit.window_ms(), math.inf)
        reported, *counts = await pipe.execute()
    view: dict[str, WindowUse] = {}
    for (name, limit), used in zip(limits.windows, counts, strict=True):
        known = str(reported.get(name, "")) if limits.learnt else ""
        requests = int(known) if known.isdigit() else limit.requests
        if requests:
            view[name] = {"limit": requests, "used": int(used)}
    return view


async def add_request_budgets(
    client: aioredis.Redis, settings: Settings, provider: str, entries: list[dict[str, Any]], now_ms: int
) -> None:
    """``requestBudget`` on each capacity entry (``email``: the account) whose account has one."""
    for entry in entries:
        account = settings.account(provider, entry["email"])
        budget = await request_budget(client, account, now_ms) if account is not None else None
        if budget is not None:
            entry["requestBudget"] = budget
