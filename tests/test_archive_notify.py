"""``archive: "before-notify"``: the completion is delivered to the app's replyUrl only once the
artifact is archived, and the body carries the archive's state. Real worker, emulator and app
receiver over HTTP on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon.archive_state import waiters_key
from daemon.client import Client
from daemon.keys import asset_id
from daemon.settings import Settings
from emulator.config import EmulatorConfig
from tests.archive_support import until
from tests.conftest import API_KEYS, Emulator

pytestmark = pytest.mark.timeout(120)

SIZE = 2_000_000
T2V = {"prompt": "a fox", "model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 2}, job_seconds=0.05, artifact_bytes=SIZE)


async def test_completion_is_delivered_once_archived(
    redis_client: aioredis.Redis,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
) -> None:
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    try:
        await emulator.configure(public_base=emulator.url, artifact_stall_after=SIZE // 2)
        settings = make_settings(
            emulator.url,
            accounts={"a1": 2},
            GENRELAY_ARCHIVE_ALLOW_PRIVATE="1",
            GENRELAY_DELIVERY_ALLOW_PRIVATE="1",
            GENRELAY_ARCHIVE_NOTIFY="before-notify",
        )
        await start_worker(settings)
        client = Client(redis_client)
        job_id = await client.submit("ltx", "text-to-video", T2V, reply_url=str(receiver.make_url("/hook")))
        async with asyncio.timeout(60):
            job = await client.wait(job_id)
            assert job["status"]["type"] == "completed"
            fields = await redis_client.hgetall(f"genrelay:{{ltx}}:job:{job_id}")
            asset = asset_id("ltx", fields["provider_job_id"], None, job_id)

            async def parked() -> bool:
                return bool(await redis_client.sismember(waiters_key(asset), f"{job_id}:{fields['seq']}"))

            await until(parked)  # the delivery waits while the copy is held mid-way
            assert received.empty()
            await emulator.configure(artifact_stall_after=0)
            body = await received.get()
        assert body["jobId"] == job_id
        assert body["status"]["artifact"]["assetId"] == asset
        assert body["status"]["artifact"]["archive"]["state"] == "archived"
        assert body["status"]["artifact"]["archive"]["bytes"] == SIZE
    finally:
        await receiver.close()
