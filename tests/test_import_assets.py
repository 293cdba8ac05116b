"""``genrelay import-assets``: a useapi account's listing, paged, recorded once next to what genrelay's
own jobs recorded; ours are matched by provider job id; a second run adds nothing; ltx is refused;
provider errors say what to do. Real Redis, the emulator over HTTP, the CLI as a process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.accounts_file import Account
from daemon.asset_import import import_assets
from daemon.assets import AssetStore
from daemon.client import Client
from daemon.errors import DaemonError
from daemon.providers import get_provider
from daemon.providers.useapi import UseapiProvider
from daemon.services import Services
from daemon.settings import Settings
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, USEAPI_TOKEN, Emulator, process_env

pytestmark = pytest.mark.timeout(120)

EMAIL = "studio@example.com"
OUTSIDE = 7  # jobs started at the emulator directly, not through genrelay
OURS = 3
WAIT_S = 60
AUTH = {"Authorization": f"Bearer {USEAPI_TOKEN}"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        keys={API_KEYS["a1"]: 2}, useapi_accounts={USEAPI_TOKEN: {EMAIL: OUTSIDE}}, job_seconds=0.05
    )


def accounts() -> dict[str, int]:
    return {"a1": 2, f"ltxstudio/{EMAIL}": 5}


async def start_outside_jobs(emulator: Emulator) -> list[str]:
    """Jobs made at the provider without genrelay (another tool, or before genrelay ran);
    ``pollForResult`` has the emulator answer once each has completed."""
    ids = []
    for n in range(OUTSIDE):
        endpoint = "images/create" if n % 2 else "videos/ltx-create"
        async with emulator.session.post(
            f"{emulator.url}/v1/ltxstudio/{endpoint}",
            json={"prompt": f"outside {n} [ok]", "pollForResult": 1},
            headers=AUTH,
        ) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
            assert answer["status"]["type"] == "completed", answer
            ids.append(answer["jobId"])
    return ids


async def listed_at_provider(emulator: Emulator) -> int:
    async with emulator.session.get(f"{emulator.url}/v1/ltxstudio/assets/", headers=AUTH) as resp:
        assert resp.status == 200
        total: int = (await resp.json())["meta"]["totalItems"]
        return total


async def all_assets(store: AssetStore) -> list[dict[str, Any]]:
    items, total = await store.list_assets(provider="ltxstudio", limit=100)
    assert total == len(items)
    return items


async def test_import_pages_through_the_listing_records_each_artifact_once_and_matches_our_jobs(
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    open_daemon: Callable[..., Any],
    start_worker: Callable[..., Any],
    app_client: Client,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    settings = make_settings(emulator.url, accounts=accounts())
    services: Services = await open_daemon(settings)
    await start_worker(settings)
    outside = await start_outside_jobs(emulator)
    assert await listed_at_provider(emulator) == OUTSIDE
    ours = [
        await app_client.submit("ltxstudio", "videos/ltx-create", {"prompt": f"ours {n} [ok]"})
        for n in range(OURS)
    ]
    async with asyncio.timeout(WAIT_S):
        jobs = [await app_client.wait(job_id) for job_id in ours]
    assert [job["status"]["type"] for job in jobs] == ["completed"] * OURS
    store = AssetStore(services.client, services.scripts, settings)
    before = {item["jobId"]: item for item in await all_assets(store)}
    assert set(before) == set(ours)

    # One of our jobs completed before assets were recorded (or its record was lost): drop it.
    lost = before[ours[0]]
    await redis_client.delete(keys.asset_key(lost["id"]))
    for index in (
        keys.asset_index_key("ltxstudio"),
        keys.asset_index_key("ltxstudio", "videos"),
        keys.asset_index_key("ltxstudio", None, "videos/ltx-create"),
        keys.asset_index_key("ltxstudio", "videos", "videos/ltx-create"),
    ):
        assert await redis_client.zrem(index, lost["id"]) == 1

    account = settings.account("ltxstudio", EMAIL)
    assert account is not None
    progress: list[str] = []
    async with aiohttp.ClientSession() as session:
        summary = await import_assets(store, session, account, page_size=3, progress=progress.append)
    assert [line.split(",")[0] for line in progress] == [
        f"page {n}: {c} asset(s)" for n, c in enumerate((3, 3, 3, 1), 1)
    ]
    assert (summary.pages, summary.seen, summary.new, summary.matched) == (4, 10, 8, 1)
    assert summary.known + summary.refreshed == 2 and summary.complete

    items = await all_assets(store)
    provider_job_ids = [item["providerJobId"] for item in items]
    assert sorted(provider_job_ids) == sorted([*outside, *(job["providerJobId"] for job in jobs)])
    by_provider_job = {item["providerJobId"]: item for item in items}
    for job in jobs:
        asset = by_provider_job[job["providerJobId"]]
        assert asset["jobId"] == job["jobId"] and asset["workflow"] == "videos/ltx-create"
        assert asset["source"] == ("import" if job["jobId"] == lost["jobId"] else "job")
    assert by_provider_job[jobs[0]["providerJobId"]]["id"] == lost["id"]  # the same identity, the same id
    for provider_job_id in outside:
        asset = by_provider_job[provider_job_id]
        assert asset["jobId"] is None and asset["source"] == "import" and asset["account"] == EMAIL
        assert asset["type"] == ("images" if "-type:image" in provider_job_id else "videos")
        assert int(asset["expirationDateString"]) > asset["createdAt"]
        assert set(asset["thumbnails"]) == {"large"} and asset["thumbnails"]["large"]["assetUrl"]
    # The provider's newest-first order is kept for the assets it gives no date for.
    imported_outside = [item["providerJobId"] for item in items if item["providerJobId"] in outside]
    assert imported_outside == outside[::-1]

    # A second run, through the command: nothing new, nothing twice.
    env = process_env(tmp_path, redis_url, emulator.url, accounts())
    # The emulator runs in this event loop: the command runs beside it, not blocking it.
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "daemon", "import-assets", EMAIL, "--limit", "4"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT_S):
        out, err = await command.communicate()
    assert command.returncode == 0, err.decode()
    assert "page 3: 2 asset(s), 0 new" in err.decode()
    assert f"ltxstudio account {EMAIL}: 10 asset(s) on 3 page(s): 0 new, 10 already recorded" in out.decode()
    again = await all_assets(store)
    assert sorted(item["id"] for item in again) == sorted(item["id"] for item in items)
    assert len([key async for key in redis_client.scan_iter(match="genrelay:*:asset:*")]) == 10


def run_import(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "import-assets", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_ltx_account_is_refused_with_the_reason(
    emulator: Emulator, redis_client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    env = process_env(tmp_path, redis_url, emulator.url, accounts())
    done = run_import(env, "a1")
    assert done.returncode == 2
    assert "ltx has no asset listing to import from" in done.stderr
    unknown = run_import(env, "nobody@example.com")
    assert unknown.returncode == 2 and "no account named 'nobody@example.com'" in unknown.stderr
    assert await redis_client.dbsize() == 0


async def test_a_provider_error_stops_the_import_and_says_what_to_do(
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    open_daemon: Callable[..., Any],
    redis_client: aioredis.Redis,
) -> None:
    # An account the provider does not know (useapi answers 404 "Account configuration not found").
    settings = make_settings(emulator.url, accounts={"ltxstudio/ghost@example.com": 1})
    services: Services = await open_daemon(settings)
    account = settings.account("ltxstudio", "ghost@example.com")
    assert account is not None
    store = AssetStore(services.client, services.scripts, settings)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(DaemonError) as failed:
            await import_assets(store, session, account)
    message = str(failed.value)
    assert "failed on page 1" in message and "Account configuration not found" in message
    assert "check that 'ghost@example.com' is the account's name at ltxstudio" in message
    assert await store.list_assets() == ([], 0)


async def test_the_useapi_listing_pages_and_filters_by_kind(emulator: Emulator) -> None:
    """The adapter's own listing: every page of the account, and one kind only with ``filter``."""
    outside = await start_outside_jobs(emulator)
    adapter = get_provider("ltxstudio")
    assert isinstance(adapter, UseapiProvider)
    account = Account(
        provider="ltxstudio",
        name=EMAIL,
        max_jobs=5,
        api_key_env="USEAPI_TOKEN",
        base_url=emulator.url,
        api_key=USEAPI_TOKEN,
    )
    async with aiohttp.ClientSession() as session:
        pages = [await adapter.list_assets(session, account, page=n, limit=3) for n in (1, 2, 3)]
        images = await adapter.list_assets(session, account, page=1, limit=10, kind="images")
    assert [len(page.assets) for page in pages] == [3, 3, 1]
    assert [page.has_more for page in pages] == [True, True, False]
    listed = [asset.provider_job_id for page in pages for asset in page.assets]
    assert listed == list(reversed(outside))  # all of them, newest first
    assert images.assets and {asset.kind for asset in images.assets} == {"images"}
    assert [a.provider_job_id for a in images.assets] == [j for j in reversed(outside) if "type:image" in j]
