"""What a request budget shows (``requestBudget`` of ``GET /v1/scheduler/available``, ``genrelay
accounts``, the dashboard and ``/metrics``): per window, the limit it takes with and the requests
it counted, as every process sees them in Redis (``daemon/request_budget.py``)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from daemon import keys
from daemon.accounts_file import Account
from daemon.providers import vydra
from daemon.request_budget import (
    USEAPI_BUDGET,
    RequestLimits,
    shared_budget_holder,
    useapi_budget_limit,
)
from daemon.settings import Settings

# Providers whose accounts never take from a budget.
UNBUDGETED = frozenset({"ltx"})

WindowUse = dict[str, int]
WINDOW_UNITS = {"minute": "min", "hour": "h", "day": "day"}


def budget_text(budget: dict[str, WindowUse] | None) -> str:
    """``12/30 min, 80/500 h``: the requests each window of a budget counted, of its limit."""
    if not budget:
        return "-"
    return ", ".join(
        f"{use['used']}/{use['limit']} {WINDOW_UNITS.get(window, window)}" for window, use in budget.items()
    )


async def request_budget(
    client: aioredis.Redis, account: Account, now_ms: int
) -> dict[str, WindowUse] | None:
    """``{window: {"limit", "used"}}`` of the budget the account takes from; None when it has none
    (an LTX account; a useapi account without ``requests_per_minute``)."""
    if account.provider == "vydra":
        provider, holder = "vydra", await vydra.known_holder(client, account)
        limits = vydra.request_limits(account)
    elif account.provider not in UNBUDGETED and (minute := useapi_budget_limit(account)) is not None:
        provider, holder = USEAPI_BUDGET, shared_budget_holder(account)
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


class RequestBudgetCollector:
    """``genrelay_request_budget_used`` / ``_limit`` per budgeted account and window, read from
    Redis by :meth:`read` (a Redis error leaves them out: ``genrelay_redis_up`` says why)."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.accounts = [a for p in settings.providers() for a in settings.accounts_for(p)]
        self.families: list[Metric] = []

    async def read(self) -> None:
        labels = ["provider", "account", "window"]
        used = GaugeMetricFamily(
            "genrelay_request_budget_used", "Requests the account's request budget holds now.", labels=labels
        )
        limit = GaugeMetricFamily(
            "genrelay_request_budget_limit", "Requests the budget's window allows.", labels=labels
        )
        now_ms = int(time.time() * 1000)
        try:
            for account in self.accounts:
                for window, use in (await request_budget(self.client, account, now_ms) or {}).items():
                    used.add_metric([account.provider, account.name, window], use["used"])
                    limit.add_metric([account.provider, account.name, window], use["limit"])
        except (RedisError, OSError):
            return
        self.families = [used, limit]

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
