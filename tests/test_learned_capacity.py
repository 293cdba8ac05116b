"""Learned capacity over real processes (docs/slots.md "Learned capacity"): a 2-slot LTX key with
one slot held by a job started outside genrelay. The emulator answers the submit that finds both
slots busy with a 429 ``concurrency_limit_error`` (https://docs.ltx.video/rate-limits); the account's
effective slot count drops to one, so 10 jobs complete with at most 3 such 429s (one, plus one per
quiet period in which a slot came back to be tried again), where counting on ``maxJobs`` alone drew
one per job. Once the foreign job ends, the slot comes back after the quiet period. A rate 429
(``rate_limit_error``) only cools the account down: the effective count is untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.client import Client
from emulator.config import EmulatorConfig
from tests.archive_support import until
from tests.conftest import API_KEYS, Emulator, process_env

KEY = API_KEYS["a1"]
ACCOUNTS = {"a1": 2}
JOBS = 10
# The quiet period after which a learned slot comes back: longer than the 10 jobs take on one slot,
# so that it is tried again at most about twice while the foreign job runs.
RECOVERY_S = 8
T2V = {"model": "ltx-2-3-fast", "duration": 4, "resolution": "1920x1080"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={KEY: 2}, job_seconds=0.2, retry_after_seconds=1, seed=16)


async def account_view(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/v1/scheduler/available") as resp:
        assert resp.status == 200, await resp.text()
        capacity = await resp.json()
    entry: dict[str, Any] = next(a for a in capacity["available"] if a["email"] == "a1")
    return entry


async def key_stats(emulator: Emulator) -> dict[str, Any]:
    stats: dict[str, Any] = (await emulator.stats())["keys"]  # type: ignore[assignment]
    entry: dict[str, Any] = stats[KEY]
    return entry


async def start(
    tmp_path: Path, redis_url: str, emulator: Emulator, daemon_processes: Any
) -> tuple[str, dict[str, str]]:
    env = process_env(
        tmp_path,
        redis_url,
        emulator.url,
        ACCOUNTS,
        GENRELAY_CAPACITY_RECOVERY=str(RECOVERY_S),
        GENRELAY_SWEEP_INTERVAL="0.5",
    )
    web = await daemon_processes.web(env)
    for _ in range(2):
        await daemon_processes.worker(env)
    assert web.address is not None
    return web.address, env


@pytest.mark.slow
async def test_a_foreign_job_lowers_the_effective_slots_and_its_end_restores_them(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    daemon_processes: Any,
) -> None:
    foreign = await emulator.control("POST", "ltx-foreign-jobs", {"key": KEY})
    base, _ = await start(tmp_path, redis_url, emulator, daemon_processes)
    client = Client(redis_client)
    async with aiohttp.ClientSession() as http:
        assert (await account_view(http, base))["effectiveMaxJobs"] == 2
        ids = [
            await client.submit("ltx", "text-to-video", {"prompt": f"[ok] job {n}", **T2V})
            for n in range(JOBS)
        ]

        async def learned_one() -> bool:
            return bool((await account_view(http, base))["effectiveMaxJobs"] == 1)

        async with asyncio.timeout(60):
            await until(learned_one)
        # While the foreign job runs, the key never had more than its 2 slots busy.
        async with asyncio.timeout(120):
            jobs = [await client.wait(job_id) for job_id in ids]
        assert [job["status"]["type"] for job in jobs] == ["completed"] * JOBS
        during = await key_stats(emulator)
        assert 1 <= during["rejected_concurrency"] <= 3, during
        assert during["rejected_rate"] == 0, during
        assert during["peak"] <= 2, during
        assert during["submitted"] == JOBS, during

        await emulator.control("DELETE", f"ltx-foreign-jobs/{foreign['id']}")

        async def restored() -> bool:
            return bool((await account_view(http, base))["effectiveMaxJobs"] == 2)

        async with asyncio.timeout(RECOVERY_S * 4):
            await until(restored)
        view = await account_view(http, base)
        assert (view["maxJobs"], view["foreign"], view["cooldownUntil"]) == (2, 0, None)

        # Both slots are used again: two long jobs run side by side, with no new 429.
        more = [
            await client.submit("ltx", "text-to-video", {"prompt": f"[ok] [seconds=1] more {n}", **T2V})
            for n in range(2)
        ]

        async def both_running() -> bool:
            return bool((await key_stats(emulator))["executing"] == 2)

        async with asyncio.timeout(30):
            await until(both_running)
            finished = [await client.wait(job_id) for job_id in more]
    assert [job["status"]["type"] for job in finished] == ["completed"] * 2
    after = await key_stats(emulator)
    assert after["rejected_concurrency"] == during["rejected_concurrency"], after
    assert await redis_client.hgetall(keys.provider_keys("ltx").learned) == {}


@pytest.mark.slow
async def test_a_rate_429_cools_the_account_down_and_leaves_its_slots(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    daemon_processes: Any,
) -> None:
    await emulator.configure(ltx_rate_limit_rate=1.0)
    base, _ = await start(tmp_path, redis_url, emulator, daemon_processes)
    client = Client(redis_client)
    async with aiohttp.ClientSession() as http:
        job_id = await client.submit("ltx", "text-to-video", {"prompt": "[ok] rate limited", **T2V})

        async def cooling() -> bool:
            view = await account_view(http, base)
            return bool(view["cooldownUntil"]) and (await key_stats(emulator))["rejected_rate"] >= 1

        async with asyncio.timeout(30):
            await until(cooling)
        view = await account_view(http, base)
        assert (view["maxJobs"], view["effectiveMaxJobs"]) == (2, 2)
        assert await redis_client.hgetall(keys.provider_keys("ltx").learned) == {}

        await emulator.configure(ltx_rate_limit_rate=0.0)
        async with asyncio.timeout(60):
            job = await client.wait(job_id)
        assert job["status"]["type"] == "completed"
        view = await account_view(http, base)
    stats = await key_stats(emulator)
    assert stats["rejected_concurrency"] == 0 and stats["rejected_rate"] >= 1, stats
    assert view["effectiveMaxJobs"] == 2
    assert await redis_client.zcard(keys.provider_keys("ltx").learned_due) == 0
