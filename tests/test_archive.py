"""The archive over real HTTP: every provider's completed artifact is copied (local directory and an
S3 server on loopback), has the SHA-256 of the emulator's bytes, and is served from our copy with
ETag and Range after the provider's URL has expired; an oversized artifact fails its copy while the
job stays completed; a URL on a private address is refused unless allowed."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from pytest_aiohttp import AiohttpClient
from yarl import URL

from daemon import archive_state, keys
from daemon.archive_state import ArchiveState
from daemon.client import Client
from daemon.settings import Settings
from emulator.artifacts import content, sha256_of
from emulator.config import EmulatorConfig
from tests.archive_support import API, S3Server, archive_settled, s3_server, start_archive
from tests.conftest import API_KEYS, USEAPI_TOKEN, VYDRA_KEYS, Emulator

pytestmark = pytest.mark.timeout(120)

EMAIL = "studio@example.com"
SIZE = 300_000
WAIT_S = 60
ACCOUNTS: dict[str, Any] = {
    "a1": 2,
    f"ltxstudio/{EMAIL}": 2,
    "vydra/v1": {"max_jobs": 2, "requests_per_minute": 300, "rate_window_seconds": 1.0},
}
WORK: dict[str, tuple[str, dict[str, Any]]] = {
    "ltx": (
        "text-to-video",
        {"prompt": "a fox", "model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"},
    ),
    "ltxstudio": ("videos/ltx-create", {"prompt": "a fox"}),
    "vydra": ("generate_video", {"model": "veo3", "prompt": "a fox"}),
}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        keys={API_KEYS["a1"]: 2},
        useapi_accounts={USEAPI_TOKEN: {EMAIL: 2}},
        vydra_accounts={VYDRA_KEYS["v1"]: {"rpm": 300, "concurrent": 2}},
        vydra_rate_window_seconds=1.0,
        job_seconds=0.05,
        artifact_bytes=SIZE,
    )


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    yield from s3_server()


async def start(
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
    **env: str,
) -> tuple[Settings, API]:
    return await start_archive(
        emulator, make_settings, start_worker, aiohttp_client, redis_url, ACCOUNTS, **env
    )


async def completed_asset(
    redis_client: aioredis.Redis, api: API, provider: str
) -> tuple[dict[str, Any], str]:
    """Run one job of ``provider`` to completion; its job record and the archive's settled state."""
    operation, params = WORK[provider]
    client = Client(redis_client)
    job_id = await client.submit(provider, operation, params)
    async with asyncio.timeout(WAIT_S):
        job = await client.wait(job_id)
        assert job["status"]["type"] == "completed", job
        resp = await api.get(f"/v1/jobs/{job_id}")
        job = await resp.json()
        asset_id = job["status"]["artifact"]["assetId"]
        state = await archive_settled(redis_client, provider, asset_id)
    # The archive's record of the asset expires with the asset (both at created + retention).
    async with redis_client.pipeline(transaction=True) as pipe:
        pipe.pttl(keys.asset_key(asset_id))
        pipe.pttl(archive_state.state_key(asset_id))
        asset_ttl, state_ttl = await pipe.execute()
    assert asset_ttl > 0 and abs(asset_ttl - state_ttl) <= 1, (asset_ttl, state_ttl)
    return job, state


async def check_served(api: API, emulator: Emulator, asset_id: str) -> None:
    resp = await api.get(f"/v1/assets/{asset_id}")
    asset = await resp.json()
    archive = asset["archive"]
    name = URL(asset["assetUrl"]).name
    expected = content(name, 0, SIZE)
    assert archive["state"] == "archived", archive
    assert archive["sha256"] == sha256_of(name, SIZE) == hashlib.sha256(expected).hexdigest()
    assert archive["bytes"] == SIZE
    # The provider's URL stops working; our copy does not.
    await emulator.configure(artifact_urls_expired=True)
    async with emulator.session.get(asset["assetUrl"]) as gone:
        assert gone.status == 403
    resp = await api.get(archive["url"])
    assert resp.status == 200
    assert resp.headers["ETag"] == f'"{archive["sha256"]}"'
    assert resp.headers["Content-Type"] == archive["mimeType"]
    assert int(resp.headers["Content-Length"]) == SIZE
    assert await resp.read() == expected
    resp = await api.get(archive["url"], headers={"Range": "bytes=70000-140001"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 70000-140001/{SIZE}"
    assert await resp.read() == expected[70000:140002]
    resp = await api.get(archive["url"], headers={"Range": "bytes=-100"})
    assert resp.status == 206 and await resp.read() == expected[-100:]
    resp = await api.get(archive["url"], headers={"Range": f"bytes={SIZE}-"})
    assert resp.status == 416
    resp = await api.get("/v1/assets?archive=archived")
    assert asset_id in [item["id"] for item in (await resp.json())["items"]]


@pytest.mark.parametrize("provider", sorted(WORK))
@pytest.mark.parametrize("backend", ["file", "s3"])
async def test_archived_copy_outlives_the_provider_url(
    provider: str,
    backend: str,
    request: pytest.FixtureRequest,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
) -> None:
    env = {"GENRELAY_ARCHIVE_ALLOW_PRIVATE": "1"}
    if backend == "s3":
        s3: S3Server = request.getfixturevalue("s3")
        await s3.create_bucket()
        env.update(s3.env())
    _, api = await start(emulator, make_settings, start_worker, aiohttp_client, redis_url, **env)
    job, state = await completed_asset(redis_client, api, provider)
    assert state == "archived"
    await check_served(api, emulator, job["status"]["artifact"]["assetId"])


async def test_oversized_artifact_fails_its_copy_not_its_job(
    redis_client: aioredis.Redis,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
) -> None:
    env = {"GENRELAY_ARCHIVE_ALLOW_PRIVATE": "1", "GENRELAY_ARCHIVE_MAX_BYTES": str(SIZE - 1)}
    _, api = await start(emulator, make_settings, start_worker, aiohttp_client, redis_url, **env)
    job, state = await completed_asset(redis_client, api, "ltx")
    assert state == "failed"
    asset_id = job["status"]["artifact"]["assetId"]
    asset = await (await api.get(f"/v1/assets/{asset_id}")).json()
    assert "cap" in asset["archive"]["message"], asset["archive"]
    assert asset["archive"]["url"] is None
    resp = await api.get(f"/v1/jobs/{job['jobId']}")
    assert (await resp.json())["status"]["type"] == "completed"
    assert (await api.get(f"/v1/assets/{asset_id}/content")).status == 404
    failed = await (await api.get("/v1/assets?archive=failed")).json()
    assert [item["id"] for item in failed["items"]] == [asset_id]


async def test_private_artifact_url_is_refused_unless_allowed(
    redis_client: aioredis.Redis,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
) -> None:
    _, api = await start(emulator, make_settings, start_worker, aiohttp_client, redis_url)
    job, state = await completed_asset(redis_client, api, "ltx")
    assert state == "failed"
    asset = await (await api.get(f"/v1/assets/{job['status']['artifact']['assetId']}")).json()
    assert "loopback" in asset["archive"]["message"], asset["archive"]
    log = await emulator.control("GET", "artifacts")
    assert log["requests"] == []  # refused before any connection
    # No copy: 404, and the dashboard's links (?fallback=provider) go to the provider's URL instead.
    content = f"/v1/assets/{asset['id']}/content"
    assert (await api.get(content)).status == 404
    resp = await api.get(content, params={"fallback": "provider"}, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == asset["assetUrl"]


async def test_copies_are_deleted_after_their_retention(
    redis_client: aioredis.Redis,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
) -> None:
    env = {"GENRELAY_ARCHIVE_ALLOW_PRIVATE": "1", "GENRELAY_ARCHIVE_RETENTION": "1"}
    settings, api = await start(emulator, make_settings, start_worker, aiohttp_client, redis_url, **env)
    job, state = await completed_asset(redis_client, api, "ltx")
    assert state == "archived"
    asset_id = job["status"]["artifact"]["assetId"]
    async with asyncio.timeout(WAIT_S):
        await archive_settled(redis_client, "ltx", asset_id, "expired")
    asset = await (await api.get(f"/v1/assets/{asset_id}")).json()
    assert asset["archive"]["state"] == "expired" and "RETENTION" in asset["archive"]["message"]
    assert (await api.get(f"/v1/assets/{asset_id}/content")).status == 404
    assert settings.archive.directory is not None
    assert not [p for p in (settings.archive.directory / "objects").rglob("*") if p.is_file()]
    assert await ArchiveState(redis_client).usage() == (0, 0)
