"""The web process: the app factory, the access log and the server loop (probes: :mod:`daemon.web.ops`).

``create_app`` is shared by ``genrelay web`` (through :func:`serve`) and the tests. The shared
services (Redis client, scripts, slots, store) are opened in one cleanup context and kept under
the typed key :data:`daemon.web.api.SERVICES`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from daemon.redis_connection import REQUEST_PATH
from daemon.services import open_services
from daemon.settings import Settings
from daemon.web.api import MAX_BODY_BYTES, SERVICES, routes
from daemon.web.archive_content import attach_backend
from daemon.web.archive_content import routes as archive_routes
from daemon.web.assets import routes as asset_routes
from daemon.web.auth import bearer_auth, host_check
from daemon.web.callbacks import routes as callback_routes
from daemon.web.connections import HeadTimeoutRunner
from daemon.web.dashboard import routes as dashboard_routes
from daemon.web.errors import error_middleware, loggable_path
from daemon.web.openapi import openapi_json
from daemon.web.ops import PROBE_PATHS
from daemon.web.ops import routes as ops_routes

__all__ = ["REDIS_URL", "SETTINGS", "AccessLogger", "create_app", "serve"]

SETTINGS = web.AppKey("settings", Settings)
REDIS_URL = web.AppKey("redis_url", str)

# In-flight requests get this long to finish after SIGTERM; a job request takes milliseconds.
SHUTDOWN_TIMEOUT_SECONDS = 10.0

log = structlog.get_logger("genrelay.web")
access_log = structlog.get_logger("genrelay.access")


def create_app(settings: Settings, redis_url: str) -> web.Application:
    """Build the web application; its services open on startup and close on cleanup."""
    guard = (
        bearer_auth(settings.api_tokens)
        if settings.api_tokens
        else host_check(settings.public_url, exempt=PROBE_PATHS)
    )
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            error_middleware,
            # Without tokens the API is open: only requests naming a loopback or the public host pass.
            guard,
        ],
    )
    app[SETTINGS] = settings
    app[REDIS_URL] = redis_url
    app.cleanup_ctx.append(services_context)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_routes(routes)
    app.router.add_routes(asset_routes)
    app.router.add_routes(archive_routes)
    attach_backend(app, settings.archive)
    app.router.add_routes(callback_routes)
    app.router.add_routes(dashboard_routes)
    app.router.add_routes(ops_routes)
    return app


async def services_context(app: web.Application) -> AsyncIterator[None]:
    """Open the shared services for the app's lifetime; warn first if the API is open to the network."""
    settings = app[SETTINGS]
    if not settings.api_tokens and not is_loopback(settings.host):
        log.warning(
            "the API is open to the network: set GENRELAY_API_TOKENS or bind GENRELAY_HOST to 127.0.0.1",
            host=settings.host,
        )
    # Every Redis call on a request path is bounded: an unreachable Redis is a 503 within 5 s.
    services = await open_services(settings, app[REDIS_URL], timeouts=REQUEST_PATH)
    app[SERVICES] = services
    try:
        yield
    finally:
        await services.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


class AccessLogger(AbstractAccessLogger):
    """One structured line per request; never the query string, never a callback token."""

    @property
    def enabled(self) -> bool:
        # Skips building the line's fields when info is filtered out (GENRELAY_LOG_LEVEL=warning).
        return bool(access_log.is_enabled_for(logging.INFO))

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.enabled:
            return
        if request.path in PROBE_PATHS and response.status < 400:
            return  # probes every few seconds would drown the log
        access_log.info(
            "request",
            method=request.method,
            path=loggable_path(request),
            status=response.status,
            duration_ms=round(time * 1000, 2),
            size=response.body_length,
            remote=request.remote,
        )


async def serve(
    settings: Settings,
    redis_url: str,
    *,
    on_ready: Callable[[str], object] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the app on ``settings.host``/``settings.port`` until SIGINT or SIGTERM, then stop
    accepting connections and give in-flight requests up to ``SHUTDOWN_TIMEOUT_SECONDS``.

    Args:
        settings: The daemon settings (bind address, tokens, accounts).
        redis_url: The Redis to use.
        on_ready: Called with the base URL (``http://host:port``) once the socket is listening.
        stop: Wait for this event instead of installing signal handlers (for embedding and tests).
    """
    stopped = stop if stop is not None else asyncio.Event()
    handled = () if stop is not None else (signal.SIGINT, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    for signum in handled:  # installed first, so a signal during start-up is not lost
        loop.add_signal_handler(signum, stopped.set)
    runner = HeadTimeoutRunner(
        create_app(settings, redis_url),
        head_timeout=settings.head_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        access_log_class=AccessLogger,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
    )
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port).start()
        url = _base_url(settings.host, runner.addresses[0][1])
        log.info("web listening", url=url)
        if on_ready is not None:
            on_ready(url)
        await stopped.wait()
        log.info("web stopping", timeout_s=SHUTDOWN_TIMEOUT_SECONDS)
    finally:
        # Default handling comes back first: a second Ctrl-C interrupts a slow graceful shutdown.
        for signum in handled:
            loop.remove_signal_handler(signum)
        await runner.cleanup()


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
