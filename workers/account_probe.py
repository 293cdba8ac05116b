"""Accounts that heal: every ``GENRELAY_ACCOUNT_PROBE_INTERVAL`` seconds, each account disabled by a
provider answer (401, 402, 403, 412, 596: auth, subscription, credits, hold) is probed with a
request that costs no credits (the adapter's ``probe``: useapi ``scheduler/available``, vydra
``/account/rate-limits``, LTX a status read of an unknown id), and enabled again when its key works.

* The probe goes over the worker's provider session, which carries the request budget
  (``daemon/request_budget.py``): a probe takes from the account's budget like any request.
* Of all the workers, the one that takes an account's probe lock for the interval probes it
  (``SET NX PX``), so an account is probed once per interval whatever the number of workers.
* Enabling goes through the script of ``genrelay accounts enable`` (``lua/set_account.lua``), and
  only while the account is still disabled for the reason the probe saw: an account an operator
  disabled (``genrelay accounts disable``) is never probed nor enabled by it.
* An account enabled again gets an entry in its provider's account events stream, a log line and
  the operator alert ``account.enabled``. A key that still does not work leaves it disabled until
  the next interval. An account out of credits whose key works is enabled too: when its next submit
  is refused for credits it is disabled again (and alerted), at most once per interval.
"""

from __future__ import annotations

import asyncio
from typing import cast

import structlog

from daemon import keys
from daemon.alerts import ACCOUNT_ENABLED, raise_alert
from daemon.errors import ProviderError
from daemon.providers import get_provider
from daemon.providers.base import ProbeProvider
from daemon.request_budget import RequestBudget, attach, budget_of
from daemon.slots import OPERATOR_REASON
from workers.runtime import WorkerRuntime

log = structlog.get_logger("genrelay.account_probe")

# Reasons an account is disabled for that no probe can fix.
NOT_PROBED = frozenset({OPERATOR_REASON, "not in the accounts file any more"})


def probe_provider(provider: str) -> ProbeProvider | None:
    adapter = get_provider(provider)
    return cast(ProbeProvider, adapter) if callable(getattr(adapter, "probe", None)) else None


async def probe_once(runtime: WorkerRuntime) -> list[tuple[str, str]]:
    """Probe every disabled account whose lock this worker takes; the (provider, account) pairs
    it enabled again."""
    services = runtime.services
    settings = services.settings
    client = services.client
    lock_ms = max(1, int(settings.account_probe_interval * 900))
    enabled = []
    for provider in settings.providers():
        adapter = probe_provider(provider)
        if adapter is None:
            continue
        disabled: dict[str, str] = await client.hgetall(keys.provider_keys(provider).disabled)
        for name, reason in sorted(disabled.items()):
            account = settings.account(provider, name)
            if account is None or reason in NOT_PROBED:
                continue
            if not await client.set(keys.probe_lock_key(provider, name), "1", nx=True, px=lock_ms):
                continue
            try:
                works = await adapter.probe(runtime.session, account)
            except ProviderError as exc:
                log.warning("account probe inconclusive", provider=provider, account=name, error=str(exc))
                continue
            if not works:
                log.info("account probe: still refused", provider=provider, account=name, reason=reason)
                continue
            if not await services.slots.heal(provider, name, reason):
                continue  # enabled, or disabled for another reason, meanwhile
            enabled.append((provider, name))
            log.warning("account enabled again: its key works", provider=provider, account=name, was=reason)
            await raise_alert(
                client,
                settings,
                ACCOUNT_ENABLED,
                provider=provider,
                account=name,
                message=f"the probe found the key working again; it had been disabled: {reason}",
            )
    return enabled


async def probe_forever(runtime: WorkerRuntime) -> None:
    services = runtime.services
    if budget_of(runtime.session) is None:
        attach(runtime.session, RequestBudget(services.client, services.scripts))
    interval = services.settings.account_probe_interval
    # The first probe comes one interval after the start, like every later one: a restart does not
    # probe (and enable) every disabled account at once.
    while not runtime.stopping.is_set():
        try:
            await asyncio.wait_for(runtime.stopping.wait(), interval)
            return
        except TimeoutError:
            pass
        try:
            await probe_once(runtime)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("account probe failed", error=repr(exc))
