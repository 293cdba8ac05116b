"""Every Redis call on a request path is bounded: with Redis blackholed (connections open, no reply
ever), each web request answers within 5 s, a 503 with Retry-After (probes and /metrics: their own
answers), instead of hanging for the client-side reply timeout and its retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from daemon.settings import Settings
from daemon.web.app import create_app
from tests.harness.proxy import FaultProxy
from tests.harness.redis_server import RedisServer

# The promise: a client with a 5 s deadline always gets an answer.
CLIENT_DEADLINE_S = 5.0
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[FaultProxy]:
    """A proxy to a Redis of the test's own on a TCP port (the session's server has only a socket)."""
    server = RedisServer(tmp_path / "redis", appendonly=False)
    await asyncio.to_thread(server.start)
    started = await FaultProxy("127.0.0.1", server.port, password=server.password).start()
    try:
        yield started
    finally:
        await started.close()
        await asyncio.to_thread(server.stop)


@pytest.mark.timeout(90)
async def test_requests_answer_503_within_5_s_while_redis_is_blackholed(
    proxy: FaultProxy, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    server = TestServer(create_app(settings, proxy.url), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    body = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "x", **T2V}}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_DEADLINE_S)) as http:
            async with http.post(f"{base}/v1/jobs", json=body) as resp:
                assert resp.status == 202, await resp.text()
                job_id = (await resp.json())["jobId"]
            proxy.blackhole()
            requests = [
                ("GET", f"/v1/jobs/{job_id}", None),
                ("POST", "/v1/jobs", body),
                ("GET", "/v1/jobs?provider=ltx", None),
                ("DELETE", f"/v1/jobs/{job_id}", None),
                ("GET", f"/v1/jobs/{job_id}", None),  # again: on connections the first ones broke
            ]
            for method, path, payload in requests:
                async with http.request(method, f"{base}{path}", json=payload) as resp:
                    assert resp.status == 503, (method, path, resp.status, await resp.text())
                    assert resp.headers["Retry-After"]
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 503
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200 and "genrelay_redis_up 0.0" in await resp.text()
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            proxy.pass_through()
            async with http.get(f"{base}/v1/jobs/{job_id}") as resp:
                assert resp.status == 200, await resp.text()
    finally:
        await server.close()
