"""A worker process killed with SIGKILL mid-run loses no job: a new worker finishes every one."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.client import Client
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, Emulator, process_env
from tests.harness import slots as slot_index

T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
ACCOUNTS = {"a1": 2, "a2": 2, "a3": 5}
JOBS = 24


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS[n]: m for n, m in ACCOUNTS.items()}, job_seconds=1.0)


async def wait_for_events(client: aioredis.Redis, state: str, count: int) -> None:
    """Block on the events stream until ``count`` jobs have reached ``state``."""
    seen: set[str] = set()
    last = "0-0"
    while len(seen) < count:
        for _, entries in await client.xread({keys.events_key("ltx"): last}, block=1000, count=500):
            for entry_id, fields in entries:
                last = entry_id
                if fields["state"] == state:
                    seen.add(fields["job"])


async def test_sigkill_worker_mid_run_loses_no_job(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    spawn,
    open_daemon,
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    env = process_env(tmp_path, redis_url, emulator.url, ACCOUNTS, GENRELAY_JOB_TIMEOUT="2")
    await open_daemon(make_settings(emulator.url, ACCOUNTS))  # loads the accounts before the first submit
    app = Client(redis_client)
    first = spawn("worker", env)
    ids = [await app.submit("ltx", "text-to-video", {"prompt": f"[ok] clip {n}", **T2V}) for n in range(JOBS)]
    async with asyncio.timeout(30):
        await wait_for_events(redis_client, "active", 5)
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait()
    spawn("worker", env)
    async with asyncio.timeout(90):
        jobs = [await app.wait(job_id) for job_id in ids]
    # A job whose submission the kill interrupted ends failed, saying so; every other one completes.
    for job in jobs:
        assert job["status"]["type"] == "completed" or job["errorType"] == "submit_interrupted", job
    assert sum(j["status"]["type"] == "completed" for j in jobs) >= JOBS - sum(ACCOUNTS.values())
    # No job was sent to the provider twice (prompts are unique per job).
    prompts = [job["prompt"] for job in (await emulator.control("GET", "jobs"))["jobs"]]
    assert len(prompts) == len(set(prompts))
    for name in ACCOUNTS:
        assert await slot_index.lease_count(redis_client, "ltx", name) == 0
    stats = (await emulator.stats())["keys"]
    for name, max_jobs in ACCOUNTS.items():
        assert stats[API_KEYS[name]]["peak"] <= max_jobs
