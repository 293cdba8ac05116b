"""The emulator's vydra.ai contract over real HTTP (docs/providers.md §3): paths, envelopes,
auth codes, credits, limits and their headers, listings, assets, retention and the webhook."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from emulator.config import EmulatorConfig
from tests.conftest import VYDRA_KEYS, Emulator

KEY = VYDRA_KEYS["v1"]
OTHER = VYDRA_KEYS["v2"]
VIDEO = {"workflow": "generate_video", "input": {"prompt": "[ok] a drone shot", "model": "veo3"}}

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        vydra_accounts={KEY: {"plan": "starter", "credits": 1000}, OTHER: {"plan": "free"}},
        job_seconds=0.2,
        vydra_rate_window_seconds=5.0,
    )


async def call(
    emulator: Emulator, method: str, path: str, body: Any = None, key: str | None = KEY
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with emulator.session.request(
        method, f"{emulator.url}/api/v1/{path}", json=body, headers=headers
    ) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def until_status(emulator: Emulator, job_id: str, wanted: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            status, body, _ = await call(emulator, "GET", f"jobs/{job_id}")
            assert status == 200, body
            if body["status"] == wanted:
                return body  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)


async def test_submit_answers_201_with_the_documented_fields(emulator: Emulator) -> None:
    status, body, headers = await call(emulator, "POST", "jobs", VIDEO)
    assert status == 201, body
    assert body["status"] == "running" and body["workflow"] == "generate_video"
    assert body["creditsCharged"] == 175
    assert body["_links"]["status"].endswith(f"/api/v1/jobs/{body['id']}")
    assert headers["X-RateLimit-Limit"] == "30" and headers["X-RateLimit-Remaining"] == "29"
    assert int(headers["X-RateLimit-Reset"]) > 0
    done = await until_status(emulator, body["id"], "completed")
    assert done["progress"] == 100 and done["output"]["url"] == done["output"]["videoUrl"]
    _, org, _ = await call(emulator, "GET", "organization")
    assert org["creditsRemaining"] == 1000 - 175


async def test_auth_codes(emulator: Emulator) -> None:
    """A missing, malformed or unknown key gets 401 with vydra's reason code; ``/health`` needs no key."""
    status, body, headers = await call(emulator, "GET", "jobs", key=None)
    assert (status, body["code"]) == (401, "MISSING_AUTH")
    assert "X-RateLimit-Limit" not in headers
    status, body, _ = await call(emulator, "GET", "jobs", key="not-a-vydra-key")
    assert (status, body["code"]) == (401, "INVALID_FORMAT")
    status, body, _ = await call(emulator, "GET", "jobs", key="vydra_live_user_9_unknown")
    assert (status, body["code"]) == (401, "KEY_NOT_FOUND")
    async with emulator.session.get(f"{emulator.url}/api/v1/health") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_bad_input_unknown_job_and_router_errors_use_the_envelope(emulator: Emulator) -> None:
    status, body, _ = await call(emulator, "POST", "jobs", {"workflow": "generate_video", "input": {}})
    assert (status, body["code"]) == (400, "INVALID_INPUT") and "prompt" in body["error"]
    status, body, _ = await call(emulator, "POST", "jobs", {"workflow": "nope", "input": {"prompt": "x"}})
    assert (status, body["code"]) == (400, "INVALID_INPUT")
    status, body, headers = await call(emulator, "GET", "jobs/123e4567-e89b-12d3-a456-426614174000")
    assert (status, body["code"]) == (404, "JOB_NOT_FOUND") and "X-RateLimit-Remaining" in headers
    status, body, _ = await call(emulator, "GET", "nothing-here")
    assert (status, body["code"]) == (404, "NOT_FOUND")
    await emulator.fault(method="GET", path_prefix="/api/v1/organization", status=500)
    status, body, _ = await call(emulator, "GET", "organization")
    assert (status, body["code"]) == (500, "INTERNAL_ERROR")


async def test_insufficient_credits_is_402_and_failures_are_refunded(emulator: Emulator) -> None:
    await emulator.control("POST", "vydra-accounts", {"key": KEY, "credits": 200})
    status, body, _ = await call(emulator, "POST", "jobs", {**VIDEO, "input": {"prompt": "[fail] no"}})
    assert status == 201
    status, refused, _ = await call(emulator, "POST", "jobs", VIDEO)
    assert status == 402 and refused == {
        "error": "Insufficient credits",
        "code": "INSUFFICIENT_CREDITS",
        "creditsRequired": 175,
        "creditsRemaining": 25,
    }
    failed = await until_status(emulator, body["id"], "failed")
    assert isinstance(failed["error"], str) and failed["error"]
    _, org, _ = await call(emulator, "GET", "organization")
    assert org["creditsRemaining"] == 200


async def test_request_limit_429_body_and_headers(emulator: Emulator) -> None:
    for _ in range(10):
        status, _, _ = await call(emulator, "GET", "jobs", key=OTHER)
        assert status == 200
    status, body, headers = await call(emulator, "GET", "jobs", key=OTHER)
    assert status == 429
    assert body["error"] == "Rate limit exceeded" and body["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["limits"] == {"type": "minute", "limit": 10, "used": 11}
    assert 1 <= body["retryAfter"] <= 5 and headers["Retry-After"] == str(body["retryAfter"])
    assert headers["X-RateLimit-Remaining"] == "0"
    stats = (await emulator.stats())["vydra"]["accounts"][OTHER]  # type: ignore[index]
    assert stats["rejected_429_rate"] == 1 and stats["max_requests_in_window"] == 10


async def test_concurrency_cap_is_429_of_type_concurrent(emulator: Emulator) -> None:
    slow = {"workflow": "generate_image", "input": {"prompt": "[ok] [seconds=5] x"}}
    for _ in range(2):
        assert (await call(emulator, "POST", "jobs", slow, key=OTHER))[0] == 201
    status, body, headers = await call(emulator, "POST", "jobs", slow, key=OTHER)
    assert status == 429 and body["limits"] == {"type": "concurrent", "limit": 2, "used": 2}
    assert body["code"] == "RATE_LIMIT_EXCEEDED" and "Retry-After" in headers
    stats = (await emulator.stats())["vydra"]["accounts"][OTHER]  # type: ignore[index]
    assert (stats["peak"], stats["rejected_429_concurrent"], stats["submitted"]) == (2, 1, 2)


async def test_cancel_frees_the_slot_and_refunds(emulator: Emulator) -> None:
    slow = {"workflow": "generate_image", "input": {"prompt": "[ok] [seconds=5] x"}}
    ids = [(await call(emulator, "POST", "jobs", slow, key=OTHER))[1]["id"] for _ in range(2)]
    status, body, _ = await call(emulator, "DELETE", f"jobs/{ids[0]}", key=OTHER)
    assert status == 200 and body["status"] == "cancelled"
    assert (await call(emulator, "POST", "jobs", slow, key=OTHER))[0] == 201
    status, body, _ = await call(emulator, "DELETE", f"jobs/{ids[0]}", key=OTHER)
    assert status == 400
    status, body, _ = await call(emulator, "DELETE", f"jobs/{ids[1]}")  # another key's job
    assert (status, body["code"]) == (404, "JOB_NOT_FOUND")
    _, org, _ = await call(emulator, "GET", "organization", key=OTHER)
    assert org["creditsRemaining"] == 100_000 - 2 * 5


async def test_listing_filters_by_status_and_pages(emulator: Emulator) -> None:
    running = {"workflow": "generate_image", "input": {"prompt": "[ok] [seconds=5] r"}}
    done = {"workflow": "generate_image", "input": {"prompt": "[ok] [seconds=0] d"}}
    slow_id = (await call(emulator, "POST", "jobs", running))[1]["id"]
    quick = [(await call(emulator, "POST", "jobs", done))[1]["id"] for _ in range(3)]
    _, slow, _ = await call(emulator, "GET", f"jobs/{slow_id}")
    assert slow["status"] in ("pending", "running")
    _, body, _ = await call(emulator, "GET", f"jobs?status={slow['status']}")
    assert [e["id"] for e in body["data"]] == [slow_id]
    entry = body["data"][0]
    assert entry["workflowSlug"] == "generate_image" and "webhookUrl" not in entry
    assert set(entry) >= {"progress", "statusMessage", "creditsCharged", "createdAt", "completedAt"}
    _, page1, _ = await call(emulator, "GET", "jobs?status=completed&limit=2")
    _, page2, _ = await call(emulator, "GET", "jobs?status=completed&limit=2&offset=2")
    assert [e["id"] for e in page1["data"] + page2["data"]] == quick[::-1]
    assert (await call(emulator, "GET", "jobs?status=bogus"))[0] == 400
    assert (await call(emulator, "GET", "jobs?limit=101"))[0] == 400


async def test_assets_are_paged_filtered_and_outlive_the_job(emulator: Emulator) -> None:
    await emulator.configure(retention_seconds=0.3)
    image = {"workflow": "generate_image", "input": {"prompt": "[ok] [seconds=0] i"}}
    video = {"workflow": "generate_video", "input": {"prompt": "[ok] [seconds=0] v", "duration": 8}}
    ids = [(await call(emulator, "POST", "jobs", body))[1]["id"] for body in (image, video, image)]
    _, body, _ = await call(emulator, "GET", "assets?limit=2")
    assert body["pagination"] == {"limit": 2, "offset": 0, "count": 2}
    _, rest, _ = await call(emulator, "GET", "assets?limit=2&offset=2")
    assets = body["data"] + rest["data"]
    assert [a["jobId"] for a in assets] == ids[::-1]
    assert all(a["id"].startswith("ast_") for a in assets)
    video_asset = assets[1]
    assert video_asset["type"] == "video" and video_asset["thumbnailUrl"]
    assert video_asset["metadata"] == {"prompt": "[ok] [seconds=0] v", "duration": 8, "model": "veo3"}
    _, only, _ = await call(emulator, "GET", "assets?workflow=generate_video")
    assert [a["jobId"] for a in only["data"]] == [ids[1]]
    async with asyncio.timeout(10):  # the emulator's retention runs on its real clock
        while (answer := await call(emulator, "GET", f"jobs/{ids[0]}"))[0] == 200:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert (answer[0], answer[1]["code"]) == (404, "JOB_NOT_FOUND")
    status, kept, _ = await call(emulator, "GET", f"assets/{video_asset['id']}")
    assert status == 200 and kept == video_asset
    assert (await call(emulator, "GET", "assets/ast_000000000000"))[0] == 404


async def test_rate_limits_and_the_models_status_shape(emulator: Emulator) -> None:
    """``account/rate-limits`` reports the plan's limits and usage; with the models-route knob a job
    reads as ``{jobId, status, error: {message, detail}}``."""
    _, limits, _ = await call(emulator, "GET", "account/rate-limits", key=OTHER)
    assert limits["plan"] == "free"
    assert limits["limits"] == {"rpm": 10, "rph": 100, "rpd": 500, "concurrent": 2}
    assert limits["usage"]["minute"] == {"used": 1, "limit": 10}
    await emulator.configure(vydra_status_shape="models")
    _, job, _ = await call(emulator, "POST", "jobs", {**VIDEO, "input": {"prompt": "[fail] x"}})
    async with asyncio.timeout(10):
        while (body := (await call(emulator, "GET", f"jobs/{job['id']}"))[1])["status"] == "processing":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert body["jobId"] == job["id"] and body["status"] == "failed"
    assert set(body["error"]) == {"message", "detail"}


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    got: list[tuple[str, dict[str, Any]]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((request.query_string, await request.json()))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/hook")), got
    finally:
        await server.close()


async def test_one_webhook_at_the_terminal_state_and_listing_echoes_its_url(
    emulator: Emulator, receiver: tuple[str, list[tuple[str, dict[str, Any]]]]
) -> None:
    url, got = receiver
    await emulator.configure(vydra_list_webhook_url=True)
    body = {**VIDEO, "webhookUrl": f"{url}?ref=vydra-{'a' * 32}"}
    _, job, _ = await call(emulator, "POST", "jobs", body)
    _, listed, _ = await call(emulator, "GET", "jobs")
    assert listed["data"][0]["webhookUrl"] == body["webhookUrl"]
    async with asyncio.timeout(10):
        while not got:
            await emulator.control("POST", "webhooks/flush")
            await asyncio.sleep(0.05)
    assert got[0][0] == f"ref=vydra-{'a' * 32}"
    assert got[0][1]["id"] == job["id"] and got[0][1]["status"] == "completed"
    stats = (await emulator.stats())["vydra"]
    assert stats["submissions_by_ref"] == {f"vydra-{'a' * 32}": 1}  # type: ignore[index]
    assert stats["callbacks"]["delivered"] == 1  # type: ignore[index]
    await emulator.control("POST", "reset")
    assert (await emulator.stats())["vydra"]["submissions_by_ref"] == {}  # type: ignore[index]


async def test_control_refuses_a_malformed_vydra_account(emulator: Emulator) -> None:
    async with emulator.session.post(
        f"{emulator.url}/_emulator/vydra-accounts", json={"key": "plain", "plan": "free"}
    ) as resp:
        assert resp.status == 400
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{emulator.url}/_emulator/vydra-accounts", json={"key": KEY, "plan": "gold"}
        ) as resp:
            assert resp.status == 400


async def test_keys_of_one_organisation_share_its_windows_and_the_hour_limit_refuses(
    emulator: Emulator,
) -> None:
    """Limits are per organisation: two keys of one organisation count in the same windows; the
    hour window (60 minutes of the scaled minute) refuses with ``limits.type = "hour"``."""
    first, second = "vydra_live_user_2001_orgkeyone", "vydra_live_user_2002_orgkeytwo"
    for key in (first, second):
        await emulator.control(
            "POST", "vydra-accounts", {"key": key, "rpm": 50, "rph": 6, "organization": "org_x"}
        )
    _, org, _ = await call(emulator, "GET", "organization", key=second)
    assert org["id"] == "org_x"
    _, limits, _ = await call(emulator, "GET", "account/rate-limits", key=first)
    assert limits["limits"]["rph"] == 6 and limits["usage"]["hour"] == {"used": 2, "limit": 6}
    for n in range(4):
        status, _, headers = await call(emulator, "GET", "jobs", key=first if n % 2 else second)
        assert status == 200
    assert headers["X-RateLimit-Remaining"] == "44"  # the organisation's minute: 6 used of 50
    status, body, headers = await call(emulator, "GET", "jobs", key=first)
    assert status == 429 and body["limits"] == {"type": "hour", "limit": 6, "used": 6}
    assert int(headers["Retry-After"]) >= 1
    stats = (await emulator.stats())["vydra"]["accounts"]  # type: ignore[index]
    assert stats[first]["rejected_429_rate_hour"] == 1 and stats[first]["organization"] == "org_x"
    assert stats[first]["requests"] + stats[second]["requests"] == 6
    organizations = (await emulator.stats())["vydra"]["organizations"]  # type: ignore[index]
    assert organizations["org_x"] == {"max_requests_in_minute": 6, "max_requests_in_hour": 6}


async def test_the_requests_each_providers_api_received_are_counted(emulator: Emulator) -> None:
    """``provider_requests`` counts what reached a provider's API, answered or refused; the
    emulator's own routes and the result files are not counted."""
    for _ in range(3):
        await call(emulator, "GET", "jobs")
    await call(emulator, "GET", "jobs", key="vydra_live_user_9_unknown")  # refused: still a request
    async with emulator.session.get(f"{emulator.url}/v2/text-to-video/nope") as resp:
        assert resp.status == 401
    async with emulator.session.get(f"{emulator.url}/files/x.mp4") as resp:
        assert resp.status == 200
    stats = await emulator.stats()
    assert stats["provider_requests"] == {"vydra": 4, "ltx": 1}
