"""One job path end to end: app client -> Redis -> worker -> emulator over HTTP -> terminal state."""

from __future__ import annotations

import asyncio

import pytest

from daemon.client import Client
from tests.conftest import API_KEYS, Emulator
from tests.harness import slots as slot_index

WAIT_S = 30
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


async def run(client: Client, job_id: str) -> dict[str, object]:
    async with asyncio.timeout(WAIT_S):
        return await client.wait(job_id)


@pytest.fixture
async def daemon(emulator: Emulator, make_settings, start_worker, open_daemon):  # type: ignore[no-untyped-def]
    settings = make_settings(emulator.url, accounts={"a1": 2})
    services = await open_daemon(settings)
    await start_worker(settings)
    return services


async def test_submit_poll_completed(daemon, app_client: Client, emulator: Emulator) -> None:  # type: ignore[no-untyped-def]
    """A job submitted through Redis is sent once, polled to ``completed`` and records its artifact,
    account and provider job id."""
    job_id = await app_client.submit("ltx", "text-to-video", {"prompt": "a cat [ok]", **T2V})
    job = await run(app_client, job_id)
    status = job["status"]
    assert status["type"] == "completed", job
    assert status["artifact"]["assetUrl"].endswith(".mp4")
    assert job["account"] == "a1" and job["providerJobId"]
    stats = await emulator.stats()
    assert stats["keys"][API_KEYS["a1"]]["submitted"] == 1


async def test_provider_failure_ends_failed_with_its_message(daemon, app_client: Client) -> None:  # type: ignore[no-untyped-def]
    job_id = await app_client.submit(
        "ltx", "image-to-video", {"prompt": "x [fail]", "image_uri": "https://a/b.png", **T2V}
    )
    job = await run(app_client, job_id)
    assert job["status"]["type"] == "failed"
    assert job["status"]["message"]


async def test_hdr_result_key_is_exr_frames(daemon, app_client: Client) -> None:  # type: ignore[no-untyped-def]
    job_id = await app_client.submit(
        "ltx", "video-to-video-hdr", {"video_uri": "https://a/b.mp4", "prompt": "[ok]"}
    )
    job = await run(app_client, job_id)
    assert job["status"]["type"] == "completed", job
    assert job["status"]["artifact"]["kind"] == "exr_frames"


async def test_invalid_request_through_redis_ends_failed_and_says_why(daemon, app_client: Client) -> None:  # type: ignore[no-untyped-def]
    job_id = await app_client.submit("ltx", "paint-a-house", {"prompt": "x"})
    job = await run(app_client, job_id)
    assert job["status"]["type"] == "failed"
    assert "unknown operation 'paint-a-house'" in job["status"]["message"]


async def test_slot_is_released_after_each_job(daemon, app_client: Client) -> None:  # type: ignore[no-untyped-def]
    ids = [await app_client.submit("ltx", "text-to-video", {"prompt": f"n{i} [ok]", **T2V}) for i in range(5)]
    for job_id in ids:
        assert (await run(app_client, job_id))["status"]["type"] == "completed"
    assert await slot_index.lease_count(daemon.client, "ltx", "a1") == 0
