"""Assets: completed jobs record their artifact once, in the completion's own script; the listing
is newest first, filters by type, provider and workflow (together too) with exact totals, pages like
the provider's listing, and refuses bad queries. Real Redis, the worker, the emulator over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from daemon import keys
from daemon.assets import AssetStore, artifact_fields, imported_fields, to_api
from daemon.client import Client
from daemon.jobs import JobRequest, State, Update
from daemon.providers.base import ProviderAsset
from daemon.services import Services
from daemon.settings import Settings
from daemon.web.app import create_app
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, USEAPI_TOKEN, Emulator

pytestmark = pytest.mark.timeout(120)

EMAIL = "studio@example.com"
WAIT_S = 60
DAY_MS = 24 * 3600 * 1000
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
# (provider, operation, params): 6 ltx jobs and 4 LTX Studio jobs of three types and six workflows.
JOBS: list[tuple[str, str, dict[str, Any]]] = [
    ("ltx", "text-to-video", {"prompt": "t2v one [ok]", **T2V}),
    ("ltx", "text-to-video", {"prompt": "t2v two [ok]", **T2V}),
    ("ltx", "text-to-video", {"prompt": "t2v three [ok]", **T2V}),
    ("ltx", "image-to-video", {"prompt": "i2v one [ok]", "image_uri": "https://a/b.png", **T2V}),
    ("ltx", "image-to-video", {"prompt": "i2v two [ok]", "image_uri": "https://a/b.png", **T2V}),
    ("ltx", "video-to-video-hdr", {"prompt": "hdr [ok]", "video_uri": "https://a/b.mp4"}),
    ("ltxstudio", "images/create", {"prompt": "an image [ok]"}),
    ("ltxstudio", "images/create", {"prompt": "another image [ok]"}),
    ("ltxstudio", "videos/ltx-create", {"prompt": "a video [ok]"}),
    ("ltxstudio", "videos/ltx-create", {"prompt": "another video [ok]"}),
]
EXPECTED_TYPES = {
    "text-to-video": "videos",
    "image-to-video": "videos",
    "video-to-video-hdr": "other",
    "images/create": "images",
    "videos/ltx-create": "videos",
}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        keys={API_KEYS["a1"]: 4}, useapi_accounts={USEAPI_TOKEN: {EMAIL: 4}}, job_seconds=0.05
    )


@pytest.fixture
def settings(emulator: Emulator, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(emulator.url, accounts={"a1": 4, f"ltxstudio/{EMAIL}": 4})


@pytest.fixture
async def api(
    redis_client: aioredis.Redis, redis_url: str, settings: Settings, aiohttp_client: AiohttpClient
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(create_app(settings, redis_url))


async def get_json(api: TestClient[web.Request, web.Application], path: str, status: int = 200) -> Any:
    resp = await api.get(path)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def run_jobs(app_client: Client) -> list[dict[str, Any]]:
    ids = [await app_client.submit(p, op, params) for p, op, params in JOBS]
    async with asyncio.timeout(WAIT_S):
        jobs = [await app_client.wait(job_id) for job_id in ids]
    assert [job["status"]["type"] for job in jobs] == ["completed"] * len(JOBS), jobs
    return jobs


async def asset_hashes(client: aioredis.Redis) -> list[str]:
    return sorted([key async for key in client.scan_iter(match="genrelay:*:asset:*")])


async def test_completed_jobs_record_one_asset_each_and_the_listing_filters_and_pages(
    settings: Settings,
    open_daemon: Callable[..., Any],
    start_worker: Callable[..., Any],
    app_client: Client,
    api: TestClient[web.Request, web.Application],
    redis_client: aioredis.Redis,
) -> None:
    services: Services = await open_daemon(settings)
    await start_worker(settings)
    jobs = await run_jobs(app_client)

    listing = await get_json(api, "/v1/assets?limit=100")
    assert listing["meta"] == {
        "totalItems": 10,
        "itemCount": 10,
        "itemsPerPage": 100,
        "totalPages": 1,
        "currentPage": 1,
    }
    assert len(await asset_hashes(redis_client)) == 10
    by_job = {item["jobId"]: item for item in listing["items"]}
    assert len(by_job) == 10
    now_ms = int(time.time() * 1000)
    for job in jobs:
        asset = by_job[job["jobId"]]
        # The archive's state moves on meanwhile (the emulator's URLs here do not resolve).
        one = await get_json(api, f"/v1/assets/{asset['id']}")
        assert {k: v for k, v in asset.items() if k != "archive"} == {
            k: v for k, v in one.items() if k != "archive"
        }
        assert asset["provider"] == job["provider"] and asset["account"] == job["account"]
        assert asset["workflow"] == job["operation"]
        assert asset["type"] == EXPECTED_TYPES[job["operation"]]
        assert asset["assetUrl"] == job["status"]["artifact"]["assetUrl"]
        assert asset["providerJobId"] == job["providerJobId"]
        assert asset["source"] == "job"
        assert asset["createdAt"] == job["finishedAt"]  # recorded by the completion itself
        expiry = int(asset["expirationDateString"])
        assert expiry > now_ms
        if job["provider"] == "ltx":
            # LTX keeps results 24 h after the end: the expiry is the completion + 24 h.
            assert abs(expiry - (job["finishedAt"] + DAY_MS)) < 60_000, (expiry, job["finishedAt"])
        else:
            assert asset["providerAssetId"] == job["status"]["artifact"]["asset"]["fileId"]
            assert asset["mimeType"] == job["status"]["artifact"]["asset"]["mimeType"]

    # Newest first: by the completion time the job records hold.
    finished = sorted(((job["finishedAt"], job["jobId"]) for job in jobs), reverse=True)
    assert [item["createdAt"] for item in listing["items"]] == [f for f, _ in finished]

    # A second completion of a completed job changes nothing and records nothing.
    again = Update(
        State.COMPLETED, progress=100, artifact={"assetUrl": "https://x/other.mp4", "kind": "video"}
    )
    assert await services.store.apply(jobs[0]["jobId"], again, source="poll") == "terminal"
    assert len(await asset_hashes(redis_client)) == 10
    assert (await get_json(api, f"/v1/assets/{by_job[jobs[0]['jobId']]['id']}"))["assetUrl"] == jobs[0][
        "status"
    ]["artifact"]["assetUrl"]

    async def total(query: str) -> int:
        found = await get_json(api, f"/v1/assets?{query}&limit=100")
        for item in found["items"]:
            for name, value in (part.split("=") for part in query.split("&")):
                assert item[name] == value.replace("%2F", "/"), (query, item)
        count: int = found["meta"]["totalItems"]
        assert count == len(found["items"])
        return count

    assert await total("type=videos") == 7
    assert await total("type=images") == 2
    assert await total("type=other") == 1
    assert await total("type=audio") == 0
    assert await total("provider=ltx") == 6
    assert await total("provider=ltxstudio") == 4
    assert await total("workflow=text-to-video") == 3
    assert await total("workflow=images%2Fcreate") == 2
    assert await total("type=videos&workflow=image-to-video") == 2
    assert await total("type=images&workflow=text-to-video") == 0
    assert await total("type=videos&provider=ltxstudio") == 2
    assert await total("type=other&provider=ltx&workflow=video-to-video-hdr") == 1

    # Pages of 3: 3 + 3 + 3 + 1, each id once, in the order of the one-page listing.
    pages = [await get_json(api, f"/v1/assets?limit=3&page={page}") for page in (1, 2, 3, 4, 5)]
    assert [p["meta"]["itemCount"] for p in pages] == [3, 3, 3, 1, 0]
    assert {p["meta"]["totalPages"] for p in pages} == {4}
    assert {p["meta"]["totalItems"] for p in pages} == {10}
    assert [p["meta"]["currentPage"] for p in pages] == [1, 2, 3, 4, 5]
    paged = [item["id"] for p in pages for item in p["items"]]
    assert paged == [item["id"] for item in listing["items"]]
    # Filtered pages across two providers' indexes still add up.
    videos = [await get_json(api, f"/v1/assets?type=videos&limit=2&page={page}") for page in (1, 2, 3, 4)]
    assert [v["meta"]["itemCount"] for v in videos] == [2, 2, 2, 1]
    assert len({item["id"] for v in videos for item in v["items"]}) == 7


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("type=gifs", "'type' must be one of images, videos, audio, other"),
        ("page=0", "'page' must be an integer of at least 1"),
        ("page=two", "'page' must be an integer"),
        ("limit=101", "'limit' must be an integer from 1 to 100"),
        ("limit=-1", "'limit' must be an integer from 1 to 100"),
        ("provider=nope", "unknown provider 'nope': configured providers are ltx, ltxstudio"),
        ("status=completed", "unknown query parameter 'status'"),
        ("type=images&type=videos", "'type' is given more than once"),
        ("workflow=" + "w" * 201, "'workflow' must be at most 200 characters"),
    ],
)
async def test_bad_listing_queries_are_400_and_say_what_is_wrong(
    api: TestClient[web.Request, web.Application], query: str, says: str
) -> None:
    body = await get_json(api, f"/v1/assets?{query}", status=400)
    assert body["code"] == 400
    assert says in body["error"]


async def test_unknown_or_malformed_asset_id_is_404(api: TestClient[web.Request, web.Application]) -> None:
    for asset_id in ("ltx-asset-" + "0" * 32, "not-an-asset", keys.PREFIX):
        body = await get_json(api, f"/v1/assets/{asset_id}", status=404)
        assert body["code"] == 404 and "no asset" in body["error"]
    empty = await get_json(api, "/v1/assets")
    assert empty == {
        "items": [],
        "meta": {"totalItems": 0, "itemCount": 0, "itemsPerPage": 20, "totalPages": 0, "currentPage": 1},
    }


async def test_a_job_completing_after_its_artifact_was_imported_replaces_the_import_once(
    make_settings: Callable[..., Settings],
    open_daemon: Callable[..., Any],
    api: TestClient[web.Request, web.Application],
    redis_client: aioredis.Redis,
) -> None:
    """An import can find a job's artifact before genrelay sees the job end (a lost callback): the
    completion then takes the record over, under the same id, with no second entry anywhere."""
    settings = make_settings(accounts={"a1": 2})
    services: Services = await open_daemon(settings)
    store = AssetStore(services.client, services.scripts, settings)
    found = ProviderAsset(
        provider_asset_id="f-1", url="https://x/old.png", kind="images", provider_job_id="p-1"
    )
    imported = await store.record_import(
        imported_fields("ltx", "a1", found, created_ms=int(time.time() * 1000))
    )
    assert imported.outcome == "new"
    assert (await store.record_import(imported_fields("ltx", "a1", found, created_ms=1))).outcome == "known"

    created = await services.store.create(JobRequest("ltx", "text-to-video", {"prompt": "x"}))
    await services.store.apply(created.job_id, Update(State.ACTIVE, provider_job_id="p-1"), source="submit")
    artifact = {"assetUrl": "https://x/new.mp4", "kind": "video", "expirationDateString": "4102444800000"}
    done = Update(State.COMPLETED, progress=100, artifact=artifact)
    assert await services.store.apply(created.job_id, done, source="poll") == "applied"

    listing = await get_json(api, "/v1/assets")
    assert listing["meta"]["totalItems"] == 1
    (asset,) = listing["items"]
    assert asset["id"] == imported.asset_id
    assert (asset["jobId"], asset["source"], asset["type"], asset["workflow"]) == (
        created.job_id,
        "job",
        "videos",
        "text-to-video",
    )
    assert asset["assetUrl"] == "https://x/new.mp4" and asset["expirationDateString"] == "4102444800000"
    assert (await get_json(api, "/v1/assets?type=images"))["meta"]["totalItems"] == 0
    assert (await get_json(api, "/v1/assets?type=videos&workflow=text-to-video"))["meta"]["totalItems"] == 1
    assert len(await asset_hashes(redis_client)) == 1


def test_artifact_shapes_map_to_the_four_types() -> None:
    vydra = artifact_fields(
        {
            "assetUrl": "https://pub.example/v.mp4",
            "kind": "video",
            "asset": {"mimeType": "video/mp4"},
            "thumbnailUrl": "https://pub.example/t.jpg",
        }
    )
    assert vydra["type"] == "videos" and "expires_ms" not in vydra
    assert to_api({**vydra, "id": "vydra-asset-" + "0" * 32})["thumbnails"] == {
        "default": {"assetUrl": "https://pub.example/t.jpg"}
    }
    assert artifact_fields({"assetUrl": "u", "kind": "exr_frames"})["type"] == "other"
    assert artifact_fields({"assetUrl": "u", "kind": "audio"})["type"] == "audio"
    assert artifact_fields({"assetUrl": "u", "asset": {"mimeType": "image/webp"}})["type"] == "images"
    assert artifact_fields({"assetUrl": "u", "kind": "model3d"})["type"] == "other"


async def test_assets_are_kept_for_the_asset_retention_from_their_creation(
    make_settings: Callable[..., Settings], open_daemon: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    settings = make_settings(accounts={"a1": 1})  # the default: 30 days
    services: Services = await open_daemon(settings)
    store = AssetStore(services.client, services.scripts, settings)
    now_ms = int(time.time() * 1000)

    def found(name: str) -> ProviderAsset:
        return ProviderAsset(
            provider_asset_id=name, url=f"https://x/{name}.mp4", kind="videos", provider_job_id=name
        )

    two_days_old = await store.record_import(
        imported_fields("ltx", "a1", found("p-old"), created_ms=now_ms - 2 * DAY_MS)
    )
    fresh = await store.record_import(imported_fields("ltx", "a1", found("p-new"), created_ms=now_ms))
    too_old = await store.record_import(
        imported_fields("ltx", "a1", found("p-31"), created_ms=now_ms - 31 * DAY_MS)
    )
    assert (two_days_old.outcome, fresh.outcome, too_old.outcome) == ("new", "new", "too_old")
    assert not await redis_client.exists(keys.asset_key(too_old.asset_id))
    # The record expires 30 days after its creation, not after its recording.
    ttl_ms = await redis_client.pttl(keys.asset_key(two_days_old.asset_id))
    assert 27 * DAY_MS < ttl_ms <= 28 * DAY_MS
    assert (await store.list_assets())[1] == 2

    # With a one-day retention the two-day-old entry is past it: readers skip it, totals agree.
    short = make_settings(accounts={"a1": 1}, GENRELAY_ASSET_RETENTION=str(DAY_MS // 1000))
    items, total = await AssetStore(services.client, services.scripts, short).list_assets()
    assert total == 1 and [item["id"] for item in items] == [fresh.asset_id]
