"""Operations routes: liveness (``GET /healthz``), readiness (``GET /readyz``) and the Prometheus
scrape (``GET /metrics``). They stay open when API tokens are set, so probes and scrapers need none.
"""

from __future__ import annotations

import asyncio
from dataclasses import fields

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from daemon import keys
from daemon.metrics import metrics_response, render_web_metrics
from daemon.services import Services
from daemon.web.api import SERVICES
from daemon.web.errors import REDIS_UNREACHABLE, json_response

__all__ = ["PROBE_PATHS", "READINESS_TIMEOUT_SECONDS", "readiness_problems", "routes"]

# A readiness probe must answer even when Redis is blackholed (the client has no read timeout).
READINESS_TIMEOUT_SECONDS = 2.0
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

log = structlog.get_logger("genrelay.web")
routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers; Redis is not consulted."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when Redis answers, holds the scripts (reloaded here when Redis lost them) and
    the accounts; else 503 saying what is missing."""
    problems = await readiness_problems(request.app[SERVICES])
    if problems:
        body = {"error": "not ready: " + "; ".join(problems), "code": 503, "missing": problems}
        return json_response(body, status=503)
    return json_response({"status": "ready"})


async def readiness_problems(services: Services) -> list[str]:
    """What keeps the web process from serving: Redis unreachable, or the accounts not loaded."""
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            return await _missing_in_redis(services)
    except TimeoutError:
        return [f"Redis did not answer within {READINESS_TIMEOUT_SECONDS:g} s"]
    except REDIS_UNREACHABLE as exc:
        return [f"Redis is unreachable: {exc}"]
    except RedisError as exc:
        return [f"Redis refused the readiness check: {exc}"]


async def _missing_in_redis(services: Services) -> list[str]:
    scripts = [getattr(services.scripts, f.name) for f in fields(services.scripts)]
    account_keys = {p: keys.provider_keys(p).accounts for p in services.settings.providers()}
    async with services.client.pipeline(transaction=False) as pipe:
        pipe.ping()
        pipe.script_exists(*(script.sha for script in scripts))
        for key in account_keys.values():
            pipe.exists(key)
        _, loaded, *present = await pipe.execute()
    if not all(loaded):
        # Redis forgets every script when it restarts. Load them again here: an unready process gets
        # no traffic, so no request would ever reload them for it.
        log.warning("scripts were missing in Redis; loaded again")
        await services.scripts.load()
    return [
        f"accounts of {provider} are not loaded"
        for provider, exists in zip(account_keys, present, strict=True)
        if not exists
    ]


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: this process's counters and the shared gauges read from Redis now."""
    services = request.app[SERVICES]
    return metrics_response(await render_web_metrics(services.client, services.settings))
