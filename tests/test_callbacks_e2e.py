"""Callbacks end to end: the emulator's useapi LTX Studio calls our replyUrl over real HTTP, the web
app takes it, a worker confirms it with a status read, and lost or early callbacks lose nothing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from daemon import keys
from daemon.client import Client
from daemon.services import Services
from daemon.web.app import create_app
from emulator.config import EmulatorConfig
from tests.conftest import USEAPI_TOKEN, Emulator

EMAIL = "me@example.com"
ACCOUNT = f"ltxstudio/{EMAIL}"


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(useapi_accounts={USEAPI_TOKEN: {EMAIL: 2}}, job_seconds=0.3)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def relay(
    emulator: Emulator, make_settings, open_daemon, start_worker, redis_url: str
) -> AsyncIterator[Callable[..., Awaitable[Services]]]:
    """Start web (on the public URL the provider calls) and a worker with extra settings."""
    servers: list[TestServer] = []

    async def start(**env: str) -> Services:
        port = free_port()
        settings = make_settings(
            emulator.url, accounts={ACCOUNT: 2}, GENRELAY_PUBLIC_URL=f"http://127.0.0.1:{port}", **env
        )
        services = await open_daemon(settings)
        server = TestServer(create_app(settings, redis_url), host="127.0.0.1", port=port)
        await server.start_server()
        servers.append(server)
        await start_worker(settings)
        return services

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


async def run_job(app: Client, prompt: str) -> dict[str, Any]:
    job_id = await app.submit("ltxstudio", "videos/ltx-create", {"prompt": prompt})
    async with asyncio.timeout(30):
        return await app.wait(job_id)


async def sources(app: Client, job_id: str) -> list[str]:
    return [
        f"{f['source']}:{f['state']}"
        for _, f in await app.redis.xrange(keys.events_key("ltxstudio"))
        if f["job"] == job_id
    ]


async def test_a_completion_callback_is_confirmed_by_a_status_read(
    relay, app_client: Client, emulator: Emulator
) -> None:
    # The safety poll is far away: only the callback can make the job finish this fast.
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="600")
    job = await run_job(app_client, "a lighthouse")
    assert job["status"]["type"] == "completed", job
    assert job["status"]["artifact"]["assetUrl"].startswith("http")
    # The provider's own answer ended it, read because the callback said so.
    assert job["endedBy"] == "callback"
    assert "callback:active" in await sources(app_client, job["jobId"])
    stats = await emulator.stats()
    assert stats["submissions_by_ref"] == {job["jobId"]: 1}


async def test_a_callback_before_the_submit_response_is_kept(
    relay, app_client: Client, emulator: Emulator
) -> None:
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="600")
    await emulator.configure(webhook_before_submit_response=True, webhook_progress=True)
    job = await run_job(app_client, "an early bird")
    assert job["status"]["type"] == "completed", job
    assert job["submitTries"] == 1


async def test_a_lost_callback_is_recovered_by_the_safety_poll(
    relay, app_client: Client, emulator: Emulator
) -> None:
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="0.5")
    await emulator.configure(webhook_drop_rate=1.0)
    job = await run_job(app_client, "a message in a bottle")
    assert job["status"]["type"] == "completed", job
    assert not any(s.startswith("callback:") for s in await sources(app_client, job["jobId"]))
    assert job["endedBy"] == "safety_poll"


async def test_completed_without_artifact_keeps_reading_until_it_is_there(
    relay, app_client: Client, emulator: Emulator
) -> None:
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="600")
    await emulator.configure(completed_without_artifact_reads=2)
    job = await run_job(app_client, "patience")
    assert job["status"]["type"] == "completed", job
    assert job["status"]["artifact"]["assetUrl"]


async def test_duplicated_and_reordered_callbacks_change_nothing(
    relay, app_client: Client, emulator: Emulator
) -> None:
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="600")
    await emulator.configure(webhook_duplicate_rate=1.0, webhook_reorder=True, webhook_progress=True)
    job = await run_job(app_client, "twice")
    assert job["status"]["type"] == "completed", job
    events = await sources(app_client, job["jobId"])
    assert sum(e.endswith(":completed") for e in events) == 1
    assert (await app_client.get(job["jobId"]))["status"]["type"] == "completed"
