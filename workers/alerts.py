"""The alert loop: every worker sends the operator alerts that are due (``daemon/alerts.py``) to
``GENRELAY_ALERT_URL``, signed like deliveries, beside its other loops.

An alert is POSTed with the Standard Webhooks headers (its id as ``webhook-id``, the same for every
attempt). A 2xx answer means sent; anything else, or no answer within ``GENRELAY_DELIVERY_TIMEOUT``,
is tried again with backoff and jitter (``GENRELAY_RETRY_BASE`` / ``GENRELAY_RETRY_MAX``), up to
``GENRELAY_ALERT_MAX_TRIES`` attempts counted in Redis; then it is dropped with an error log line.
Nothing here is ever raised into job handling: the loop logs a failure and carries on.
"""

from __future__ import annotations

import asyncio

import aiohttp
import structlog

from daemon.alerts import AlertQueue, ClaimedAlert, alert_secret
from daemon.backoff import backoff_seconds
from daemon.deliveries import Signer
from daemon.providers.base import USER_AGENT
from workers.runtime import WorkerRuntime

log = structlog.get_logger("genrelay.alerts")

# How often an idle loop looks for due alerts, and how many it takes at once.
LOOK_EVERY_S = 0.25
BATCH = 20


class AlertSender:
    def __init__(self, runtime: WorkerRuntime, url: str, signer: Signer) -> None:
        settings = runtime.services.settings
        self.runtime = runtime
        self.url = url
        self.signer = signer
        self.queue = AlertQueue(runtime.services.client, runtime.services.scripts)
        self.timeout = settings.delivery_timeout
        self.max_tries = settings.alert_max_tries
        # A claim outlives one attempt; one a dead worker held comes back after it.
        self.claim_ms = int((self.timeout + 5) * 1000)

    async def run_once(self, session: aiohttp.ClientSession) -> int:
        claimed = await self.queue.claim(self.claim_ms, BATCH)
        if claimed:
            await asyncio.gather(*(self._send(session, alert) for alert in claimed))
        return len(claimed)

    async def _send(self, session: aiohttp.ClientSession, alert: ClaimedAlert) -> None:
        headers = {"Content-Type": "application/json", **self.signer.headers(alert.id, alert.body)}
        error = ""
        try:
            async with asyncio.timeout(self.timeout):
                async with session.post(
                    self.url, data=alert.body, headers=headers, allow_redirects=False
                ) as resp:
                    if 200 <= resp.status < 300:
                        await self.queue.sent(alert.id)
                        log.info("alert sent", alert_id=alert.id, tries=alert.tries, status=resp.status)
                        return
                    error = f"HTTP {resp.status}"
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"request failed: {type(exc).__name__}"
        settings = self.runtime.services.settings
        if alert.tries >= self.max_tries:
            await self.queue.drop(alert.id)
            log.error("alert dropped", alert_id=alert.id, tries=alert.tries, error=error)
            return
        delay = backoff_seconds(alert.tries, settings.retry_base, settings.retry_max)
        await self.queue.retry(alert.id, delay)
        log.warning("alert not sent, will retry", alert_id=alert.id, tries=alert.tries, error=error)


async def alerts_forever(runtime: WorkerRuntime) -> None:
    """Send due alerts until the worker stops; off when ``GENRELAY_ALERT_URL`` is unset."""
    services = runtime.services
    url = services.settings.alert_url
    if url is None:
        return
    sender = AlertSender(runtime, url, Signer.from_secret(alert_secret(services.settings, services.secret)))
    async with aiohttp.ClientSession(
        headers={"User-Agent": USER_AGENT}, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    ) as session:
        while not runtime.stopping.is_set():
            taken = 0
            try:
                taken = await sender.run_once(session)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("alert loop failed", error=repr(exc))
            if taken == BATCH:
                continue
            try:
                await asyncio.wait_for(runtime.stopping.wait(), LOOK_EVERY_S)
            except TimeoutError:
                pass
