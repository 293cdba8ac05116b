"""The dashboard at ``/``: its token gate and server-rendered markup, then, in headless Chromium
while jobs run, slot bars and progress bars that match the JSON API.

The browser is Debian's ``chromium`` (installed here with apt-get when missing), driven by
Playwright; Playwright never downloads a browser of its own. A screenshot of the page is left in
``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import os
import re
import shutil
import struct
import subprocess
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from daemon import keys
from daemon.client import Client
from daemon.settings import Settings
from daemon.web.app import create_app, serve
from daemon.web.dashboard import artifact_link, render_accounts
from tests.conftest import Emulator

if TYPE_CHECKING:
    from playwright.async_api import Page

TOKEN = "dashboard-token-0123456789abcdef"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
INSTALL_TIMEOUT_S = 600
PAGE_TIMEOUT_MS = 15_000
# The page refreshes every 2 s: two refreshes and some slack show a state the API already has.
SHOWN_WITHIN_MS = 5_000
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
# Long enough that the first jobs stay active while the page is compared with the API.
JOB_SECONDS = 6

# What the page shows: accounts, queue depth, active jobs, finished jobs; sorted where the order is
# the page's own business.
PAGE_STATE_JS = """() => {
  const all = (selector) => [...document.querySelectorAll(selector)];
  return {
    accounts: all('#accounts [data-account]')
      .map((a) => [a.dataset.account, +a.dataset.busy, +a.dataset.max, +a.dataset.cooldown,
                   +a.dataset.disabled])
      .sort(),
    queue: all('#accounts [data-queue]').map((q) => +q.dataset.queue),
    active: all('#active-jobs [data-job]').map((j) => [j.dataset.job, +j.dataset.progress]).sort(),
    finished: all('#finished-jobs [data-job]').map((j) => {
      const link = j.querySelector('a.artifact');
      return [j.dataset.job, link ? link.getAttribute('href') : null];
    }),
  };
}"""
SHOWS_JS = f"""(expected) => {{
  const state = ({PAGE_STATE_JS})();
  return Object.keys(expected).every((key) => JSON.stringify(state[key]) === JSON.stringify(expected[key]));
}}"""


# -- without a browser ----------------------------------------------------------------------------


@pytest.fixture
async def guarded(
    redis_client: aioredis.Redis,
    redis_url: str,
    make_settings: Callable[..., Settings],
    aiohttp_client: AiohttpClient,
) -> Any:
    return await aiohttp_client(create_app(make_settings(GENRELAY_API_TOKENS=TOKEN), redis_url))


async def test_with_tokens_set_the_dashboard_needs_one(guarded: Any) -> None:
    """No token or a wrong one gets the 401 token form; the header or ``?token=`` opens the page."""
    with capture_logs() as logs:
        for path in ("/", "/?token=wrong-token"):
            resp = await guarded.get(path)
            assert resp.status == 401 and resp.content_type == "text/html"
            page = await resp.text()
            assert 'name="token"' in page and "data-account" not in page
        by_header = await guarded.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
        by_query = await guarded.get(f"/?token={TOKEN}")
    for resp in (by_header, by_query):
        assert resp.status == 200
        assert 'data-account="a1"' in await resp.text()
    assert TOKEN not in repr(logs) and "wrong-token" not in repr(logs)


async def test_a_query_token_opens_only_the_page_never_the_api(guarded: Any) -> None:
    resp = await guarded.get(f"/v1/jobs?token={TOKEN}")
    assert resp.status == 401


async def test_without_tokens_the_server_renders_slots_and_allows_only_its_own_script(
    redis_client: aioredis.Redis,
    redis_url: str,
    make_settings: Callable[..., Settings],
    aiohttp_client: AiohttpClient,
) -> None:
    """The page reads right before its script runs: one live lease on a1, one job waiting."""
    client = await aiohttp_client(create_app(make_settings(accounts={"a1": 2, "a2": 1}), redis_url))
    now_ms = int(time.time() * 1000)
    leased = f"ltx-{uuid.uuid4().hex}"
    await redis_client.zadd(keys.provider_keys("ltx").leases, {leased: now_ms + 60_000})
    await redis_client.hset(keys.provider_keys("ltx").lease_account, leased, "a1")
    await redis_client.zadd(keys.provider_keys("ltx").waiting, {f"ltx-{uuid.uuid4().hex}": now_ms})
    resp = await client.get("/")
    assert resp.status == 200
    page = await resp.text()
    assert 'data-account="a1" data-busy="1" data-max="2"' in page
    assert 'data-account="a2" data-busy="0" data-max="1"' in page
    assert 'data-queue="1"' in page
    [script] = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = resp.headers["Content-Security-Policy"]
    assert f"script-src 'sha256-{digest}';" in policy and "default-src 'none'" in policy
    assert resp.headers["Referrer-Policy"] == "no-referrer"


def test_provider_text_is_escaped_and_only_http_artifacts_are_linked() -> None:
    account = {
        "provider": "ltx",
        "email": '<img src=x onerror="alert(1)">',
        "maxJobs": 1,
        "executing": 0,
        "waiting": 0,
        "enabled": False,
        "disabledReason": '"><script>alert(1)</script>',
        "cooldownUntil": None,
    }
    rendered = render_accounts([account])
    assert "<img" not in rendered and "<script" not in rendered
    budgeted = {**account, "enabled": True, "requestBudget": {"minute": {"limit": 30, "used": 12}}}
    assert '<span class="mark budget"' in render_accounts([budgeted]) and "12/30 min" in render_accounts(
        [budgeted]
    )
    assert "no artifact" in artifact_link({"assetUrl": "javascript:alert(1)", "kind": "image"})
    assert "no artifact" in artifact_link(None)
    image = artifact_link({"assetUrl": "https://cdn.example/a.webp?sig=1&x=2", "kind": ""})
    assert '<img class="thumb" src="https://cdn.example/a.webp?sig=1&amp;x=2"' in image
    ours = artifact_link(
        {"assetUrl": "https://cdn.example/v.mp4", "kind": "video", "assetId": f"ltx-asset-{'a' * 32}"}
    )
    assert f'href="/v1/assets/ltx-asset-{"a" * 32}/content?fallback=provider"' in ours
    video = artifact_link({"assetUrl": "https://cdn.example/v.mp4", "kind": "video"})
    assert '<a class="artifact" data-kind="video" href="https://cdn.example/v.mp4"' in video
    assert "<img" not in video


# -- in Chromium ----------------------------------------------------------------------------------


def install_chromium() -> str | None:
    """apt-get install chromium; returns why it could not, or None once it is there."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available on this machine"
    if os.geteuid() != 0:
        return "installing it needs root: run `apt-get install -y chromium` once"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` took more than {INSTALL_TIMEOUT_S} s"
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
    return None if CHROMIUM.exists() else f"apt-get installed chromium, but not as {CHROMIUM}"


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        problem = install_chromium()
        if problem is not None:
            pytest.skip(f"the dashboard test needs Debian's chromium: {problem}")
    return CHROMIUM


@pytest.fixture
async def page(chromium: Path) -> AsyncIterator[Page]:
    async_api = pytest.importorskip("playwright.async_api", reason="playwright is in the dev extras")
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), headless=True)
        try:
            tab = await browser.new_page(viewport={"width": 1280, "height": 900})
            tab.set_default_timeout(PAGE_TIMEOUT_MS)
            yield tab
        finally:
            await browser.close()


def png(width: int = 64, height: int = 40, rgb: tuple[int, int, int] = (46, 157, 91)) -> bytes:
    """A solid-colour PNG, so a thumbnail can really load without any file in the repository."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + bytes(rgb) * width) * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
async def image_url() -> AsyncIterator[str]:
    """An image artifact on a loopback server, as a provider's CDN would serve it."""

    async def thumbnail(request: web.Request) -> web.Response:
        return web.Response(body=png(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/thumb.png", thumbnail)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/thumb.png"))
    finally:
        await server.close()


async def seed_finished_image_job(client: aioredis.Redis, url: str) -> str:
    """A completed job with an image artifact, written in the documented Redis layout (the
    emulated provider only makes videos)."""
    job_id = f"ltx-{uuid.uuid4().hex}"
    now_ms = int(time.time() * 1000)
    await client.hset(
        keys.job_key(job_id),
        mapping={
            "id": job_id,
            "provider": "ltx",
            "operation": "text-to-video",
            "params": "{}",
            "state": "completed",
            "progress": "100",
            "account": "a1",
            "artifact": orjson.dumps({"assetUrl": url, "kind": "image"}).decode(),
            "created_ms": now_ms,
            "finished_ms": now_ms,
            "updated_ms": now_ms,
        },
    )
    # Its asset record, as the completion writes it: the dashboard links our copy of it.
    asset_id = keys.asset_id("ltx", None, None, job_id)
    await client.hset(
        keys.asset_key(asset_id),
        mapping={"id": asset_id, "provider": "ltx", "type": "images", "url": url, "created_ms": now_ms},
    )
    pk = keys.provider_keys("ltx")
    await client.zadd(pk.index, {job_id: now_ms})
    await client.zadd(pk.state("completed"), {job_id: now_ms})
    return job_id


@pytest.fixture
async def web_url(redis_client: aioredis.Redis, redis_url: str) -> AsyncIterator[Callable[[Settings], Any]]:
    """Run the real server loop (with its access log) on a free port."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(settings: Settings) -> str:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            serve(dataclasses.replace(settings, port=0), redis_url, on_ready=ready.set_result, stop=stop)
        )
        tasks.append(task)
        await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        assert ready.done(), task.exception()
        return ready.result()

    try:
        yield start
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def api_get(base: str, path: str) -> Any:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session, session.get(base + path, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def wait_until_shown(page: Page, expected: dict[str, Any]) -> None:
    """Wait for the page's next refreshes to show ``expected``; on timeout, show the difference."""
    try:
        await page.wait_for_function(SHOWS_JS, arg=expected, timeout=SHOWN_WITHIN_MS)
    except Exception:
        shown = await page.evaluate(PAGE_STATE_JS)
        assert {key: shown[key] for key in expected} == expected
        raise


def slots_in(capacity: dict[str, Any]) -> list[list[Any]]:
    return sorted(
        [a["email"], a["executing"], a["maxJobs"], int(bool(a["cooldownUntil"])), int(not a["enabled"])]
        for a in capacity["available"]
    )


async def check_running_jobs(page: Page, base: str) -> None:
    """a1 runs 2, a2 runs 1, a3 is disabled and cooling down: 3 active, 2 waiting, until the first
    jobs end. The page shows exactly what the API says."""
    await page.wait_for_function(
        "() => { const jobs = [...document.querySelectorAll('#active-jobs [data-job]')];"
        " return jobs.length === 3 && jobs.every((j) => j.dataset.progress === '50'); }"
    )
    capacity = await api_get(base, "/v1/scheduler/available")
    active = await api_get(base, "/v1/jobs?status=active&limit=100")
    expected = {
        "accounts": slots_in(capacity),
        "queue": [capacity["available"][0]["waiting"]],
        "active": sorted([job["jobId"], job["status"]["progress"]] for job in active["items"]),
    }
    assert expected["accounts"] == [["a1", 2, 2, 0, 0], ["a2", 1, 1, 0, 0], ["a3", 0, 1, 1, 1]]
    assert expected["queue"] == [2] and len(expected["active"]) == 3
    await wait_until_shown(page, expected)
    for elapsed in await page.locator("#active-jobs .elapsed").all_inner_texts():
        assert re.fullmatch(r"\d\d:\d\d", elapsed)


async def check_finished_jobs(page: Page, base: str, image_job: str) -> None:
    """Once the first three end, the finished list links each artifact as the API lists it (with
    tokens set, a link cannot carry one: the provider's URL, not our copy), and the image artifact
    shows as a loaded thumbnail."""
    await page.wait_for_function(
        "() => document.querySelectorAll('#finished-jobs a.artifact[data-kind=\"video\"]').length === 3"
    )
    finished = await api_get(base, "/v1/jobs?status=completed&limit=10")
    links = [[job["jobId"], job["status"]["artifact"]["assetUrl"]] for job in finished["items"]]
    assert len(links) == 4 and links[-1][0] == image_job
    await wait_until_shown(page, {"finished": links})
    thumb = page.locator(f'#finished-jobs [data-job="{image_job}"] img.thumb')
    await thumb.wait_for()
    await page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=await thumb.element_handle()
    )


@pytest.mark.timeout(INSTALL_TIMEOUT_S * 2 + 120)  # the first run may install chromium
async def test_the_dashboard_shows_slots_and_progress_as_the_api_does(
    page: Page,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    open_daemon: Callable[[Settings], Any],
    start_worker: Callable[[Settings], Any],
    web_url: Callable[[Settings], Any],
    image_url: str,
    app_client: Client,
    redis_client: aioredis.Redis,
) -> None:
    settings = make_settings(emulator.url, accounts={"a1": 2, "a2": 1, "a3": 1}, GENRELAY_API_TOKENS=TOKEN)
    services = await open_daemon(settings)
    await services.slots.set_enabled("ltx", "a3", enabled=False, reason="LTX 402: out of credits")
    cooldown_until = int(time.time() * 1000) + 600_000
    await redis_client.zadd(keys.provider_keys("ltx").cooldown, {"a3": cooldown_until})
    image_job = await seed_finished_image_job(redis_client, image_url)
    await start_worker(settings)
    with capture_logs() as logs:
        base = await web_url(settings)
        await page.goto(f"{base}/?token={TOKEN}")
        # The token moves to sessionStorage, leaves the address bar, and the API calls carry it.
        await page.wait_for_function("() => !location.search.includes('token')")
        await page.wait_for_function("() => document.body.dataset.refreshes >= 1")
        assert await page.get_attribute("#status", "data-status") == "live"
        for n in range(5):
            prompt = f"[ok] [seconds={JOB_SECONDS}] {n}"
            await app_client.submit("ltx", "text-to-video", {"prompt": prompt, **T2V})
        await check_running_jobs(page, base)
        await check_finished_jobs(page, base, image_job)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        # A reload carries no token: the 401 page fetches the dashboard with the one this tab kept, in a
        # header; no address the browser requests (history, proxies) holds the token again.
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        await page.reload()
        await page.wait_for_selector("#accounts [data-account]")
        await page.wait_for_function(
            "() => !location.search.includes('token') && document.body.dataset.refreshes >= 1"
        )
        assert requested and not [url for url in requested if TOKEN in url], requested
    assert TOKEN not in repr(logs)
