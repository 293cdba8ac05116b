"""Redis goes away and comes back: the web answers 503 (never 500) meanwhile, and recovers by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import ConnectionError as RedisConnectionError

from daemon.client import Client
from daemon.embedded_redis import EmbeddedRedis
from daemon.redis_connection import connect
from daemon.settings import Settings
from daemon.web.app import create_app
from tests.conftest import Emulator, process_env
from tests.harness.processes import DaemonProcess
from tests.harness.redis_server import RedisServer

JOB = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "x"}}
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


async def test_readyz_goes_503_while_redis_is_down_and_back_to_200(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    url = server.start()
    settings = Settings.from_env(process_env(tmp_path, url, "http://127.0.0.1:9", {"a1": 1}))
    client = TestClient(TestServer(create_app(settings, url), host="127.0.0.1"))
    await client.start_server()
    # The same data dir is the same unix socket, hence the same URL.
    restarted = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    try:
        assert (await client.get("/readyz")).status == 200
        server.stop()
        down = await client.get("/readyz")
        assert down.status == 503
        assert "Redis" in (await down.json())["error"]
        refused = await client.post("/v1/jobs", json=JOB)
        assert refused.status == 503
        assert (await refused.json())["code"] == 503
        # Same socket, same AOF: the data (accounts included) is back, and so is the web.
        restarted.start()
        assert (await client.get("/readyz")).status == 200
        assert (await client.post("/v1/jobs", json=JOB)).status == 202
    finally:
        await client.close()
        restarted.stop()
        server.stop()


async def test_a_worker_started_before_redis_waits_for_it_and_then_works(
    tmp_path: Path, emulator: Emulator, daemon_processes: Callable[..., Awaitable[DaemonProcess]]
) -> None:
    """arq gives up after five connection attempts at start and the process would exit;
    ``genrelay worker`` says Redis is unreachable, waits with backoff and starts once it answers."""
    server = RedisServer(tmp_path / "redis")
    await asyncio.to_thread(server.start)
    await asyncio.to_thread(server.stop)  # the port is known, nothing listens on it
    env = process_env(tmp_path, server.url, emulator.url, {"a1": 2})
    worker = await daemon_processes("worker", env, ready_line="Redis is unreachable")
    await asyncio.to_thread(server.start)
    client = await connect(server.url)
    try:
        job_id = await Client(client).submit(
            "ltx", "text-to-video", {"prompt": "[ok] after start", **T2V}, account="a1"
        )
        async with asyncio.timeout(60):
            job = await Client(client).wait(job_id)
        assert job["status"]["type"] == "completed"
        assert worker.process.returncode is None
    finally:
        await client.aclose()
        await worker.stop()
        await asyncio.to_thread(server.stop)


async def test_a_job_start_cut_by_redis_gives_back_its_place_in_max_jobs(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """arq counts a job against max_jobs before the Redis calls that take it; when those fail it
    never gave the place back, so each outage cost one place until the worker took no job at all."""
    from workers.worker import build_worker

    server = RedisServer(tmp_path / "redis")
    await asyncio.to_thread(server.start)
    await asyncio.to_thread(server.stop)  # nothing listens on its port now
    worker = build_worker(make_settings(GENRELAY_WORKER_CONCURRENCY="1"), server.url, handle_signals=False)
    try:
        for _ in range(3):
            with pytest.raises(RedisConnectionError):
                await worker.start_jobs([b"submit:ltx-0"])
        assert worker.job_counter == 0
        assert not worker.sem.locked()
    finally:
        await worker.pool.aclose()
