"""A worker holding leases is killed and its jobs show no more life (their status reads fail): the
leases run out, the sweep ends those jobs as timed out, their slots go to the waiting jobs, and no
job reaches the provider twice."""

from __future__ import annotations

import asyncio
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


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 2}, job_seconds=0.2)


async def events_until(client: aioredis.Redis, done: object) -> None:
    """Read the events stream from the start until ``done(fields_seen)`` says so."""
    seen: list[dict[str, str]] = []
    last = "0-0"
    while not done(seen):  # type: ignore[operator]
        for _, entries in await client.xread({keys.events_key("ltx"): last}, block=1000, count=500):
            for entry_id, fields in entries:
                last = entry_id
                seen.append(fields)


async def test_leases_of_a_killed_worker_expire_and_their_slots_return(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    daemon_processes,
    open_daemon,
    make_settings,
) -> None:
    env = process_env(
        tmp_path,
        redis_url,
        emulator.url,
        {"a1": 2},
        GENRELAY_LEASE_TTL="2",
        GENRELAY_SWEEP_INTERVAL="0.2",
        GENRELAY_POLL_MAX_ERRORS="1000",
    )
    await open_daemon(make_settings(emulator.url, {"a1": 2}))
    app = Client(redis_client)
    holder = await daemon_processes("worker", env)
    running = [
        await app.submit("ltx", "text-to-video", {"prompt": f"[seconds=8] long {n}", **T2V}) for n in range(2)
    ]
    async with asyncio.timeout(30):
        await events_until(
            redis_client, lambda seen: {e["job"] for e in seen if e["state"] == "active"} >= set(running)
        )
    await holder.stop(signal.SIGKILL)
    # From now on the long jobs give no sign of life: every status read of them fails.
    await emulator.fault(method="GET", path_prefix="/v2/text-to-video/", status=503, count=100_000)
    i2v = {**T2V, "image_uri": "https://example.com/a.png"}
    waiting = [
        await app.submit("ltx", "image-to-video", {"prompt": f"[ok] next {n}", **i2v}) for n in range(2)
    ]
    await daemon_processes("worker", env)
    async with asyncio.timeout(60):
        ended = [await app.wait(job_id) for job_id in running]
        following = [await app.wait(job_id) for job_id in waiting]
    for job in ended:
        assert job["status"]["type"] == "failed" and job["errorType"] == "timeout", job
        assert job["endedBy"] == "sweep"
    # The provider still ran the two timed-out jobs: the next ones met its 429 until those ended.
    assert [j["status"]["type"] for j in following] == ["completed", "completed"]
    assert await slot_index.lease_count(redis_client, "ltx", "a1") == 0
    prompts = [job["prompt"] for job in (await emulator.control("GET", "jobs"))["jobs"]]
    assert len(prompts) == len(set(prompts)) == 4
