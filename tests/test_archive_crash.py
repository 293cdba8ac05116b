"""A worker SIGKILLed in the middle of an artifact's download: the next worker resumes the partial
copy with ``Range`` from where it stopped, the copy ends with the emulator's SHA-256, and nothing
is served (nor stored as an object) before the copy is complete. Real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pytest_aiohttp import AiohttpClient
from yarl import URL

from daemon.client import Client
from daemon.settings import Settings
from daemon.web.app import create_app
from emulator.artifacts import content, sha256_of
from emulator.config import EmulatorConfig
from tests.archive_support import archive_settled, until
from tests.conftest import API_KEYS, Emulator, process_env

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

SIZE = 4_000_000
STALL = 1_500_000
T2V = {"prompt": "a fox", "model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 2}, job_seconds=0.05, artifact_bytes=SIZE)


async def test_sigkilled_download_resumes_and_no_partial_is_served(
    redis_client: aioredis.Redis,
    emulator: Emulator,
    spawn: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
    tmp_path: Path,
) -> None:
    await emulator.configure(public_base=emulator.url, artifact_stall_after=STALL)
    env = process_env(
        tmp_path,
        redis_url,
        emulator.url,
        {"a1": 2},
        GENRELAY_ARCHIVE_ALLOW_PRIVATE="1",
        GENRELAY_ARCHIVE_CLAIM_TTL="1",
    )
    settings = Settings.from_env(env)
    api = await aiohttp_client(create_app(settings, redis_url))
    first = spawn("worker", env)
    client = Client(redis_client)
    job_id = await client.submit("ltx", "text-to-video", T2V)
    async with asyncio.timeout(60):
        assert (await client.wait(job_id))["status"]["type"] == "completed"
        job = await (await api.get(f"/v1/jobs/{job_id}")).json()
        asset_id = job["status"]["artifact"]["assetId"]
        part = settings.archive.staging_dir / f"{asset_id}.part"

        async def stalled() -> bool:
            return part.exists() and part.stat().st_size >= STALL

        await until(stalled)
    # Mid-download: no copy is served and no object exists.
    resp = await api.get(f"/v1/assets/{asset_id}/content")
    assert resp.status == 404
    asset = await (await api.get(f"/v1/assets/{asset_id}")).json()
    assert asset["archive"]["state"] == "pending", asset["archive"]["message"]
    assert settings.archive.directory is not None
    assert not list((settings.archive.directory / "objects").rglob("*"))
    os.kill(first.pid, signal.SIGKILL)
    first.stop(grace=5)
    await emulator.configure(artifact_stall_after=0)
    spawn("worker", env)
    async with asyncio.timeout(60):
        assert await archive_settled(redis_client, "ltx", asset_id) == "archived"
    name = URL(asset["assetUrl"]).name
    asset = await (await api.get(f"/v1/assets/{asset_id}")).json()
    assert asset["archive"]["sha256"] == sha256_of(name, SIZE)
    log = await emulator.control("GET", "artifacts")
    ranges = [entry["range"] for entry in log["requests"]]  # type: ignore[index]
    assert ranges[0] is None and f"bytes={STALL}-" in ranges, ranges
    resp = await api.get(f"/v1/assets/{asset_id}/content")
    assert resp.status == 200 and await resp.read() == content(name, 0, SIZE)
    assert not part.exists()
