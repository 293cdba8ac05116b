"""A rolling restart with jobs in flight: each web and worker process gets SIGTERM in turn and a
replacement starts. Every job ends, no slot leaks, nothing is sent twice and no try is spent."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from daemon.client import Client
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, Emulator, process_env
from tests.harness import slots as slot_index

ACCOUNTS = {"a1": 2, "a2": 3}
JOBS = 40
READY = "genrelay web listening on"
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS[n]: m for n, m in ACCOUNTS.items()}, job_seconds=0.5)


@pytest.mark.slow
async def test_rolling_restart_loses_nothing(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, emulator: Emulator, daemon_processes
) -> None:
    env = process_env(
        tmp_path, redis_url, emulator.url, ACCOUNTS, GENRELAY_POLL_INTERVAL="0.1", GENRELAY_PORT="0"
    )
    webs = [await daemon_processes("web", env, ready_line=READY) for _ in range(2)]
    workers = [await daemon_processes("worker", env) for _ in range(2)]
    ids = []
    async with aiohttp.ClientSession() as http:
        for n in range(JOBS):
            body = {
                "provider": "ltx",
                "operation": "text-to-video",
                "params": {"prompt": f"[ok] r{n}", **T2V},
            }
            async with http.post(f"{webs[n % 2].address}/v1/jobs", json=body) as resp:
                assert resp.status == 202
                ids.append((await resp.json())["jobId"])
        for old in [*webs, *workers]:
            assert await old.stop(signal.SIGTERM) == 0, "".join(old.lines[-20:])
            ready = READY if old.command == "web" else None
            replacement = await daemon_processes(old.command, env, ready_line=ready)
            if old.command == "web":
                async with http.get(f"{replacement.address}/readyz") as resp:
                    assert resp.status == 200
    client = Client(redis_client)
    async with asyncio.timeout(120):
        jobs = [await client.wait(job_id) for job_id in ids]
    assert [j["status"]["type"] for j in jobs] == ["completed"] * JOBS, [j["status"] for j in jobs]
    assert [j["submitTries"] for j in jobs] == [1] * JOBS
    for name in ACCOUNTS:
        assert await slot_index.lease_count(redis_client, "ltx", name) == 0
    prompts = [job["prompt"] for job in (await emulator.control("GET", "jobs"))["jobs"]]
    assert len(prompts) == len(set(prompts)) == JOBS
