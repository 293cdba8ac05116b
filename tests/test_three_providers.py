"""All three providers at once: 150 jobs over ltx, useapi LTX Studio and vydra accounts.

Every job ends; no account runs more at the emulator than its ``maxJobs``; the capacity mirror
(``GET /v1/scheduler/available``) agrees with the emulator's own view at the end; and the asset
listing holds every artifact exactly once, also after importing the provider accounts' listings.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from daemon.asset_import import import_assets
from daemon.assets import AssetStore
from daemon.client import Client
from daemon.services import Services
from daemon.settings import Settings
from daemon.web.app import create_app
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, USEAPI_TOKEN, VYDRA_KEYS, Emulator

pytestmark = pytest.mark.timeout(240)

STUDIO = {"s1@example.com": 2, "s2@example.com": 3}
LTX = {"a1": 2, "a2": 3}
VYDRA_CONCURRENT = 3
ACCOUNTS: dict[str, Any] = {
    **LTX,
    **{f"ltxstudio/{email}": n for email, n in STUDIO.items()},
    # vydra counts requests per window: a short window keeps this test quick.
    "vydra/v1": {"max_jobs": VYDRA_CONCURRENT, "requests_per_minute": 300, "rate_window_seconds": 1.0},
}
JOBS_PER_PROVIDER = 50
WORK: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "ltx": [
        ("text-to-video", {"model": "ltx-2-3-fast", "duration": 4, "resolution": "1920x1080"}),
        ("video-to-video-hdr", {"video_uri": "https://example.com/clip.mp4"}),
    ],
    "ltxstudio": [("videos/ltx-create", {}), ("images/create", {})],
    "vydra": [("generate_video", {"model": "veo3"}), ("generate_image", {"model": "gemini-image"})],
}
# Ends that would mean genrelay, not the provider's dice, failed the job.
OUR_FAILURES = {"timeout", "submit_interrupted", "submit_failed", "lost"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        keys={API_KEYS[name]: n for name, n in LTX.items()},
        useapi_accounts={USEAPI_TOKEN: STUDIO},
        vydra_accounts={VYDRA_KEYS["v1"]: {"rpm": 300, "concurrent": VYDRA_CONCURRENT}},
        vydra_rate_window_seconds=1.0,
        job_seconds=0.15,
        job_seconds_jitter=0.5,
        failure_rate=0.05,
        webhook_drop_rate=0.05,
        webhook_duplicate_rate=0.05,
        seed=11,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def daemon(
    emulator: Emulator, make_settings, open_daemon, start_worker, redis_url: str
) -> AsyncIterator[tuple[Settings, Services, str]]:  # type: ignore[no-untyped-def]
    """The web app on the public URL the providers call back, and two workers."""
    port = free_port()
    settings: Settings = make_settings(
        emulator.url,
        accounts=ACCOUNTS,
        GENRELAY_PUBLIC_URL=f"http://127.0.0.1:{port}",
        GENRELAY_SAFETY_POLL_INTERVAL="1",
        GENRELAY_CAPACITY_SYNC_INTERVAL="0.5",
    )
    services = await open_daemon(settings)
    server = TestServer(create_app(settings, redis_url), host="127.0.0.1", port=port)
    await server.start_server()
    for _ in range(2):
        await start_worker(settings)
    try:
        yield settings, services, f"http://127.0.0.1:{port}"
    finally:
        await server.close()


async def all_assets(http: aiohttp.ClientSession, web: str) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    page, total = 1, -1
    while True:
        async with http.get(f"{web}/v1/assets", params={"page": page, "limit": 40}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        items += body["items"]
        total = body["meta"]["totalItems"]
        if page >= body["meta"]["totalPages"]:
            return items, total
        page += 1


async def test_150_jobs_on_three_providers_stay_within_max_jobs_and_each_artifact_is_listed_once(
    daemon: tuple[Settings, Services, str], app_client: Client, emulator: Emulator
) -> None:
    settings, services, web = daemon
    submitted: dict[str, str] = {}
    for n in range(JOBS_PER_PROVIDER):
        for provider, work in WORK.items():
            operation, params = work[n % len(work)]
            job_id = await app_client.submit(provider, operation, {**params, "prompt": f"scene {n}"})
            submitted[job_id] = provider
    assert len(submitted) == 3 * JOBS_PER_PROVIDER

    async with asyncio.timeout(180):
        jobs = [await app_client.wait(job_id) for job_id in submitted]

    ends = Counter((job["provider"], job["status"]["type"]) for job in jobs)
    for provider in WORK:
        assert ends[(provider, "completed")] > 0, ends
        assert ends[(provider, "completed")] + ends[(provider, "failed")] == JOBS_PER_PROVIDER, ends
    ours = [job for job in jobs if job["status"]["type"] == "failed" and job["errorType"] in OUR_FAILURES]
    assert not ours, [(job["jobId"], job["errorType"], job["status"].get("message")) for job in ours]

    stats: dict[str, Any] = await emulator.stats()
    vydra = stats["vydra"]
    peaks = {
        **{name: (stats["keys"][API_KEYS[name]]["peak"], n) for name, n in LTX.items()},
        **{email: (stats["useapi_accounts"][email]["peak"], n) for email, n in STUDIO.items()},
        "v1": (vydra["accounts"][VYDRA_KEYS["v1"]]["peak"], VYDRA_CONCURRENT),
    }
    assert all(0 < peak <= max_jobs for peak, max_jobs in peaks.values()), peaks
    # Nothing was sent twice: one submission per job that has callbacks (the ref is our job id).
    for by_ref in (stats["submissions_by_ref"], vydra["submissions_by_ref"]):
        assert by_ref and set(by_ref.values()) == {1}, by_ref

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{web}/v1/scheduler/available") as resp:
            assert resp.status == 200
            mirror = {entry["email"]: entry for entry in (await resp.json())["available"]}
        headers = {"Authorization": f"Bearer {USEAPI_TOKEN}"}
        async with http.get(f"{emulator.url}/v1/ltxstudio/scheduler/available", headers=headers) as resp:
            studio_view = {entry["email"]: entry for entry in (await resp.json())["available"]}
        vydra_account = vydra["accounts"][VYDRA_KEYS["v1"]]
        emulator_view = {
            **{
                name: (stats["keys"][API_KEYS[name]]["max_jobs"], stats["keys"][API_KEYS[name]]["executing"])
                for name in LTX
            },
            **{email: (studio_view[email]["maxJobs"], studio_view[email]["executing"]) for email in STUDIO},
            "v1": (vydra_account["concurrent"], vydra_account["executing"]),
        }
        ours_view = {name: (mirror[name]["maxJobs"], mirror[name]["executing"]) for name in emulator_view}
        assert ours_view == emulator_view
        assert all(mirror[name]["available"] == mirror[name]["maxJobs"] for name in emulator_view), mirror
        assert all(mirror[name]["foreign"] == 0 for name in emulator_view), mirror

        items, total = await all_assets(http, web)
        completed = {job["jobId"] for job in jobs if job["status"]["type"] == "completed"}
        assert total == len(items) == len(completed)
        assert Counter(item["jobId"] for item in items) == Counter(completed)
        assert len({item["id"] for item in items}) == len(items)

        # The provider accounts' own listings hold the same artifacts: importing them adds none.
        store = AssetStore(services.client, services.scripts, settings)
        for provider, name in (
            ("ltxstudio", "s1@example.com"),
            ("ltxstudio", "s2@example.com"),
            ("vydra", "v1"),
        ):
            account = settings.account(provider, name)
            assert account is not None
            summary = await import_assets(store, http, account, page_size=25)
            assert summary.complete and summary.seen > 0 and summary.new == 0, (name, summary)
        items_after, total_after = await all_assets(http, web)
        assert total_after == total
        assert sorted(item["id"] for item in items_after) == sorted(item["id"] for item in items)
