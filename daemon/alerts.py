"""Operator alerts: signed events POSTed to ``GENRELAY_ALERT_URL`` when an account is disabled or
enabled again, its breaker opens, its credits run out, or a delivery to an app becomes a dead letter.

Raising an alert never waits on the alert endpoint: it is one write to Redis (``raise_alert``), made
only when ``GENRELAY_ALERT_URL`` is set, and a Redis error there is logged, never raised into the
job path. The workers' alert loop (``workers/alerts.py``) sends them: ``claim`` takes due alerts
with ``lua/claim_alerts.lua`` (each attempt counted in Redis, so tries are bounded across workers
and restarts; one a dead worker held comes back when its claim expires), ``sent`` forgets one,
``retry`` makes it due again later and ``drop`` gives it up after ``GENRELAY_ALERT_MAX_TRIES``.

Alerts are signed exactly like deliveries to apps (``daemon/deliveries.py``, the Standard Webhooks
headers of https://www.standardwebhooks.com/), with ``GENRELAY_ALERT_SECRET`` when set, else with the
delivery secret (``genrelay deliveries secret``). The body:
``{"type", "provider", "account", "message", "at"}`` plus, for a dead letter, ``jobId`` and ``seq``,
and for account events ``status`` when a provider answer caused them. No key or secret is ever put
in one: messages pass through the same redaction as log lines.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from daemon import keys
from daemon.deliveries import signing_secret
from daemon.logs import SecretRedactor
from daemon.scripts import Scripts
from daemon.settings import Settings

log = structlog.get_logger("genrelay.alerts")

ACCOUNT_DISABLED = "account.disabled"
ACCOUNT_ENABLED = "account.enabled"
BREAKER_OPEN = "account.breaker_open"
CREDITS_LOW = "account.credits_low"
DEAD_LETTER = "delivery.dead_letter"
TYPES = (ACCOUNT_DISABLED, ACCOUNT_ENABLED, BREAKER_OPEN, CREDITS_LOW, DEAD_LETTER)

# Provider statuses that say the account ran out of credits (vydra 402 INSUFFICIENT_CREDITS,
# https://www.vydra.ai/docs/errors; useapi.net 412, docs/useapi-services.md "Errors").
CREDITS_STATUSES = {"vydra": frozenset({402})}
USEAPI_CREDITS_STATUSES = frozenset({412})


def credits_statuses(provider: str) -> frozenset[int]:
    """The statuses of ``provider`` that mean its account is out of credits."""
    if provider in CREDITS_STATUSES:
        return CREDITS_STATUSES[provider]
    return frozenset() if provider == "ltx" else USEAPI_CREDITS_STATUSES


def alert_secret(settings: Settings, shared_secret: str) -> str:
    """The ``whsec_`` secret alerts are signed with: GENRELAY_ALERT_SECRET, else the delivery secret."""
    return settings.alert_secret or signing_secret(settings, shared_secret)


def alert_body(
    kind: str,
    *,
    provider: str | None,
    account: str | None,
    message: str,
    at_ms: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    when = time.time() * 1000 if at_ms is None else at_ms
    at = datetime.fromtimestamp(when / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body: dict[str, Any] = {
        "type": kind,
        "provider": provider,
        "account": account,
        "message": message,
        "at": at,
    }
    body.update({name: value for name, value in extra.items() if value is not None})
    return body


async def raise_alert(
    client: aioredis.Redis,
    settings: Settings,
    kind: str,
    *,
    provider: str | None,
    account: str | None,
    message: str,
    **extra: Any,
) -> str | None:
    """Queue one alert for the workers to send; its id, or None when alerts are off or Redis
    refused the write (logged: an alert never fails the work that raised it)."""
    if settings.alert_url is None:
        return None
    redactor = SecretRedactor(settings.secrets())
    body = alert_body(kind, provider=provider, account=account, message=redactor.redact(message), **extra)
    alert_id = f"msg_alert_{os.urandom(12).hex()}"
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.ALERT_BODIES, alert_id, orjson.dumps(body))
            pipe.zadd(keys.ALERTS, {alert_id: int(time.time() * 1000)}, nx=True)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.error("alert not queued", type=kind, provider=provider, account=account, error=str(exc))
        return None
    log.info("alert queued", type=kind, provider=provider, account=account, alert_id=alert_id)
    return alert_id


@dataclass(frozen=True, slots=True)
class ClaimedAlert:
    id: str
    body: bytes
    tries: int


class AlertQueue:
    """The workers' side of the alert queue in Redis."""

    def __init__(self, client: aioredis.Redis, scripts: Scripts) -> None:
        self.client = client
        self.scripts = scripts

    async def claim(self, claim_ms: int, limit: int) -> list[ClaimedAlert]:
        raw = await self.scripts.claim_alerts(
            keys=[keys.ALERTS, keys.ALERT_BODIES, keys.ALERT_TRIES],
            args=[int(time.time() * 1000), claim_ms, limit],
        )
        out = []
        for i in range(0, len(raw), 3):
            body = raw[i + 1]
            out.append(
                ClaimedAlert(str(raw[i]), body.encode() if isinstance(body, str) else body, int(raw[i + 2]))
            )
        return out

    async def sent(self, alert_id: str) -> None:
        await self._forget(alert_id)

    async def drop(self, alert_id: str) -> None:
        await self._forget(alert_id)

    async def retry(self, alert_id: str, delay_s: float) -> None:
        due = int((time.time() + delay_s) * 1000)
        await self.client.zadd(keys.ALERTS, {alert_id: due}, xx=True)

    async def _forget(self, alert_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.ALERTS, alert_id)
            pipe.hdel(keys.ALERT_BODIES, alert_id)
            pipe.hdel(keys.ALERT_TRIES, alert_id)
            await pipe.execute()
