"""How the archive's outcomes show, over real processes (embedded Redis, the emulator over HTTP, a
worker): a storage that refuses the write leaves the copy ``failed`` and retried while the job stays
completed, and the copy is made, with the artifact's bytes and type, once the storage takes writes
again; the worker's ``/metrics`` counts the archived copy and its bytes and, after a retention pass,
reports the archive's usage as Redis counts it; and the assets ``genrelay import-assets`` records
are archived like a job's."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from pytest_aiohttp import AiohttpClient
from yarl import URL

from daemon import archive_state
from daemon.archive_state import ArchiveState
from daemon.archive_store import object_path
from daemon.client import Client
from daemon.settings import Settings
from emulator.artifacts import sha256_of
from emulator.config import EmulatorConfig
from tests.archive_support import API, archive_settled, start_archive
from tests.conftest import API_KEYS, USEAPI_TOKEN, Emulator, process_env
from tests.harness.metrics_text import Samples, parse, value

pytestmark = pytest.mark.timeout(120)

# The emulator's artifact URLs are on loopback.
PRIVATE_ALLOWED = {"GENRELAY_ARCHIVE_ALLOW_PRIVATE": "1"}

EMAIL = "studio@example.com"
SIZE = 300_000
WAIT_S = 60
ACCOUNTS: dict[str, Any] = {"a1": 2, f"ltxstudio/{EMAIL}": 2}
LTX_WORK = (
    "text-to-video",
    {"prompt": "a fox", "model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"},
)
AUTH = {"Authorization": f"Bearer {USEAPI_TOKEN}"}
ATTEMPTS = "genrelay_archive_attempts_total"
BYTES = "genrelay_archive_bytes_total"
OBJECTS = "genrelay_archive_objects"
STORED = "genrelay_archive_stored_bytes"


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        keys={API_KEYS["a1"]: 2},
        useapi_accounts={USEAPI_TOKEN: {EMAIL: 2}},
        job_seconds=0.05,
        artifact_bytes=SIZE,
    )


async def start(
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
    **env: str,
) -> tuple[Settings, API]:
    return await start_archive(
        emulator,
        make_settings,
        start_worker,
        aiohttp_client,
        redis_url,
        ACCOUNTS,
        GENRELAY_ARCHIVE_ALLOW_PRIVATE="1",
        **env,
    )


async def completed_ltx_job(redis_client: aioredis.Redis, api: API) -> tuple[str, str]:
    """Run one ltx job to completion: its job id and its asset id (the archive is not waited on)."""
    operation, params = LTX_WORK
    client = Client(redis_client)
    job_id = await client.submit("ltx", operation, params)
    async with asyncio.timeout(WAIT_S):
        job = await client.wait(job_id)
    assert job["status"]["type"] == "completed", job
    job = await (await api.get(f"/v1/jobs/{job_id}")).json()
    return job_id, str(job["status"]["artifact"]["assetId"])


async def archive_record(
    redis_client: aioredis.Redis, asset_id: str, check: Callable[[dict[str, str]], bool]
) -> dict[str, str]:
    """The archive's hash of ``asset_id`` once ``check`` holds for it (bound it with ``asyncio.timeout``)."""
    key = archive_state.state_key(asset_id)
    while True:
        fields: dict[str, str] = await redis_client.hgetall(key)
        if check(fields):
            return fields
        assert fields.get("final") != "1", f"the copy settled before that: {fields}"
        await asyncio.sleep(0.05)  # a retried copy adds no event to wait on


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def scrape(port: int) -> Samples:
    """The worker's ``/metrics``; waits while its server is still starting (bound it)."""
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    assert resp.status == 200, await resp.text()
                    text = await resp.text()
                    break
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)
    return parse(text)


def archive_samples(samples: Samples) -> dict[str, float]:
    return {f"{name}{dict(labels)}": v for (name, labels), v in samples.items() if "archive" in name}


async def scrape_until(port: int, what: str, check: Callable[[Samples], bool]) -> Samples:
    """The worker's metrics once ``check`` holds for them; fails saying ``what`` never showed."""
    samples: Samples = {}
    try:
        async with asyncio.timeout(WAIT_S):
            samples = await scrape(port)
            while not check(samples):
                await asyncio.sleep(0.05)
                samples = await scrape(port)
    except TimeoutError:
        pytest.fail(f"the worker's /metrics never showed {what}: {archive_samples(samples)}")
    return samples


def refusing_store(tmp_path: Path) -> tuple[Path, Path]:
    """An archive directory that refuses writes until the second path returned is deleted. Root
    ignores file modes: a regular file stands where the local backend keeps its objects
    (``objects/ab/<sha256>``), so creating ``objects/ab`` fails."""
    store = tmp_path / "store"
    store.mkdir()
    blocker = store / "objects"
    blocker.write_bytes(b"not a directory")
    return store, blocker


async def test_a_refused_write_fails_the_copy_not_the_job_and_the_copy_is_retried_until_stored(
    tmp_path: Path,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
) -> None:
    store, blocker = refusing_store(tmp_path)
    _, api = await start(
        emulator, make_settings, start_worker, aiohttp_client, redis_url, GENRELAY_ARCHIVE_URL=store.as_uri()
    )
    job_id, asset_id = await completed_ltx_job(redis_client, api)

    async with asyncio.timeout(WAIT_S):
        first = await archive_record(
            redis_client, asset_id, lambda f: f.get("state") == "failed" and "retry_ms" in f
        )
    assert first.get("final") != "1", first  # not given up: it is retried
    asset = await (await api.get(f"/v1/assets/{asset_id}")).json()
    archive = asset["archive"]
    assert archive["state"] == "failed", archive
    assert "cannot write the archive directory" in (archive["message"] or ""), archive
    assert archive["retryAt"] == int(first["retry_ms"]), archive
    assert archive["url"] is None and archive["sha256"] is None, archive
    assert (await api.get(f"/v1/assets/{asset_id}/content")).status == 404
    job = await (await api.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"]["type"] == "completed", job

    # The copy is tried again (and refused again) on its own, later.
    async with asyncio.timeout(WAIT_S):
        second = await archive_record(
            redis_client,
            asset_id,
            lambda f: f.get("state") == "failed" and int(f.get("retry_ms", 0)) > int(first["retry_ms"]),
        )
    assert int(second["tries"]) > int(first["tries"]), (first, second)
    assert second.get("final") != "1", second

    # The storage takes writes again: the next try stores the copy.
    blocker.unlink()
    async with asyncio.timeout(WAIT_S):
        settled = await archive_settled(redis_client, "ltx", asset_id)
    assert settled == "archived"
    asset = await (await api.get(f"/v1/assets/{asset_id}")).json()
    archive = asset["archive"]
    name = URL(asset["assetUrl"]).name
    assert archive["state"] == "archived", archive
    assert archive["sha256"] == sha256_of(name, SIZE), archive
    assert archive["bytes"] == SIZE and archive["message"] is None and "retryAt" not in archive, archive
    assert (store / object_path(archive["sha256"])).stat().st_size == SIZE
    job = await (await api.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"]["type"] == "completed", job


async def test_a_copy_stored_on_a_retry_keeps_the_artifacts_content_type(
    tmp_path: Path,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
) -> None:
    """The refused attempt had downloaded the whole file; the retry resumes it (the provider answers
    ``Range: bytes=<size>-`` with 416) and must still record the type the provider served it with."""
    _, blocker = refusing_store(tmp_path)
    env = {"GENRELAY_ARCHIVE_URL": blocker.parent.as_uri()}
    _, api = await start(emulator, make_settings, start_worker, aiohttp_client, redis_url, **env)
    _, asset_id = await completed_ltx_job(redis_client, api)
    async with asyncio.timeout(WAIT_S):
        await archive_record(redis_client, asset_id, lambda f: f.get("state") == "failed" and "retry_ms" in f)
        blocker.unlink()
        assert await archive_settled(redis_client, "ltx", asset_id) == "archived"
    asset = await (await api.get(f"/v1/assets/{asset_id}")).json()
    async with emulator.session.get(asset["assetUrl"]) as provider:
        assert provider.status == 200
        served_as = provider.content_type
    content = await api.get(asset["archive"]["url"])
    assert content.status == 200
    assert (asset["archive"]["mimeType"], content.content_type) == (served_as, served_as), (
        f"the provider serves the artifact as {served_as}; the copy made on a retry is recorded and "
        f"served as {asset['archive']['mimeType']} / {content.content_type}"
    )


async def test_the_worker_metrics_count_the_copy_and_report_the_usage_after_a_retention_pass(
    redis_client: aioredis.Redis,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
) -> None:
    """Read over HTTP from the worker's own metrics server (``GENRELAY_WORKER_METRICS_PORT``). The
    worker runs in this process, so its counters carry what earlier tests' workers counted: the
    counters are compared with a scrape taken before the job. A retention pass runs every
    ``min(30 s, GENRELAY_ARCHIVE_RETENTION / 2)``: a 20 s retention gives one 10 s after the start,
    while the copy (deleted 20 s after its asset was made) is still there."""
    port = free_port()
    env = {"GENRELAY_WORKER_METRICS_PORT": str(port), "GENRELAY_ARCHIVE_RETENTION": "20"}
    _, api = await start(emulator, make_settings, start_worker, aiohttp_client, redis_url, **env)
    state = ArchiveState(redis_client)
    # The pass at the worker's start has read the empty archive (Redis is flushed per test).
    before = await scrape_until(port, "no archived object", lambda m: value(m, OBJECTS) == 0)
    assert await state.usage() == (0, 0)
    _, asset_id = await completed_ltx_job(redis_client, api)
    async with asyncio.timeout(WAIT_S):
        assert await archive_settled(redis_client, "ltx", asset_id) == "archived"

    # The worker counts the outcome just after recording it: the scrape may come in between.
    earlier = value(before, ATTEMPTS, outcome="archived")  # this process's earlier workers counted these
    after = await scrape_until(
        port, "one more archived copy", lambda m: value(m, ATTEMPTS, outcome="archived") > earlier
    )
    assert value(after, ATTEMPTS, outcome="archived") - earlier == 1, archive_samples(after)
    copied = value(after, BYTES) - value(before, BYTES)
    asset = await (await api.get(f"/v1/assets/{asset_id}")).json()
    assert copied == asset["archive"]["bytes"] == SIZE, (copied, asset["archive"])

    gauges = await scrape_until(port, "an object in the archive", lambda m: value(m, OBJECTS) > 0)
    usage = await state.usage()
    assert usage == (1, SIZE)
    shown = (value(gauges, OBJECTS), value(gauges, STORED))
    assert shown == usage, (shown, usage)


async def test_import_assets_archives_what_it_records(
    tmp_path: Path,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
) -> None:
    _, api = await start(emulator, make_settings, start_worker, aiohttp_client, redis_url)
    # A job made at the provider without genrelay: only the import can find its artifact.
    async with emulator.session.post(
        f"{emulator.url}/v1/ltxstudio/videos/ltx-create",
        json={"prompt": "made elsewhere [ok]", "pollForResult": 1},
        headers=AUTH,
    ) as resp:
        assert resp.status == 200, await resp.text()
        outside = await resp.json()
    assert outside["status"]["type"] == "completed", outside

    env = process_env(tmp_path, redis_url, emulator.url, ACCOUNTS)
    # The emulator runs in this event loop: the command runs beside it, not blocking it.
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "daemon", "import-assets", EMAIL),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT_S):
        out, err = await command.communicate()
    assert command.returncode == 0, err.decode()
    assert "1 new" in out.decode(), out.decode()

    listed = await (await api.get("/v1/assets?provider=ltxstudio")).json()
    [asset] = listed["items"]
    assert asset["providerJobId"] == outside["jobId"] and asset["source"] == "import", asset
    asset_id = asset["id"]
    async with asyncio.timeout(WAIT_S):
        assert await archive_settled(redis_client, "ltxstudio", asset_id) == "archived"
    asset = await (await api.get(f"/v1/assets/{asset_id}")).json()
    archive = asset["archive"]
    assert archive["state"] == "archived", archive
    assert archive["sha256"] == sha256_of(URL(asset["assetUrl"]).name, SIZE), archive
    assert archive["bytes"] == SIZE, archive
    content = await api.get(archive["url"])
    assert content.status == 200 and len(await content.read()) == SIZE
