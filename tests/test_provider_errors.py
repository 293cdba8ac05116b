"""Provider answers that are not plain success, over real HTTP against the emulator
(docs/providers.md §2.5)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daemon import keys
from daemon.client import Client
from daemon.errors import Limit, ProviderError
from daemon.providers import ltx, useapi, vydra
from tests.conftest import API_KEYS, Emulator
from tests.harness import slots as slot_index

T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
SUBMIT = "/v2/text-to-video"


async def finished(client: Client, job_id: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        return await client.wait(job_id)


async def sources(client: Client, job_id: str) -> list[str]:
    entries = await client.redis.xrange(keys.events_key("ltx"))
    return [f["source"] + ":" + f["state"] for _, f in entries if f["job"] == job_id]


@pytest.fixture
async def daemon(emulator: Emulator, make_settings, start_worker, open_daemon):  # type: ignore[no-untyped-def]
    async def start(accounts: dict[str, int] | None = None, **env: str):  # type: ignore[no-untyped-def]
        settings = make_settings(emulator.url, accounts=accounts or {"a1": 2}, **env)
        services = await open_daemon(settings)
        await start_worker(settings)
        return services

    return start


async def test_submit_5xx_is_retried_with_backoff(daemon, emulator: Emulator, app_client: Client) -> None:  # type: ignore[no-untyped-def]
    await daemon()
    await emulator.fault(method="POST", path_prefix=SUBMIT, status=503, count=2)
    job = await finished(
        app_client, await app_client.submit("ltx", "text-to-video", {"prompt": "[ok]", **T2V})
    )
    assert job["status"]["type"] == "completed", job
    assert job["submitTries"] == 3
    assert (await emulator.stats())["keys"][API_KEYS["a1"]]["submitted"] == 1


async def test_submit_gives_up_after_max_tries(daemon, emulator: Emulator, app_client: Client) -> None:  # type: ignore[no-untyped-def]
    await daemon(GENRELAY_SUBMIT_MAX_TRIES="2")
    await emulator.fault(method="POST", path_prefix=SUBMIT, status=500, count=5, message="boom")
    job = await finished(
        app_client, await app_client.submit("ltx", "text-to-video", {"prompt": "[ok]", **T2V})
    )
    assert job["status"]["type"] == "failed"
    assert job["status"]["message"].startswith("gave up after 2 submit attempts: LTX 500")
    assert await slot_index.lease_count(app_client.redis, "ltx", "a1") == 0


async def test_bad_request_fails_the_job_with_the_providers_message(daemon, app_client: Client) -> None:  # type: ignore[no-untyped-def]
    await daemon()
    params = {"prompt": "no duration", "model": "ltx-2-fast", "resolution": "1920x1080"}
    job = await finished(app_client, await app_client.submit("ltx", "text-to-video", params))
    assert job["status"]["type"] == "failed"
    assert job["status"]["message"] == "LTX 400 invalid_request_error: Missing required field: duration"
    assert job["submitTries"] == 1


async def test_provider_429_cools_the_account_and_the_job_runs_later(
    daemon, emulator: Emulator, app_client: Client
) -> None:  # type: ignore[no-untyped-def]
    # Our accounts file claims 4 slots where the provider allows 2: the provider answers 429.
    await daemon(accounts={"a1": 4})
    await emulator.configure(retry_after_seconds=0)
    ids = [
        await app_client.submit("ltx", "text-to-video", {"prompt": f"[ok] [seconds=0.5] {n}", **T2V})
        for n in range(4)
    ]
    jobs = [await finished(app_client, job_id) for job_id in ids]
    assert [j["status"]["type"] for j in jobs] == ["completed"] * 4
    stats = (await emulator.stats())["keys"][API_KEYS["a1"]]
    assert stats["rejected_429"] >= 1 and stats["peak"] <= 2
    requeued = [job_id for job_id in ids if "requeue:queued" in await sources(app_client, job_id)]
    assert requeued


async def test_auth_error_disables_the_account_and_jobs_move_on(
    daemon, emulator: Emulator, app_client: Client
) -> None:  # type: ignore[no-untyped-def]
    services = await daemon(accounts={"a1": 1, "a2": 1})
    await emulator.fault(
        method="POST", path_prefix=SUBMIT, status=401, count=1, error_type="authentication_error"
    )
    job = await finished(
        app_client, await app_client.submit("ltx", "text-to-video", {"prompt": "[ok]", **T2V})
    )
    assert job["status"]["type"] == "completed", job
    capacity = await services.slots.capacity("ltx")
    disabled = [a for a in capacity["available"] if not a["enabled"]]
    assert len(disabled) == 1 and "401" in disabled[0]["disabledReason"]
    assert job["account"] != disabled[0]["email"]


async def test_status_5xx_is_retried_and_the_job_still_completes(
    daemon, emulator: Emulator, app_client: Client
) -> None:  # type: ignore[no-untyped-def]
    await daemon()
    await emulator.fault(method="GET", path_prefix=SUBMIT, status=503, count=3)
    job = await finished(
        app_client, await app_client.submit("ltx", "text-to-video", {"prompt": "[ok] [seconds=0.3]", **T2V})
    )
    assert job["status"]["type"] == "completed", job
    assert (await emulator.control("GET", "faults"))["faults"] == []


async def test_404_after_retention_ends_the_job_as_lost(
    daemon, emulator: Emulator, app_client: Client
) -> None:  # type: ignore[no-untyped-def]
    # Retention 0: once the job ends at the provider its status answers 404 at once.
    await daemon(GENRELAY_POLL_INTERVAL="1")
    await emulator.configure(retention_seconds=0)
    job = await finished(
        app_client, await app_client.submit("ltx", "text-to-video", {"prompt": "[ok] [seconds=0.1]", **T2V})
    )
    assert job["status"]["type"] == "failed"
    assert job["errorType"] == "lost"
    assert "404" in job["status"]["message"] and "retention" in job["status"]["message"]


@pytest.mark.parametrize(
    ("classify", "body", "limit"),
    [
        (ltx.classify, {"error": {"type": "concurrency_limit_error", "message": "busy"}}, Limit.CONCURRENCY),
        (ltx.classify, {"error": {"type": "rate_limit_error", "message": "slow down"}}, Limit.RATE),
        (ltx.classify, {"error": {"message": "no type"}}, Limit.RATE),
        (useapi.classify, {"error": "API query is full, try again later"}, Limit.CONCURRENCY),
        (useapi.classify, {"error": "maxJobs reached"}, Limit.CONCURRENCY),
        (useapi.classify, {"error": "Too many requests"}, Limit.RATE),
        (vydra.classify, {"limits": {"type": "concurrent"}}, Limit.CONCURRENCY),
        (vydra.classify, {"code": "RATE_LIMIT_EXCEEDED", "limits": {"type": "minute"}}, Limit.RATE),
    ],
)
def test_a_429_says_which_limit_was_hit(classify: Any, body: dict[str, Any], limit: Limit) -> None:
    """A concurrency 429 lowers the account's effective slots, a rate 429 cools it down
    (docs/providers.md §1, §2.5, §3.5); other statuses name no limit."""
    with pytest.raises(ProviderError) as caught:
        classify(429, body, {"Retry-After": "2"})
    assert (caught.value.limit, caught.value.retry_after) == (limit, 2.0)
    with pytest.raises(ProviderError) as other:
        classify(503, body, {})
    assert other.value.limit is None
