"""A graceful Redis restart (same port, same AOF) does not end a worker: its queue loop notices
Redis is gone, waits, reconnects, and runs the jobs enqueued after the restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daemon.client import Client
from daemon.embedded_redis import EmbeddedRedis
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, Emulator, process_env

ACCOUNTS = {"a1": 2}
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
STARTED = "worker started"
UNREACHABLE = "Redis is unreachable"  # the worker says so, then keeps going


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 2}, job_seconds=0.1)


async def run_job(url: str, prompt: str) -> str:
    client = await Client.connect(url)
    try:
        job_id = await client.submit("ltx", "text-to-video", {"prompt": f"[ok] {prompt}", **T2V})
        async with asyncio.timeout(60):
            job = await client.wait(job_id)
    finally:
        await client.close()
    return str(job["status"]["type"])


@pytest.mark.timeout(120)
async def test_worker_outlives_a_redis_restart(tmp_path: Path, emulator: Emulator, daemon_processes) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    url = server.start()
    restarted = EmbeddedRedis(tmp_path / "redis", appendonly=True)  # same data dir: same socket and URL
    try:
        env = process_env(tmp_path, url, emulator.url, ACCOUNTS, GENRELAY_POLL_INTERVAL="0.05")
        worker = await daemon_processes("worker", env, ready_line=STARTED)
        assert await run_job(url, "before") == "completed"
        server.stop()
        async with asyncio.timeout(30):
            while not any(UNREACHABLE in line for line in worker.lines):
                assert worker.process.returncode is None, "".join(worker.lines[-30:])
                await asyncio.sleep(0.05)
        restarted.start()
        assert await run_job(url, "after") == "completed"
        assert worker.process.returncode is None, "".join(worker.lines[-30:])
    finally:
        restarted.stop()
        server.stop()
