from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from emulator import artifacts, control, ltx, ltxstudio, useapi_services, vydra
from emulator.config import EmulatorConfig
from emulator.ltx_state import STATE_KEY, EmulatorState
from emulator.ltxstudio_state import STUDIO_KEY, StudioState
from emulator.responses import ApiError, error_response
from emulator.useapi_contracts import CONTRACTS
from emulator.useapi_services_state import SERVICES_KEY, ServicesState
from emulator.vydra_state import VYDRA_KEY, VydraState

log = logging.getLogger(__name__)

ReadyCallback = Callable[[str, int], None]


def provider_of_path(path: str) -> str | None:
    """The provider whose API ``path`` belongs to; None for the emulator's own routes and files."""
    for name, contract in CONTRACTS.items():
        if path.startswith(f"{contract.prefix}/"):
            return name
    if path.startswith(f"{ltxstudio.PREFIX}/"):
        return "ltxstudio"
    if path.startswith("/v2/"):
        return "ltx"
    if path.startswith(f"{vydra.PREFIX}/"):
        return "vydra"
    return None


@web.middleware
async def count_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    provider = provider_of_path(request.path)
    if provider is not None:
        request.app[control.REQUESTS_KEY][provider] += 1
    return await handler(request)


def create_app(
    config: EmulatorConfig | None = None, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """The emulator app; clock (seconds, monotonic) drives job status, so tests may pass a fake."""
    app = web.Application(middlewares=[count_middleware, error_middleware, fault_middleware])
    app[control.REQUESTS_KEY] = collections.Counter()
    state = app[STATE_KEY] = EmulatorState(config or EmulatorConfig(), clock)
    studio = app[STUDIO_KEY] = StudioState(state)
    app.cleanup_ctx.append(studio.webhooks.context)
    services = app[SERVICES_KEY] = ServicesState(state)
    app.cleanup_ctx.append(services.webhooks.context)
    vydra_state = app[VYDRA_KEY] = VydraState(state)
    app.cleanup_ctx.append(vydra_state.webhooks.context)
    app.add_routes(control.routes())
    app.add_routes(ltx.routes())
    app.add_routes(ltxstudio.routes())
    app.add_routes(useapi_services.routes())
    app.add_routes(vydra.routes())
    app[artifacts.LOG_KEY] = []
    app.add_routes(artifacts.routes())
    app.on_response_prepare.append(_add_request_id)
    return app


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["x-request-id"] = os.urandom(16).hex()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure, including the router's own 404/405/413, leaves in the provider's envelope:
    useapi's ``{error, code}`` under /v1/ltxstudio/, vydra's ``{error, code: "ERROR_CODE"}`` under
    /api/v1/, LTX's ``{type, error}`` elsewhere."""
    render = error_response
    if request.path.startswith(f"{ltxstudio.PREFIX}/") or request.path.startswith(
        tuple(f"{prefix}/" for prefix in useapi_services.PREFIXES)
    ):
        render = ltxstudio.error_response
    elif request.path.startswith(f"{vydra.PREFIX}/"):
        render = vydra.error_response
    try:
        return await handler(request)
    except ApiError as exc:
        return render(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return render(ApiError(exc.status, headers=_allow_header(exc)))
    except Exception:
        log.exception("emulator handler failed: %s %s", request.method, request.path)
        return render(ApiError(500))


def _allow_header(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    faults = request.app[STATE_KEY].faults
    if not faults or request.path.startswith(control.PREFIX):
        return await handler(request)
    fault = faults.take(request.method, request.path)
    if fault is None:
        return await handler(request)
    if fault.handled:
        response = await handler(request)
        if fault.hold_seconds > 0:
            await asyncio.sleep(fault.hold_seconds)
        if fault.accept_then_error:
            raise fault.to_error()
        if not fault.accept_then_drop:
            return response
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # discarded: the socket is closing
    if not fault.drop_connection:
        raise fault.to_error()
    await request.read()
    if request.transport is not None:
        request.transport.close()
    # The socket is already closing, so aiohttp discards this response instead of sending it.
    return web.Response(status=500)


async def serve(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8700, on_ready: ReadyCallback | None = None
) -> None:
    """Serve until SIGINT or SIGTERM; on_ready gets the bound host and port (useful with port 0)."""
    runner = web.AppRunner(create_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        await web.TCPSite(runner, host, port).start()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if on_ready is not None:
            on_ready(host, int(runner.addresses[0][1]))
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await runner.cleanup()


def run(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8700, on_ready: ReadyCallback | None = None
) -> None:
    asyncio.run(serve(config, host, port, on_ready))
