"""Kling, MiniMax, PixVerse and Runway end to end: the web app on the public URL the emulator calls
back, workers, Redis and the emulator over real HTTP. Callbacks (Kling's progress ones too) end
the jobs; 120 jobs over accounts of all four services at once keep every account within its
``maxJobs``, submit nothing twice, and the capacity mirror agrees with the emulator's listings."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from daemon import keys
from daemon.client import Client
from daemon.services import Services
from daemon.web.app import create_app
from emulator.config import EmulatorConfig
from tests.conftest import USEAPI_TOKEN, Emulator

pytestmark = pytest.mark.timeout(240)

ACCOUNTS: dict[str, dict[str, int]] = {
    "kling": {"k1@example.com": 2, "k2@example.com": 3},
    "minimax": {"300001": 2, "300002": 2},
    "pixverse": {"p1@example.com": 2, "p2@example.com": 1},
    "runwayml": {"r1@example.com": 2, "r2@example.com": 2},
}
WORK: dict[str, list[str]] = {
    "kling": ["videos/text2video", "images/kolors"],
    "minimax": ["videos/create", "images/create"],
    "pixverse": ["videos/create", "images/create"],
    "runwayml": ["videos/create", "gen4_5/create"],
}
LISTING = {"kling": "/v1/kling", "minimax": "/v1/minimax", "pixverse": "/v2/pixverse"}
OUR_FAILURES = {"timeout", "submit_interrupted", "submit_failed", "lost"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        useapi_services={service: {USEAPI_TOKEN: names} for service, names in ACCOUNTS.items()},
        job_seconds=0.3,
        job_seconds_jitter=0.5,
        seed=5,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def relay(
    emulator: Emulator, make_settings, open_daemon, start_worker, redis_url: str
) -> AsyncIterator[Callable[..., Awaitable[tuple[Services, str]]]]:
    """Start web (on the public URL the provider calls) and ``workers`` workers."""
    servers: list[TestServer] = []

    async def start(workers: int = 1, **env: str) -> tuple[Services, str]:
        port = free_port()
        accounts = {f"{s}/{name}": n for s, names in ACCOUNTS.items() for name, n in names.items()}
        settings = make_settings(
            emulator.url, accounts=accounts, GENRELAY_PUBLIC_URL=f"http://127.0.0.1:{port}", **env
        )
        services = await open_daemon(settings)
        server = TestServer(create_app(settings, redis_url), host="127.0.0.1", port=port)
        await server.start_server()
        servers.append(server)
        for _ in range(workers):
            await start_worker(settings)
        return services, f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


async def sources(app: Client, provider: str, job_id: str) -> list[str]:
    return [
        f"{f['source']}:{f['state']}"
        for _, f in await app.redis.xrange(keys.events_key(provider))
        if f["job"] == job_id
    ]


@pytest.mark.parametrize("service", list(ACCOUNTS))
async def test_callbacks_end_the_jobs_progress_ones_from_kling(
    relay, app_client: Client, emulator: Emulator, service: str
) -> None:
    # The safety poll is far away and status reads rare: the callbacks carry the news.
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="600")
    job_id = await app_client.submit(service, WORK[service][0], {"prompt": "[seconds=0.6] a lighthouse"})
    async with asyncio.timeout(30):
        job = await app_client.wait(job_id)
    assert job["status"]["type"] == "completed", job
    assert job["status"]["artifact"]["assetUrl"].startswith("http")
    assert job["endedBy"] == "callback", job
    events = await sources(app_client, service, job_id)
    assert any(s.startswith("callback:") for s in events), events
    if service == "kling":
        # Its progress callbacks move the job on (Kling's "processing" reads as half way).
        progress = [
            int(f["progress"])
            for _, f in await app_client.redis.xrange(keys.events_key(service))
            if f["job"] == job_id and f["source"] == "callback" and f["state"] == "active"
        ]
        assert 50 in progress, (progress, events)
    stats: dict[str, Any] = await emulator.stats()
    callbacks = stats["useapi_services_callbacks"]
    # Kling: two progress callbacks and the result; the others: the result only.
    assert callbacks["sent_by_ref"] == {job_id: 3 if service == "kling" else 1}, callbacks
    assert callbacks["delivered"] == callbacks["sent"], callbacks
    assert stats["useapi_services"][service]["submissions_by_ref"] == {job_id: 1}


async def test_kling_duplicated_and_reordered_callbacks_change_nothing(
    relay, app_client: Client, emulator: Emulator
) -> None:
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="600")
    await emulator.configure(webhook_duplicate_rate=1.0, webhook_reorder=True)
    job_id = await app_client.submit("kling", "videos/text2video", {"prompt": "[seconds=0.6] twice"})
    async with asyncio.timeout(30):
        job = await app_client.wait(job_id)
    assert job["status"]["type"] == "completed", job
    await emulator.control("POST", "webhooks/flush")  # waits for the sender, too
    stats: dict[str, Any] = await emulator.stats()
    # Two progress callbacks, the result and a stale progress one after it, each sent twice.
    assert stats["useapi_services_callbacks"]["sent_by_ref"] == {job_id: 8}
    events = await sources(app_client, "kling", job_id)
    assert sum(e.endswith(":completed") for e in events) == 1, events
    assert (await app_client.get(job_id) or {})["status"]["type"] == "completed"


@pytest.mark.parametrize("service", ["kling", "minimax"])
async def test_a_callback_before_the_submit_answer_and_progress_callbacks_are_kept(
    relay, app_client: Client, emulator: Emulator, service: str
) -> None:
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="600")
    await emulator.configure(webhook_before_submit_response=True, webhook_progress=True)
    job_id = await app_client.submit(service, WORK[service][0], {"prompt": "[seconds=0.6] an early bird"})
    async with asyncio.timeout(30):
        job = await app_client.wait(job_id)
    assert job["status"]["type"] == "completed" and job["submitTries"] == 1, job
    await emulator.control("POST", "webhooks/flush")
    stats: dict[str, Any] = await emulator.stats()
    # The early one, two progress callbacks and the result.
    assert stats["useapi_services_callbacks"]["sent_by_ref"] == {job_id: 4}
    assert stats["useapi_services"][service]["submissions_by_ref"] == {job_id: 1}


async def until(check: Callable[[], Awaitable[Any]], seconds: float = 30) -> Any:
    """Poll ``check`` (Redis or emulator state) until it returns something truthy."""
    async with asyncio.timeout(seconds):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.05)


async def test_cancel_stops_the_tracking_at_useapi(relay, app_client: Client, emulator: Emulator) -> None:
    _, web = await relay(GENRELAY_SAFETY_POLL_INTERVAL="600")
    job_id = await app_client.submit("minimax", "videos/create", {"prompt": "[seconds=30] long"})
    await until(lambda: app_client.redis.hget(keys.job_key(job_id), "provider_job_id"))
    headers = {"Authorization": f"Bearer {USEAPI_TOKEN}"}

    async def executing() -> list[dict[str, Any]]:
        url = f"{emulator.url}/v1/minimax/scheduler/available"
        async with emulator.session.get(url, headers=headers) as resp:
            return list((await resp.json())["executing"])

    assert [entry["replyRef"] for entry in await executing()] == [job_id]
    async with emulator.session.delete(f"{web}/v1/jobs/{job_id}") as resp:
        assert resp.status == 200, await resp.text()

    async def stopped() -> bool:
        return not await executing()

    await until(stopped)
    note = await until(lambda: app_client.redis.hget(keys.job_key(job_id), "cancel_note"))
    assert "stopped tracking" in note and "still runs" in note
    job = await app_client.get(job_id)
    assert job is not None and job["status"]["type"] == "canceled"


async def test_120_jobs_on_kling_minimax_pixverse_and_runway_at_once(
    relay, app_client: Client, emulator: Emulator
) -> None:
    _, web = await relay(workers=2, GENRELAY_SAFETY_POLL_INTERVAL="1", GENRELAY_CAPACITY_SYNC_INTERVAL="0.5")
    await emulator.configure(failure_rate=0.05, webhook_drop_rate=0.05, webhook_duplicate_rate=0.05)
    submitted: dict[str, str] = {}
    for n in range(30):
        for service, operations in WORK.items():
            operation = operations[n % len(operations)]
            job_id = await app_client.submit(service, operation, {"prompt": f"scene {n}"})
            submitted[job_id] = service
    assert len(submitted) == 120
    async with asyncio.timeout(200):
        jobs = [await app_client.wait(job_id) for job_id in submitted]

    ends = Counter((job["provider"], job["status"]["type"]) for job in jobs)
    for service in ACCOUNTS:
        assert ends[(service, "completed")] > 0, ends
        assert ends[(service, "completed")] + ends[(service, "failed")] == 30, ends
    ours = [job for job in jobs if job["status"]["type"] == "failed" and job["errorType"] in OUR_FAILURES]
    assert not ours, [(job["jobId"], job["errorType"], job["status"].get("message")) for job in ours]

    stats: dict[str, Any] = await emulator.stats()
    for service, names in ACCOUNTS.items():
        seen = stats["useapi_services"][service]
        peaks = {name: (seen["accounts"][name]["peak"], n) for name, n in names.items()}
        assert all(peak <= n for peak, n in peaks.values()), (service, peaks)
        assert sum(seen["accounts"][name]["submitted"] for name in names) >= 30 - ends[(service, "failed")]
        # Nothing sent twice: one accepted submission per job (the replyRef is our job id).
        assert set(seen["submissions_by_ref"].values()) == {1}, seen["submissions_by_ref"]
        assert set(seen["submissions_by_ref"]) == {j for j, s in submitted.items() if s == service}

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{web}/v1/scheduler/available") as resp:
            assert resp.status == 200
            mirror = {entry["email"]: entry for entry in (await resp.json())["available"]}
        headers = {"Authorization": f"Bearer {USEAPI_TOKEN}"}
        for service, prefix in LISTING.items():
            field = "account" if service == "minimax" else "email"
            async with http.get(f"{emulator.url}{prefix}/scheduler/available", headers=headers) as resp:
                view = {e[field]: (e["maxJobs"], e["executing"]) for e in (await resp.json())["available"]}
            ours_view = {name: (mirror[name]["maxJobs"], mirror[name]["executing"]) for name in view}
            assert ours_view == view, service
            assert all(mirror[name]["foreign"] == 0 for name in view), mirror
