"""The vydra adapter against the emulator over real HTTP (docs/providers.md §3): submit, tolerant status
reads, its error table, cancel, capacity, assets, webhooks through the web app, and the per-account
request budget that keeps fast polling under the plan's limit."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from daemon import keys
from daemon.accounts_file import Account
from daemon.client import Client
from daemon.errors import ProviderAction, ProviderError, SettingsError
from daemon.jobs import Job, State
from daemon.providers import get_provider, webhook_provider
from daemon.providers.vydra import VydraProvider, classify, organization_holder, parse_status
from daemon.request_budget import FULL_SHARE, RequestBudget, RequestLimit, attach
from daemon.services import Services
from daemon.web.app import create_app
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, VYDRA_KEYS, Emulator

KEY = VYDRA_KEYS["v1"]
ACCOUNT = "vydra/v1"

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        keys={API_KEYS["a1"]: 2},
        vydra_accounts={KEY: {"plan": "creator"}},
        job_seconds=0.2,
        vydra_rate_window_seconds=60.0,
    )


@pytest.fixture
def adapter() -> VydraProvider:
    provider = get_provider("vydra")
    assert isinstance(provider, VydraProvider) and webhook_provider("vydra") is provider
    return provider


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
def account(emulator: Emulator, make_settings) -> Account:  # type: ignore[no-untyped-def]
    found = make_settings(emulator.url, accounts={ACCOUNT: 5}).account("vydra", "v1")
    assert found is not None
    return found  # type: ignore[no-any-return]


def job(operation: str, params: dict[str, Any], provider_job_id: str | None = None, **fields: str) -> Job:
    record = {
        "id": f"vydra-{'0' * 31}{len(params)}",
        "provider": "vydra",
        "operation": operation,
        "params": orjson.dumps(params).decode(),
        "state": "active",
        **fields,
    }
    if provider_job_id is not None:
        record["provider_job_id"] = provider_job_id
    return Job(record)


async def submitted(
    adapter: VydraProvider, session: aiohttp.ClientSession, account: Account, prompt: str, **kw: Any
) -> Job:
    params = {"prompt": prompt, **kw.pop("params", {})}
    new = job(kw.pop("operation", "generate_video"), params)
    provider_job_id = await adapter.submit(session, account, new, kw.pop("callback_url", None))
    return job(new.operation, params, provider_job_id)


async def read_until(
    adapter: VydraProvider, session: aiohttp.ClientSession, account: Account, followed: Job, state: State
) -> Any:
    async with asyncio.timeout(10):
        while (update := await adapter.status(session, account, followed)).state is not state:  # noqa: ASYNC110
            await asyncio.sleep(0.03)
    return update


async def test_status_in_every_state_documented_shape(adapter, session, account, emulator: Emulator) -> None:  # type: ignore[no-untyped-def]
    """The adapter reads running, completed (artifact, thumbnail, no expiry) and failed jobs in the
    shape of vydra's jobs page."""
    running = await submitted(adapter, session, account, "[ok] [seconds=1] waves")
    first = await adapter.status(session, account, running)
    assert first.state is State.ACTIVE and first.provider_job_id == running.provider_job_id
    assert first.message in ("Queued", "Generating with veo3")
    done = await read_until(adapter, session, account, running, State.COMPLETED)
    assert done.artifact["assetUrl"].endswith(f"/vydra/{running.provider_job_id}.mp4")
    assert done.artifact["kind"] == "video" and done.artifact["asset"] == {"mimeType": "video/mp4"}
    assert done.artifact["thumbnailUrl"].endswith("-thumbnail.jpg")
    assert "expirationDateString" not in done.artifact
    failing = await submitted(adapter, session, account, "[fail] [seconds=0.1] nope")
    failed = await read_until(adapter, session, account, failing, State.FAILED)
    assert failed.message.startswith("failed: ") and len(failed.message) > len("failed: ")
    stats = (await emulator.stats())["vydra"]["accounts"][KEY]  # type: ignore[index]
    assert stats["submitted"] == 2 and stats["polls"] >= 3


async def test_progress_rises_while_running(adapter, session, account) -> None:  # type: ignore[no-untyped-def]
    followed = await submitted(adapter, session, account, "[ok] [seconds=2] slow")
    async with asyncio.timeout(10):
        while not (update := await adapter.status(session, account, followed)).progress:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert update.state is State.ACTIVE and 0 < update.progress < 100


async def test_status_in_the_models_route_shape(adapter, session, account, emulator: Emulator) -> None:  # type: ignore[no-untyped-def]
    """The adapter reads the same states in the models route's field names (``jobId``, ``videoUrl``,
    ``imageUrl``, error objects)."""
    await emulator.configure(vydra_status_shape="models")
    image = await submitted(adapter, session, account, "[ok] [seconds=0.1] a cat", operation="generate_image")
    done = await read_until(adapter, session, account, image, State.COMPLETED)
    assert done.artifact["kind"] == "image" and done.artifact["assetUrl"].endswith(".png")
    assert done.provider_job_id == image.provider_job_id
    failing = await submitted(adapter, session, account, "[fail=api_error] [seconds=0.1] x")
    failed = await read_until(adapter, session, account, failing, State.FAILED)
    assert failed.message.endswith("(api_error)")


@pytest.mark.parametrize(
    ("body", "url", "kind"),
    [
        (
            {"id": "j", "status": "completed", "output": {"url": "https://x/a.mp4"}},
            "https://x/a.mp4",
            "video",
        ),
        ({"jobId": "j", "status": "completed", "videoUrl": "https://x/v"}, "https://x/v", "video"),
        ({"id": "j", "status": "completed", "imageUrl": "https://x/i.webp"}, "https://x/i.webp", "image"),
        ({"id": "j", "status": "done", "audioUrl": "https://x/s"}, "https://x/s", "audio"),
        ({"id": "j", "status": "completed", "url": "https://x/f.bin"}, "https://x/f.bin", "other"),
        ({"id": "j", "status": "completed", "output": "https://x/o.png"}, "https://x/o.png", "image"),
        ({"id": "j", "status": "completed", "result": {"videoUrl": "https://x/r"}}, "https://x/r", "video"),
        (
            {"id": "j", "status": "succeeded", "outputs": [{"url": "https://x/l.mp3"}]},
            "https://x/l.mp3",
            "audio",
        ),
    ],
)
def test_result_url_is_read_from_every_tolerated_field(body: dict[str, Any], url: str, kind: str) -> None:
    update = parse_status(body)
    assert update.state is State.COMPLETED and update.provider_job_id == "j"
    assert update.artifact is not None
    assert (update.artifact["assetUrl"], update.artifact["kind"]) == (url, kind)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"id": "j", "status": "failed", "error": "Content policy"}, "failed: Content policy"),
        (
            {"jobId": "j", "status": "error", "error": {"message": "Boom", "detail": "gpu"}},
            "error: Boom (gpu)",
        ),
        ({"id": "j", "status": "failed", "message": "Timed out"}, "failed: Timed out"),
        (
            {"id": "j", "status": "canceled", "statusMessage": "Cancelled by user"},
            "canceled: Cancelled by user",
        ),
        ({"id": "j", "status": "failed"}, "failed: no message"),
    ],
)
def test_failure_text_is_read_from_every_tolerated_field(body: dict[str, Any], message: str) -> None:
    update = parse_status(body)
    assert update.state is State.FAILED and update.message == message


async def test_cancel_then_the_status_reads_cancelled(adapter, session, account, emulator: Emulator) -> None:  # type: ignore[no-untyped-def]
    followed = await submitted(adapter, session, account, "[ok] [seconds=5] long")
    assert (
        await adapter.cancel(session, account, followed)
        == "vydra cancelled the job (its credits are refunded)"
    )
    update = await adapter.status(session, account, followed)
    assert update.state is State.FAILED and update.error_type == "cancelled"
    assert (await adapter.cancel(session, account, followed)).startswith("vydra was no longer running it")
    unknown = job("generate_video", {}, "123e4567-e89b-12d3-a456-426614174000")
    assert await adapter.cancel(session, account, unknown) == "vydra was no longer running it (404)"
    assert (await emulator.stats())["vydra"]["accounts"][KEY]["cancelled"] == 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (400, ProviderAction.GIVE_UP),
        (401, ProviderAction.STOP_ACCOUNT),
        (402, ProviderAction.STOP_ACCOUNT),
        (403, ProviderAction.STOP_ACCOUNT),
        (413, ProviderAction.GIVE_UP),
        (422, ProviderAction.GIVE_UP),
        (429, ProviderAction.RETRY),
        (500, ProviderAction.RETRY),
        (503, ProviderAction.RETRY),
    ],
)
async def test_error_table(
    adapter, session, account, emulator: Emulator, status: int, action: ProviderAction
) -> None:  # type: ignore[no-untyped-def]
    """Each error status of a submit maps to the action of docs/providers.md §3.5, with its Retry-After,
    and nothing is submitted."""
    await emulator.fault(method="POST", path_prefix="/api/v1/jobs", status=status, retry_after=7)
    with pytest.raises(ProviderError) as caught:
        await submitted(adapter, session, account, "[ok] x")
    assert (caught.value.action, caught.value.status) == (action, status)
    assert caught.value.message.startswith(f"vydra {status} ")
    assert caught.value.retry_after == 7
    assert (await emulator.stats())["vydra"]["accounts"][KEY]["submitted"] == 0  # type: ignore[index]


async def test_real_error_answers(adapter, session, account, emulator: Emulator) -> None:  # type: ignore[no-untyped-def]
    """Answers the emulator really produces (bad input, no credits, unknown key, unknown job, the
    request limit) give up, stop the account, end the job as lost or retry as the table says."""
    with pytest.raises(ProviderError) as caught:
        await adapter.submit(session, account, job("generate_video", {}))
    assert caught.value.action is ProviderAction.GIVE_UP and caught.value.error_type == "INVALID_INPUT"
    await emulator.control("POST", "vydra-accounts", {"key": KEY, "credits": 10})
    with pytest.raises(ProviderError) as caught:
        await submitted(adapter, session, account, "[ok] x")
    assert caught.value.action is ProviderAction.STOP_ACCOUNT and caught.value.status == 402
    stranger = dataclasses.replace(account, api_key="vydra_live_user_7_nobody")
    with pytest.raises(ProviderError) as caught:
        await submitted(adapter, session, stranger, "[ok] x")
    assert caught.value.action is ProviderAction.STOP_ACCOUNT and caught.value.error_type == "KEY_NOT_FOUND"
    gone = await adapter.status(session, account, job("generate_video", {}, "no-such-job"))
    assert gone.state is State.FAILED and gone.error_type == "lost"
    # The documented 429 body's retryAfter counts when no Retry-After header came.
    await emulator.control("POST", "vydra-accounts", {"key": KEY, "rpm": 1})
    with pytest.raises(ProviderError) as caught:
        await adapter.capacity(session, account)
    assert (
        caught.value.status == 429 and caught.value.retry_after is not None and caught.value.retry_after >= 1
    )


def test_retry_after_comes_from_the_body_when_no_header_says() -> None:
    body = {"error": "Rate limit exceeded", "code": "RATE_LIMIT_EXCEEDED", "retryAfter": 30}
    with pytest.raises(ProviderError) as caught:
        classify(429, body, {})
    assert (caught.value.action, caught.value.retry_after) == (ProviderAction.RETRY, 30)
    with pytest.raises(ProviderError) as caught:
        classify(429, body, {"Retry-After": "5"})
    assert caught.value.retry_after == 5


async def test_capacity_lists_running_jobs_with_their_refs(
    adapter, session, account, emulator: Emulator
) -> None:  # type: ignore[no-untyped-def]
    await emulator.configure(vydra_list_webhook_url=True)
    refs = []
    for n in range(3):
        new = job("generate_video", {"prompt": f"[ok] [seconds=5] {n}"})
        new = Job({**new.fields, "id": f"vydra-{n:032x}"})
        await adapter.submit(session, account, new, "http://127.0.0.1:9/callbacks/vydra/token")
        refs.append(new.id)
    await submitted(adapter, session, account, "[ok] [seconds=0] done already")
    capacity = await adapter.capacity(session, account)
    assert sorted(r.reply_ref or "" for r in capacity.executing) == sorted(refs)
    assert {r.account for r in capacity.executing} == {"v1"}
    assert capacity.max_jobs == 10  # the creator plan's concurrent jobs
    await emulator.configure(vydra_list_webhook_url=False)
    assert {r.reply_ref for r in (await adapter.capacity(session, account)).executing} == {None}


async def test_assets_across_pages_and_by_workflow(adapter, session, account) -> None:  # type: ignore[no-untyped-def]
    made = []
    for n in range(5):
        operation = "generate_image" if n % 2 else "generate_video"
        made.append(await submitted(adapter, session, account, f"[ok] [seconds=0] {n}", operation=operation))
    pages = [await adapter.list_assets(session, account, page=p, limit=2) for p in (1, 2, 3)]
    assert [page.has_more for page in pages] == [True, True, False]
    assets = [asset for page in pages for asset in page.assets]
    assert [a.provider_job_id for a in assets] == [j.provider_job_id for j in made][::-1]
    first = assets[0]
    assert (first.kind, first.workflow, first.mime_type) == ("videos", "generate_video", "video/mp4")
    assert first.provider_asset_id.startswith("ast_") and first.thumbnails["thumbnail"].endswith(".jpg")
    assert first.expires_ms is None and first.created_ms is not None and first.created_ms > 0
    images = await adapter.list_assets(session, account, page=1, limit=10, workflow="generate_image")
    assert [a.kind for a in images.assets] == ["images", "images"] and not images.has_more


async def test_budget_holds_requests_back_and_tells_how_long(
    adapter, session, account, redis_client: aioredis.Redis, open_daemon, make_settings, emulator: Emulator
) -> None:  # type: ignore[no-untyped-def]
    services: Services = await open_daemon(make_settings(emulator.url, accounts={ACCOUNT: 5}))
    budget = RequestBudget(services.client, services.scripts)
    limit = RequestLimit(4, 30.0)
    taken = [await budget.take("vydra", "v1", limit, FULL_SHARE) for _ in range(4)]
    assert taken[:3] == [0.0, 0.0, 0.0]
    assert 0 < taken[3] <= 32  # one request of headroom under the provider's limit
    assert await redis_client.zcard(keys.request_budget_key("vydra", "v1")) == 3
    # A session with a budget: the adapter sends nothing once the window is used up.
    limited = dataclasses.replace(account, requests_per_minute=4, rate_window_seconds=30.0)
    attach(session, budget)
    with pytest.raises(ProviderError) as caught:
        await adapter.submit(session, limited, job("generate_video", {"prompt": "[ok] x"}))
    assert caught.value.status == 429 and caught.value.retry_after is not None
    assert (await emulator.stats())["vydra"]["accounts"][KEY]["requests"] == 0  # type: ignore[index]


# -- through the daemon: webhooks and the budget under load ------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def relay(
    emulator: Emulator, make_settings, open_daemon, start_worker, redis_url: str
) -> AsyncIterator[Callable[..., Awaitable[Services]]]:  # type: ignore[no-untyped-def]
    """Web (on the public URL vydra calls back) and a worker, with extra settings."""
    servers: list[TestServer] = []

    async def start(accounts: dict[str, Any] | None = None, worker: bool = True, **env: str) -> Services:
        port = free_port()
        settings = make_settings(
            emulator.url,
            accounts=accounts or {ACCOUNT: 2},
            GENRELAY_PUBLIC_URL=f"http://127.0.0.1:{port}",
            **env,
        )
        services = await open_daemon(settings)
        server = TestServer(create_app(settings, redis_url), host="127.0.0.1", port=port)
        await server.start_server()
        servers.append(server)
        if worker:
            await start_worker(settings)
        return services

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


async def sources(app: Client, job_id: str) -> list[str]:
    entries = await app.redis.xrange(keys.events_key("vydra"))
    return [f"{f['source']}:{f['state']}" for _, f in entries if f["job"] == job_id]


async def run_job(app: Client, prompt: str) -> dict[str, Any]:
    job_id = await app.submit("vydra", "generate_video", {"prompt": prompt})
    async with asyncio.timeout(30):
        return await app.wait(job_id)


async def test_a_webhook_ends_the_job_after_a_confirming_read(
    relay, app_client: Client, emulator: Emulator
) -> None:  # type: ignore[no-untyped-def]
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="600")
    done = await run_job(app_client, "[ok] a lighthouse")
    assert done["status"]["type"] == "completed", done
    assert done["status"]["artifact"]["assetUrl"].endswith(f"{done['providerJobId']}.mp4")
    assert done["endedBy"] == "callback"  # a status read asked for by the webhook ended it
    assert "callback:active" in await sources(app_client, done["jobId"])
    stats = (await emulator.stats())["vydra"]
    assert stats["submissions_by_ref"] == {done["jobId"]: 1}  # type: ignore[index]
    assert stats["callbacks"]["delivered"] == 1  # type: ignore[index]


async def test_a_dropped_webhook_is_recovered_by_the_safety_poll(
    relay, app_client: Client, emulator: Emulator
) -> None:  # type: ignore[no-untyped-def]
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="0.5")
    await emulator.configure(webhook_drop_rate=1.0)
    done = await run_job(app_client, "[ok] a message in a bottle")
    assert done["status"]["type"] == "completed", done
    assert not any(s.startswith("callback:") for s in await sources(app_client, done["jobId"]))
    assert done["endedBy"] == "safety_poll"
    assert (await emulator.stats())["vydra"]["callbacks"]["dropped"] == 1  # type: ignore[index]


async def test_early_duplicated_and_reordered_webhooks_change_nothing(
    relay, app_client: Client, emulator: Emulator
) -> None:  # type: ignore[no-untyped-def]
    await relay(GENRELAY_SAFETY_POLL_INTERVAL="600")
    await emulator.configure(
        webhook_before_submit_response=True,
        webhook_progress=True,
        webhook_duplicate_rate=1.0,
        webhook_reorder=True,
        vydra_status_shape="models",
    )
    done = await run_job(app_client, "[ok] an early bird")
    assert done["status"]["type"] == "completed", done
    assert done["submitTries"] == 1
    events = await sources(app_client, done["jobId"])
    assert sum(e.endswith(":completed") for e in events) == 1, events
    callbacks = (await emulator.stats())["vydra"]["callbacks"]  # type: ignore[index]
    assert callbacks["duplicated"] >= 3 and callbacks["failed"] == 0, callbacks


async def test_a_webhook_without_ref_or_for_another_job_is_refused(relay, emulator: Emulator) -> None:  # type: ignore[no-untyped-def]
    services = await relay(worker=False)
    token = services.callback_tokens().issue("vydra", f"vydra-{'1' * 32}")
    base = f"{services.settings.public_url}/callbacks/vydra/{token}"
    body = {"id": "x", "status": "completed", "output": {"url": "https://x/y.mp4"}}
    async with aiohttp.ClientSession() as client:
        async with client.post(base, json=body) as resp:
            assert resp.status == 400 and "'ref'" in (await resp.json())["error"]
        async with client.post(f"{base}?ref=vydra-{'2' * 32}", json=body) as resp:
            assert resp.status == 404


async def test_the_request_budget_keeps_fast_polls_under_the_plans_limit(
    make_settings, open_daemon, start_worker, app_client: Client, emulator: Emulator
) -> None:  # type: ignore[no-untyped-def]
    """Ten requests per second at vydra, six jobs polled every 50 ms with no webhook to help: the
    budget postpones polls instead of sending them, so vydra never answers 429."""
    await emulator.control("POST", "vydra-accounts", {"key": KEY, "rpm": 10, "concurrent": 6})
    await emulator.configure(vydra_rate_window_seconds=1.0)
    budget = {"max_jobs": 6, "requests_per_minute": 10, "rate_window_seconds": 1.0}
    settings = make_settings(emulator.url, accounts={ACCOUNT: budget}, GENRELAY_POLL_INTERVAL="0.05")
    await open_daemon(settings)
    await start_worker(settings)
    ids = [
        await app_client.submit("vydra", "generate_image", {"prompt": f"[ok] [seconds=0.3] {n}"})
        for n in range(6)
    ]
    async with asyncio.timeout(60):
        done = [await app_client.wait(job_id) for job_id in ids]
    assert [d["status"]["type"] for d in done] == ["completed"] * 6, done
    stats = (await emulator.stats())["vydra"]["accounts"][KEY]  # type: ignore[index]
    assert stats["rejected_429"] == 0, stats
    assert stats["max_requests_in_window"] <= 10, stats
    assert stats["submitted"] == 6 and stats["polls"] >= 6, stats
    # Taken from the budget of the account's organisation (vydra limits per organisation).
    assert await app_client.redis.exists(keys.request_budget_key("vydra", organization_holder("org_1001")))


async def test_other_providers_take_nothing_from_a_budget(
    make_settings, open_daemon, start_worker, app_client: Client, emulator: Emulator
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(emulator.url, accounts={"a1": 2, ACCOUNT: 2})
    await open_daemon(settings)
    await start_worker(settings)
    params = {"prompt": "[ok]", "model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
    job_id = await app_client.submit("ltx", "text-to-video", params)
    async with asyncio.timeout(30):
        assert (await app_client.wait(job_id))["status"]["type"] == "completed"
    assert await app_client.redis.keys("genrelay:{ltx}:budget:*") == []


def test_accounts_file_budget_keys(make_settings) -> None:  # type: ignore[no-untyped-def]
    """``requests_per_minute`` (``_per_hour``, ``_per_day``), ``rate_window_seconds`` and
    ``organization`` in the accounts file reach the account, are unset when absent, and a bad value
    is refused by name."""
    spec = {"max_jobs": 2, "requests_per_minute": 30, "rate_window_seconds": 2}
    found = make_settings(accounts={ACCOUNT: spec}).account("vydra", "v1")
    assert (found.api_key, found.requests_per_minute, found.rate_window_seconds) == (KEY, 30, 2.0)
    plain = make_settings(accounts={ACCOUNT: 2}).account("vydra", "v1")
    assert (plain.requests_per_minute, plain.rate_window_seconds) == (None, None)
    with pytest.raises(SettingsError, match="'requests_per_minute' must be a positive integer"):
        make_settings(accounts={ACCOUNT: {"max_jobs": 2, "requests_per_minute": 0}})
    windows = {"max_jobs": 2, "requests_per_minute": 30, "requests_per_hour": 500, "organization": " org_9 "}
    found = make_settings(accounts={ACCOUNT: windows}).account("vydra", "v1")
    assert (found.requests_per_hour, found.requests_per_day, found.organization) == (500, None, "org_9")
    with pytest.raises(SettingsError, match="'requests_per_day' must be a positive integer"):
        make_settings(accounts={ACCOUNT: {"max_jobs": 2, "requests_per_day": 1.5}})
    with pytest.raises(SettingsError, match="'organization' must be a non-empty string"):
        make_settings(accounts={ACCOUNT: {"max_jobs": 2, "organization": ""}})


async def test_vydras_concurrency_429_cools_the_account_and_every_job_runs_later(
    make_settings, open_daemon, start_worker, app_client: Client, emulator: Emulator
) -> None:  # type: ignore[no-untyped-def]
    # Our accounts file claims 4 slots where the plan allows 2: vydra answers 429 (concurrent).
    await emulator.control("POST", "vydra-accounts", {"key": KEY, "concurrent": 2})
    await emulator.configure(vydra_rate_window_seconds=1.0)
    spec = {"max_jobs": 4, "requests_per_minute": 60, "rate_window_seconds": 1.0}
    settings = make_settings(emulator.url, accounts={ACCOUNT: spec})
    await open_daemon(settings)
    await start_worker(settings)
    ids = [
        await app_client.submit("vydra", "generate_image", {"prompt": f"[ok] [seconds=0.3] {n}"})
        for n in range(4)
    ]
    async with asyncio.timeout(60):
        done = [await app_client.wait(job_id) for job_id in ids]
    assert [d["status"]["type"] for d in done] == ["completed"] * 4, done
    stats = (await emulator.stats())["vydra"]["accounts"][KEY]  # type: ignore[index]
    assert stats["rejected_429_concurrent"] >= 1 and stats["peak"] == 2 and stats["submitted"] == 4, stats
