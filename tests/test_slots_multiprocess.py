"""The allocator's promise with several processes at once: 2 web processes take 200 jobs over HTTP,
4 worker processes submit them; the emulator's own per-key record of concurrent jobs never goes
over the account's maxJobs, every job completes, and every slot is free at the end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from daemon.client import Client
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, Emulator, process_env

ACCOUNTS = {"a1": 1, "a2": 2, "a3": 5}
JOBS = 200
WEB = 2
WORKERS = 4
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    # The emulator enforces the same limits: over-allocation would show as 429s and as a peak above maxJobs.
    return EmulatorConfig(
        keys={API_KEYS[n]: m for n, m in ACCOUNTS.items()}, job_seconds=0.2, job_seconds_jitter=0.5
    )


async def post_jobs(http: aiohttp.ClientSession, base: str, numbers: range) -> list[str]:
    ids = []
    for n in numbers:
        body = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": f"[ok] job {n}", **T2V}}
        async with http.post(f"{base}/v1/jobs", json=body) as resp:
            assert resp.status == 202, await resp.text()
            ids.append((await resp.json())["jobId"])
    return ids


@pytest.mark.slow
async def test_no_account_ever_exceeds_max_jobs_with_many_processes(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    daemon_processes,  # type: ignore[no-untyped-def]
) -> None:
    base_env = process_env(tmp_path, redis_url, emulator.url, ACCOUNTS, GENRELAY_POLL_INTERVAL="0.1")
    webs = []
    for _ in range(WEB):
        env = {**base_env, "GENRELAY_PORT": "0"}
        webs.append(await daemon_processes("web", env, ready_line="genrelay web listening on"))
    for _ in range(WORKERS):
        await daemon_processes("worker", base_env)
    bases = [web.address for web in webs]
    async with aiohttp.ClientSession() as http:
        halves = [range(i, JOBS, WEB) for i in range(WEB)]
        batches = await asyncio.gather(
            *(post_jobs(http, base, half) for base, half in zip(bases, halves, strict=True))
        )
        ids = [job_id for batch in batches for job_id in batch]
        client = Client(redis_client)
        async with asyncio.timeout(180):
            jobs = [await client.wait(job_id) for job_id in ids]
        async with http.get(f"{bases[0]}/v1/scheduler/available") as resp:
            capacity = await resp.json()
    assert [j["status"]["type"] for j in jobs] == ["completed"] * JOBS
    stats = (await emulator.stats())["keys"]
    for name, max_jobs in ACCOUNTS.items():
        assert 1 <= stats[API_KEYS[name]]["peak"] <= max_jobs, (name, stats[API_KEYS[name]])
    assert sum(stats[API_KEYS[n]]["submitted"] for n in ACCOUNTS) == JOBS
    assert {a["email"]: a["executing"] for a in capacity["available"]} == {n: 0 for n in ACCOUNTS}
    assert capacity["executing"] == []
