"""Cancelling a job over HTTP: it ends at once, its slot goes on, the provider is asked to stop it
where it can, and the job says what the provider did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from daemon import keys
from daemon.client import Client
from daemon.services import Services
from daemon.web.app import create_app
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, USEAPI_TOKEN, Emulator
from tests.harness import slots as slot_index

EMAIL = "me@example.com"
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        keys={API_KEYS["a1"]: 2}, useapi_accounts={USEAPI_TOKEN: {EMAIL: 1}}, job_seconds=60
    )


@pytest.fixture
async def relay(
    emulator: Emulator, make_settings, open_daemon, start_worker, redis_url: str
) -> AsyncIterator[tuple[Services, TestClient]]:
    settings = make_settings(emulator.url, accounts={"a1": 2, f"ltxstudio/{EMAIL}": 1})
    services = await open_daemon(settings)
    await start_worker(settings)
    client = TestClient(TestServer(create_app(settings, redis_url), host="127.0.0.1"))
    await client.start_server()
    try:
        yield services, client
    finally:
        await client.close()


async def event(redis: aioredis.Redis, provider: str, job_id: str | set[str], state: str) -> str:
    """Wait on the events stream until ``job_id`` (or one of several) reaches ``state``; returns which."""
    wanted = {job_id} if isinstance(job_id, str) else job_id
    last = "0-0"
    while True:
        for _, entries in await redis.xread({keys.events_key(provider): last}, block=1000, count=500):
            for entry_id, fields in entries:
                last = entry_id
                if fields["job"] in wanted and fields["state"] == state:
                    return str(fields["job"])


async def cancel(client: TestClient, job_id: str) -> tuple[int, dict[str, Any]]:
    resp = await client.delete(f"/v1/jobs/{job_id}")
    return resp.status, await resp.json()


async def test_a_running_useapi_job_is_stopped_there_and_its_slot_freed(
    relay, app_client: Client, emulator: Emulator
) -> None:
    services, client = relay
    jobs = {await app_client.submit("ltxstudio", "videos/ltx-create", {"prompt": p}) for p in ("a", "b")}
    async with asyncio.timeout(30):
        running = await event(services.client, "ltxstudio", jobs, "active")  # the account has one slot
    [waiting] = jobs - {running}
    status, body = await cancel(client, running)
    assert status == 200, body
    assert body["status"]["type"] == "canceled" and body["cancel"] == {"atProvider": "requested"}
    async with asyncio.timeout(30):
        await event(services.client, "ltxstudio", running, "provider_canceled")
        await event(services.client, "ltxstudio", waiting, "active")  # the freed slot went on
    job = await app_client.get(running)
    assert job is not None and "stopped tracking" in job["cancelNote"]
    scheduler = await emulator.session.get(
        f"{emulator.url}/v1/ltxstudio/scheduler", headers={"Authorization": f"Bearer {USEAPI_TOKEN}"}
    )
    listed = [entry["jobId"] for entry in await scheduler.json()]
    assert job["providerJobId"] not in listed


async def test_an_ltx_job_is_canceled_here_and_the_note_says_ltx_cannot(relay, app_client: Client) -> None:
    services, client = relay
    job_id = await app_client.submit("ltx", "text-to-video", {"prompt": "x", **T2V})
    async with asyncio.timeout(30):
        await event(services.client, "ltx", job_id, "active")
    assert (await cancel(client, job_id))[0] == 200
    async with asyncio.timeout(30):
        await event(services.client, "ltx", job_id, "provider_canceled")
    job = await app_client.get(job_id)
    assert job is not None and "has no cancel" in job["cancelNote"]
    assert await slot_index.lease_count(services.client, "ltx", "a1") == 0


async def test_a_waiting_job_is_canceled_without_the_provider(relay, app_client: Client) -> None:
    services, client = relay
    jobs = {await app_client.submit("ltxstudio", "videos/ltx-create", {"prompt": p}) for p in ("one", "two")}
    async with asyncio.timeout(30):
        first = await event(services.client, "ltxstudio", jobs, "active")  # the account has one slot
    [second] = jobs - {first}
    async with asyncio.timeout(30):
        await event(services.client, "ltxstudio", second, "queued")  # accepted, and waiting
    assert (await services.store.require(second)).state.value == "queued"
    status, body = await cancel(client, second)
    assert status == 200 and body["cancel"] == {"atProvider": "not submitted"}
    assert second not in await slot_index.waiting_jobs(services.client, "ltxstudio")


async def test_cancel_of_an_ended_or_unknown_job_is_a_clear_4xx(relay, app_client: Client) -> None:
    services, client = relay
    job_id = await app_client.submit("ltx", "text-to-video", {"prompt": "x", **T2V})
    async with asyncio.timeout(30):
        await event(services.client, "ltx", job_id, "active")
    assert (await cancel(client, job_id))[0] == 200
    status, body = await cancel(client, job_id)
    assert status == 409 and "already ended (canceled)" in body["error"]
    status, body = await cancel(client, "ltx-" + "0" * 32)
    assert status == 404 and body["code"] == 404
