"""The useapi.net LTX Studio emulator (docs/providers.md §1), over real HTTP on loopback.

Status is derived from the emulator clock, so every lifecycle test drives a fake clock passed to
``create_app`` and never sleeps. Callbacks go to a real aiohttp receiver on another loopback port;
tests await the receiver's event, or ``POST /_emulator/webhooks/flush`` (which sends everything due
and waits for it) when they must show that something was *not* sent.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from emulator.app import create_app
from emulator.cli import add_arguments, config_from_args
from emulator.config import EmulatorConfig
from emulator.webhooks import is_loopback_url

TOKEN = "user:12345-useapi-one"
MULTI = "user:67890-useapi-two"
EMAIL = "solo@example.com"
A, B = "a@example.com", "b@example.com"
ACCOUNTS = {TOKEN: {EMAIL: 2}, MULTI: {A: 2, B: 3}}
WAIT_S = 5.0
JOB_ID = re.compile(r"^email:(?P<email>[^ ]+)-job:(?P<uuid>[0-9a-f-]{36})-type:(?P<type>video|image)$")

# A minimal valid body per create endpoint (docs/providers.md §1.3) and the kind of job it makes.
BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "videos/ltx-create": ({"prompt": "waves", "model": "ltxv-turbo", "duration": "5"}, "video"),
    "videos/veo-create": ({"model": "veo2", "startAssetId": "asset:1", "duration": 6}, "video"),
    "images/create": ({"prompt": "a cat", "model": "flux"}, "image"),
    "images/flux-create": ({"prompt": "a cat"}, "image"),
    "images/edit": ({"prompt": "a hat", "referenceAssetId": "asset:2"}, "image"),
    "images/flux-edit": ({"prompt": "a hat", "referenceAssetId": "asset:2", "model": "nano-banana"}, "image"),
}
MIME = {"video": "video/mp4", "image": "image/png"}

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Receiver:
    """A webhook receiver on loopback: records each callback and sets ``arrived``; ``hold`` (when
    cleared) keeps its answer back so a test can see what the sender does meanwhile."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], str]] = []
        self.arrived = asyncio.Event()
        self.hold = asyncio.Event()
        self.hold.set()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((await request.json(), request.headers.get("Content-Type", "")))
        self.arrived.set()
        await self.hold.wait()
        return web.Response(status=204)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for body, _ in self.calls]

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(WAIT_S):
            while len(self.calls) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.bodies


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient) -> MakeClient:
    async def make(clock: Callable[[], float] | None = None, **config: Any) -> Client:
        config.setdefault("useapi_accounts", ACCOUNTS)
        emulator_config = EmulatorConfig(**config)
        app = create_app(emulator_config) if clock is None else create_app(emulator_config, clock=clock)
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def receiver(aiohttp_server: AiohttpServer) -> Receiver:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    server: TestServer = await aiohttp_server(app, host="127.0.0.1")
    found.url = str(server.make_url("/hook"))
    return found


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(
    client: Client,
    endpoint: str = "videos/ltx-create",
    body: dict[str, Any] | None = None,
    token: str = TOKEN,
) -> aiohttp.ClientResponse:
    body = BODIES["videos/ltx-create"][0] if body is None else body
    return await client.post(f"/v1/ltxstudio/{endpoint}", json=body, headers=auth(token))


async def create_id(
    client: Client,
    endpoint: str = "videos/ltx-create",
    body: dict[str, Any] | None = None,
    token: str = TOKEN,
) -> str:
    resp = await create(client, endpoint, body, token)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["generationId"].startswith("gen_")
    job_id: str = answer["jobId"]
    return job_id


async def status(client: Client, job_id: str, token: str = TOKEN) -> dict[str, Any]:
    resp = await client.get(f"/v1/ltxstudio/assets/{quote(job_id, safe='')}", headers=auth(token))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def expect_error(resp: aiohttp.ClientResponse, code: int, contains: str = "") -> str:
    """The answer is useapi's ``{"error": "...", "code": N}`` envelope; returns the message."""
    assert resp.status == code, await resp.text()
    body = await resp.json()
    assert set(body) == {"error", "code"} and body["code"] == code
    assert isinstance(body["error"], str) and contains in body["error"]
    message: str = body["error"]
    return message


async def control(client: Client, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = await client.post(f"/_emulator/{route}", json=body or {})
    assert resp.status == 200, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


async def stats(client: Client) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/_emulator/stats")).json()
    return body


def hooked(receiver: Receiver, ref: str, prompt: str = "waves") -> dict[str, Any]:
    return {"prompt": prompt, "replyUrl": receiver.url, "replyRef": ref}


# --- create, status, lifecycle ---------------------------------------------------------------


@pytest.mark.parametrize("endpoint", sorted(BODIES))
async def test_every_create_endpoint_walks_active_to_completed(
    make_client: MakeClient, endpoint: str
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10)
    body, kind = BODIES[endpoint]
    job_id = await create_id(client, endpoint, body)
    match = JOB_ID.match(job_id)
    assert match and match["email"] == EMAIL and match["type"] == kind

    active = await status(client, job_id)
    assert active == {"status": {"type": "active", "progress": 0}, "jobId": job_id, "code": 200}
    clock.now += 10
    done = await status(client, job_id)

    assert done["status"]["type"] == "completed" and done["status"]["progress"] == 100
    artifact = done["status"]["artifact"]
    assert artifact["assetUrl"].startswith("https://")
    assert artifact["asset"]["mimeType"] == MIME[kind]
    assert artifact["asset"]["fileId"] == f"asset:{match['uuid']}-type:{MIME[kind]}"
    assert int(artifact["expirationDateString"]) > 0


async def test_upscale_needs_a_completed_image_job(make_client: MakeClient) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10, useapi_accounts={TOKEN: {EMAIL: 5}})
    image = await create_id(client, "images/create", {"prompt": "a cat"})
    video = await create_id(client)
    await expect_error(await create(client, "images/upscale", {"jobId": image}), 400, "completed image job")
    clock.now += 10
    await expect_error(await create(client, "images/upscale", {"jobId": video}), 400, "completed image job")
    unknown = image.replace("email:", "email:x")
    await expect_error(await create(client, "images/upscale", {"jobId": unknown}), 404, "Job not found")

    upscaled = await create_id(client, "images/upscale", {"jobId": image})

    assert JOB_ID.match(upscaled) and upscaled.endswith("-type:image") and upscaled != image
    clock.now += 10
    assert (await status(client, upscaled))["status"]["artifact"]["asset"]["mimeType"] == "image/png"


async def test_progress_rises_with_the_clock(make_client: MakeClient) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=20)
    job_id = await create_id(client)
    seen = []
    for _ in range(4):
        seen.append((await status(client, job_id))["status"]["progress"])
        clock.now += 5
    assert seen == [0, 25, 50, 75]
    assert (await status(client, job_id))["status"]["type"] == "completed"


async def test_fail_marker_ends_failed_with_a_message(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    job = await status(client, await create_id(client, body={"prompt": "waves [fail]"}))
    assert job["status"]["type"] == "failed"
    assert job["status"]["message"]
    assert "artifact" not in job["status"]


async def test_jobid_is_found_url_encoded_or_raw(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    job_id = await create_id(client)
    raw = await client.get(f"/v1/ltxstudio/assets/{job_id}", headers=auth())
    assert (await raw.json())["jobId"] == job_id
    assert (await status(client, job_id))["jobId"] == job_id


async def test_poll_for_result_answers_the_status_model_when_the_job_ends_in_time(
    make_client: MakeClient,
) -> None:
    client = await make_client(job_seconds=3600)
    resp = await create(client, body={"prompt": "quick [seconds=0]", "pollForResult": 1})
    assert (await resp.json())["status"]["type"] == "completed"
    resp = await create(client, body={"prompt": "slow", "pollForResult": 20})
    assert set(await resp.json()) == {"jobId", "generationId"}


async def test_multipart_form_body_is_accepted(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    form = aiohttp.FormData({"prompt": "waves", "duration": "7", "seed": "42", "audioSFX": "true"})
    resp = await client.post("/v1/ltxstudio/videos/ltx-create", data=form, headers=auth())
    assert resp.status == 200, await resp.text()
    form = aiohttp.FormData({"prompt": "waves", "audioSFX": "maybe"})
    resp = await client.post("/v1/ltxstudio/videos/ltx-create", data=form, headers=auth())
    await expect_error(resp, 400, "audioSFX")


# --- validation and errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "contains"),
    [
        ("videos/ltx-create", {}, 400, "prompt"),
        ("videos/ltx-create", {"prompt": ""}, 400, "prompt"),
        ("videos/ltx-create", {"prompt": 5}, 400, "prompt"),
        ("videos/ltx-create", {"prompt": "x" * 2001}, 413, "prompt"),
        ("videos/ltx-create", {"prompt": "x", "model": "ltxv-2"}, 400, "model"),
        ("videos/ltx-create", {"prompt": "x", "duration": "4"}, 400, "duration"),
        ("videos/ltx-create", {"prompt": "x", "aspectRatio": "4:3"}, 400, "aspectRatio"),
        ("videos/ltx-create", {"prompt": "x", "intensity": "max"}, 400, "intensity"),
        ("videos/ltx-create", {"prompt": "x", "pollForResult": 21}, 400, "pollForResult"),
        ("videos/ltx-create", {"prompt": "x", "maxJobs": 0}, 400, "maxJobs"),
        ("videos/ltx-create", {"prompt": "x", "replyRef": "r" * 1025}, 413, "replyRef"),
        ("videos/ltx-create", {"prompt": "x", "replyUrl": "http://127.0.0.1/" + "u" * 1010}, 413, "replyUrl"),
        ("videos/ltx-create", {"prompt": "x", "replyUrl": "not a url"}, 400, "replyUrl"),
        ("videos/veo-create", {"model": "veo2", "prompt": "x"}, 400, "startAssetId"),
        ("videos/veo-create", {"model": "veo3", "prompt": "x", "duration": 5}, 400, "duration"),
        ("videos/veo-create", {"model": "veo3-fast"}, 400, "prompt"),
        (
            "videos/veo-create",
            {"model": "veo2", "startAssetId": "a", "resolution": "1080p"},
            400,
            "resolution",
        ),
        ("videos/veo-create", {"model": "veo2", "startAssetId": "a", "duration": 9}, 400, "duration"),
        ("images/create", {"prompt": "x", "model": "dalle"}, 400, "model"),
        ("images/create", {"prompt": "x", "reference_strength": 101}, 400, "reference_strength"),
        ("images/edit", {"prompt": "x"}, 400, "referenceAssetId"),
        ("images/upscale", {}, 400, "jobId"),
    ],
)
async def test_invalid_create_is_refused_and_creates_nothing(
    make_client: MakeClient, endpoint: str, body: dict[str, Any], code: int, contains: str
) -> None:
    client = await make_client()
    await expect_error(await create(client, endpoint, body), code, contains)
    assert (await stats(client))["useapi_accounts"][EMAIL]["submitted"] == 0


async def test_body_that_is_not_a_json_object_is_400(make_client: MakeClient) -> None:
    client = await make_client()
    for raw in (b"{nope", b"[1]"):
        resp = await client.post(
            "/v1/ltxstudio/videos/ltx-create", data=raw, headers=auth() | {"Content-Type": "application/json"}
        )
        await expect_error(resp, 400)


async def test_email_is_required_when_the_token_has_two_accounts(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    await expect_error(await create(client, token=MULTI), 400, "email")
    await expect_error(await create(client, body={"prompt": "x", "email": EMAIL}, token=MULTI), 404, EMAIL)

    job_id = await create_id(client, body={"prompt": "x", "email": B}, token=MULTI)

    assert JOB_ID.match(job_id) and job_id.startswith(f"email:{B}-job:")
    # With one account the email may be left out, or given.
    assert (await create_id(client, body={"prompt": "x", "email": EMAIL})).startswith(f"email:{EMAIL}-")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["missing", "unknown", "not-bearer"],
)
async def test_bad_token_is_401_on_every_route(make_client: MakeClient, headers: dict[str, str]) -> None:
    client = await make_client(job_seconds=0)
    job_id = quote(await create_id(client), safe="")
    answers = [
        await client.post("/v1/ltxstudio/videos/ltx-create", json={"prompt": "x"}, headers=headers),
        await client.get(f"/v1/ltxstudio/assets/{job_id}", headers=headers),
        await client.get("/v1/ltxstudio/assets/", headers=headers),
        await client.get("/v1/ltxstudio/scheduler", headers=headers),
        await client.get("/v1/ltxstudio/scheduler/available", headers=headers),
        await client.delete(f"/v1/ltxstudio/scheduler/{job_id}", headers=headers),
    ]
    for resp in answers:
        assert await expect_error(resp, 401) == "Unauthorized"


async def test_injected_402_uses_the_useapi_envelope(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    await control(client, "faults", {"path_prefix": "/v1/ltxstudio/", "status": 402, "count": 1})
    assert await expect_error(await create(client), 402) == "Subscription required"
    assert (await create(client)).status == 200


async def test_router_errors_use_the_useapi_envelope(make_client: MakeClient) -> None:
    client = await make_client()
    await expect_error(await client.get("/v1/ltxstudio/nothing-here", headers=auth()), 404)
    await expect_error(await client.get("/v1/ltxstudio/videos/ltx-create", headers=auth()), 405)


# --- capacity, scheduler, cancel -------------------------------------------------------------


async def test_429_at_max_jobs_and_scheduler_available_shows_the_slots(make_client: MakeClient) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=100)
    first = await create_id(
        client, body={"prompt": "one", "replyRef": "ref-1", "replyUrl": "http://127.0.0.1:9/h"}
    )
    await create_id(client, body={"prompt": "two"})

    await expect_error(await create(client, body={"prompt": "three"}), 429, "API query is full")

    clock.now += 65
    resp = await client.get("/v1/ltxstudio/scheduler/available", headers=auth())
    body = await resp.json()
    assert body["available"] == [{"email": EMAIL, "maxJobs": 2, "executing": 2, "available": 0}]
    assert len(body["executing"]) == 2
    entry = body["executing"][0]
    assert entry["jobId"] == first and entry["email"] == EMAIL
    assert entry["elapsed"] == "01:05"
    assert entry["started"].endswith("Z")
    assert entry["replyRef"] == "ref-1" and entry["replyUrl"] == "http://127.0.0.1:9/h"
    assert "replyRef" not in body["executing"][1]
    assert (await (await client.get("/v1/ltxstudio/scheduler", headers=auth())).json()) == body["executing"]
    account = (await stats(client))["useapi_accounts"][EMAIL]
    assert account == {
        "max_jobs": 2,
        "executing": 2,
        "peak": 2,
        "submitted": 2,
        "rejected_429": 1,
        "polls": 0,
    }

    clock.now += 35  # both jobs end: the slots are free again
    await create_id(client, body={"prompt": "four"})
    available = await (await client.get("/v1/ltxstudio/scheduler/available", headers=auth())).json()
    assert available["available"][0]["available"] == 1


async def test_concurrent_submits_never_exceed_max_jobs(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=3600)
    body = {"prompt": "same", "email": B}
    answers = await asyncio.gather(*(create(client, body=body, token=MULTI) for _ in range(12)))
    assert sorted(resp.status for resp in answers) == [200] * 3 + [429] * 9
    account = (await stats(client))["useapi_accounts"][B]
    assert account["peak"] == 3 and account["rejected_429"] == 9
    available = await (await client.get("/v1/ltxstudio/scheduler/available", headers=auth(MULTI))).json()
    assert available["available"] == [
        {"email": A, "maxJobs": 2, "executing": 0, "available": 2},
        {"email": B, "maxJobs": 3, "executing": 3, "available": 0},
    ]


async def test_max_jobs_in_the_request_overrides_the_account_cap(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=3600)
    for _ in range(3):
        await create_id(client, body={"prompt": "x", "maxJobs": 3})
    await expect_error(await create(client, body={"prompt": "x", "maxJobs": 3}), 429)
    await expect_error(await create(client, body={"prompt": "x"}), 429)


async def test_delete_frees_the_slot_then_404(make_client: MakeClient, receiver: Receiver) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10, useapi_accounts={TOKEN: {EMAIL: 1}})
    job_id = await create_id(client, body=hooked(receiver, "ref-del"))
    await expect_error(await create(client), 429)
    path = f"/v1/ltxstudio/scheduler/{quote(job_id, safe='')}"

    resp = await client.delete(path, headers=auth())

    assert resp.status == 204 and await resp.read() == b""
    await expect_error(
        await client.delete(path, headers=auth()), 404, f"Unable to locate running jobId {job_id}"
    )
    resp = await client.get(f"/v1/ltxstudio/assets/{quote(job_id, safe='')}", headers=auth())
    await expect_error(resp, 404, "Job not found or has expired")
    assert await (await client.get("/v1/ltxstudio/scheduler", headers=auth())).json() == []
    await create_id(client)  # the slot is free
    clock.now += 10
    assert await control(client, "webhooks/flush") == {"due": 0, "pending": 0}
    assert receiver.calls == []
    assert (await stats(client))["callbacks"]["cancelled"] == 1


async def test_delete_of_a_finished_or_foreign_job_is_404(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    finished = quote(await create_id(client), safe="")
    await expect_error(await client.delete(f"/v1/ltxstudio/scheduler/{finished}", headers=auth()), 404)
    await expect_error(await client.delete(f"/v1/ltxstudio/scheduler/{finished}", headers=auth(MULTI)), 404)


async def test_job_is_404_after_retention_and_for_another_token(make_client: MakeClient) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10, retention_seconds=100)
    job_id = await create_id(client)
    encoded = quote(job_id, safe="")
    await expect_error(await client.get(f"/v1/ltxstudio/assets/{encoded}", headers=auth(MULTI)), 404)
    clock.now += 109
    assert (await status(client, job_id))["status"]["type"] == "completed"
    clock.now += 1
    resp = await client.get(f"/v1/ltxstudio/assets/{encoded}", headers=auth())
    assert await expect_error(resp, 404) == "Job not found or has expired"


# --- assets listing --------------------------------------------------------------------------


async def test_assets_listing_pages_and_filters(make_client: MakeClient) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10, useapi_accounts={TOKEN: {EMAIL: 10}})
    videos = [await create_id(client, body={"prompt": f"v{n}"}) for n in range(3)]
    images = [await create_id(client, "images/create", {"prompt": f"i{n}"}) for n in range(2)]
    await create_id(client, body={"prompt": "failed [fail]"})
    clock.now += 10
    await create_id(client, body={"prompt": "still running"})

    async def listing(**query: str) -> dict[str, Any]:
        resp = await client.get("/v1/ltxstudio/assets/", params=query, headers=auth())
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    page2 = await listing(page="2", limit="2")
    assert page2["meta"] == {
        "totalItems": 5,
        "itemCount": 2,
        "itemsPerPage": 2,
        "totalPages": 3,
        "currentPage": 2,
    }
    assert [item["jobId"] for item in page2["items"]] == [videos[2], videos[1]]  # newest first
    item = (await listing(limit="2"))["items"][0]
    assert item["jobId"] == images[1]
    assert item["id"] == images[1].split("-job:")[1].removesuffix("-type:image")
    assert item["signedAsset"]["asset"]["mimeType"] == "image/png"
    assert item["relatedAssets"]["thumbnails"]["large"]["asset"]["mimeType"] == "image/webp"
    assert (await listing(page="3", limit="2"))["meta"]["itemCount"] == 1
    only_images = await listing(filter="images")
    assert [item["jobId"] for item in only_images["items"]] == images[::-1]
    assert only_images["meta"]["itemsPerPage"] == 20
    assert (await listing(filter="videos", email=EMAIL))["meta"]["totalItems"] == 3
    assert (await listing(filter="audio"))["items"] == []
    bad = await client.get("/v1/ltxstudio/assets/", params={"filter": "gifs"}, headers=auth())
    await expect_error(bad, 400, "filter")
    await expect_error(await client.get("/v1/ltxstudio/assets/?page=0", headers=auth()), 400, "page")


async def test_assets_listing_needs_email_with_two_accounts(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    await create_id(client, body={"prompt": "x", "email": A}, token=MULTI)
    await expect_error(await client.get("/v1/ltxstudio/assets/", headers=auth(MULTI)), 400, "email")
    resp = await client.get("/v1/ltxstudio/assets/", params={"email": B}, headers=auth(MULTI))
    assert (await resp.json())["meta"]["totalItems"] == 0
    resp = await client.get("/v1/ltxstudio/assets/", params={"email": A}, headers=auth(MULTI))
    assert (await resp.json())["meta"]["totalItems"] == 1


# --- webhooks --------------------------------------------------------------------------------


async def test_callback_posts_the_status_model_with_reply_ref(
    make_client: MakeClient, receiver: Receiver
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10)
    job_id = await create_id(client, body=hooked(receiver, "job-7f3c"))
    clock.now += 10  # the background sender notices the clock on its own

    [body] = await receiver.wait_for(1)

    assert receiver.calls[0][1] == "application/json"
    assert body["jobId"] == job_id and body["replyRef"] == "job-7f3c" and body["replyUrl"] == receiver.url
    assert body["code"] == 200
    assert body["status"]["type"] == "completed" and body["status"]["artifact"]["assetUrl"]
    seen = await stats(client)
    assert seen["submissions_by_ref"] == {"job-7f3c": 1}
    assert seen["callbacks"]["sent_by_ref"] == {"job-7f3c": 1}
    assert {k: seen["callbacks"][k] for k in ("sent", "delivered", "dropped", "duplicated", "pending")} == {
        "sent": 1,
        "delivered": 1,
        "dropped": 0,
        "duplicated": 0,
        "pending": 0,
    }


async def test_failed_job_calls_back_once_with_failed(make_client: MakeClient, receiver: Receiver) -> None:
    client = await make_client(job_seconds=0)
    await create_id(client, body=hooked(receiver, "ref-f", "waves [fail]"))
    [body] = await receiver.wait_for(1)
    assert body["status"]["type"] == "failed" and body["status"]["message"]


async def test_without_progress_knob_only_the_terminal_callback_is_sent(
    make_client: MakeClient, receiver: Receiver
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10)
    await create_id(client, body=hooked(receiver, "ref-p"))
    clock.now += 9
    assert await control(client, "webhooks/flush") == {"due": 0, "pending": 1}
    clock.now += 1
    assert await control(client, "webhooks/flush") in ({"due": 1, "pending": 0}, {"due": 0, "pending": 0})
    assert [body["status"]["type"] for body in await receiver.wait_for(1)] == ["completed"]


async def test_progress_knob_sends_progress_then_terminal(
    make_client: MakeClient, receiver: Receiver
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10, webhook_progress=True)
    await create_id(client, body=hooked(receiver, "ref-prog"))
    await receiver.wait_for(1)
    clock.now += 5
    await receiver.wait_for(2)
    clock.now += 5

    bodies = await receiver.wait_for(3)

    assert [(b["status"]["type"], b["status"]["progress"]) for b in bodies] == [
        ("active", 0),
        ("active", 50),
        ("completed", 100),
    ]
    assert all(body["replyRef"] == "ref-prog" for body in bodies)


async def test_drop_knob_sends_nothing(make_client: MakeClient, receiver: Receiver) -> None:
    client = await make_client(job_seconds=0, webhook_drop_rate=1.0)
    await create_id(client, body=hooked(receiver, "ref-drop"))
    await control(client, "webhooks/flush")  # whatever was due has now been handled
    callbacks = (await stats(client))["callbacks"]
    assert callbacks["dropped"] == 1 and callbacks["sent"] == 0 and callbacks["pending"] == 0
    assert receiver.calls == []


async def test_duplicate_knob_sends_each_callback_twice(make_client: MakeClient, receiver: Receiver) -> None:
    client = await make_client(job_seconds=0, webhook_duplicate_rate=1.0)
    await create_id(client, body=hooked(receiver, "ref-dup"))
    first, second = await receiver.wait_for(2)
    assert first == second and first["status"]["type"] == "completed"
    callbacks = (await stats(client))["callbacks"]
    assert callbacks["duplicated"] == 1 and callbacks["sent"] == 2
    assert callbacks["sent_by_ref"] == {"ref-dup": 2}


async def test_reorder_knob_sends_a_stale_progress_after_the_terminal(
    make_client: MakeClient, receiver: Receiver
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10, webhook_reorder=True)
    await create_id(client, body=hooked(receiver, "ref-ro"))
    clock.now += 10
    terminal, stale = await receiver.wait_for(2)
    assert terminal["status"]["type"] == "completed"
    assert stale["status"] == {"type": "active", "progress": 50}
    assert stale["replyRef"] == "ref-ro"


async def test_before_submit_knob_calls_back_before_the_create_answer(
    make_client: MakeClient, receiver: Receiver
) -> None:
    # The clock never moves, so without the knob no callback could exist at all.
    client = await make_client(clock=FakeClock(), job_seconds=10, webhook_before_submit_response=True)
    receiver.hold.clear()
    answer = asyncio.create_task(create(client, body=hooked(receiver, "ref-early")))

    [early] = await receiver.wait_for(1)

    assert not answer.done()  # the emulator waits for the receiver before it answers
    receiver.hold.set()
    resp = await asyncio.wait_for(answer, WAIT_S)
    assert early["jobId"] == (await resp.json())["jobId"]
    assert early["status"] == {"type": "active", "progress": 0} and early["replyRef"] == "ref-early"


async def test_before_submit_knob_with_an_instant_job_sends_the_terminal_first(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = await make_client(job_seconds=0, webhook_before_submit_response=True)
    await create_id(client, body=hooked(receiver, "ref-instant"))
    # Already there when the create answer arrived: no waiting needed.
    assert [body["status"]["type"] for body in receiver.bodies] == ["completed"]
    await control(client, "webhooks/flush")
    assert len(receiver.calls) == 1


async def test_delay_knob_holds_callbacks_on_the_emulator_clock(
    make_client: MakeClient, receiver: Receiver
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10, webhook_delay_seconds=30)
    await create_id(client, body=hooked(receiver, "ref-late"))
    clock.now += 39
    assert await control(client, "webhooks/flush") == {"due": 0, "pending": 1}
    assert receiver.calls == []
    clock.now += 1
    [body] = await receiver.wait_for(1)
    assert body["status"]["type"] == "completed"


async def test_completed_without_artifact_knob(make_client: MakeClient, receiver: Receiver) -> None:
    """With the knob set, a completed job reads (and calls back) as completed without its artifact for
    the given number of reads, as useapi warns can happen (docs/providers.md §1.4)."""
    client = await make_client(job_seconds=0, completed_without_artifact_reads=2)
    job_id = await create_id(client, body=hooked(receiver, "ref-art"))
    [callback] = await receiver.wait_for(1)
    assert callback["status"] == {"type": "completed", "progress": 100}

    reads = [(await status(client, job_id))["status"] for _ in range(3)]

    assert [read["type"] for read in reads] == ["completed"] * 3
    assert ["artifact" in read for read in reads] == [False, False, True]


async def test_callbacks_never_leave_loopback(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    await create_id(client, body={"prompt": "x", "replyUrl": "http://192.0.2.1/hook", "replyRef": "r"})
    await control(client, "webhooks/flush")
    callbacks = (await stats(client))["callbacks"]
    assert callbacks["blocked"] == 1 and callbacks["sent"] == 0


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8080/h", True),
        ("https://localhost/h", True),
        ("http://[::1]:9/h", True),
        ("http://127.8.9.10/h", True),
        ("http://10.0.0.1/h", False),
        ("https://example.com/h", False),
        ("http://localhost.example.com/h", False),
        ("ftp://127.0.0.1/h", False),
        ("not a url", False),
    ],
)
def test_loopback_guard(url: str, local: bool) -> None:
    """Only loopback URLs count as local, so callbacks never leave the machine by default."""
    assert is_loopback_url(url) is local


async def test_unreachable_receiver_counts_as_failed(make_client: MakeClient, unused_tcp_port: int) -> None:
    client = await make_client(job_seconds=0)
    body = {"prompt": "x", "replyUrl": f"http://127.0.0.1:{unused_tcp_port}/h", "replyRef": "r-gone"}
    await create_id(client, body=body)
    await control(client, "webhooks/flush")
    callbacks = (await stats(client))["callbacks"]
    assert (
        callbacks["failed"] == 1 and callbacks["delivered"] == 0 and callbacks["sent_by_ref"] == {"r-gone": 1}
    )


# --- control API and command line ------------------------------------------------------------


async def test_useapi_account_control_route(make_client: MakeClient) -> None:
    """An account added through the control route is accepted at once with its maxJobs, and a second
    call changes that cap live."""
    client = await make_client(job_seconds=3600)
    await expect_error(await create(client, token="user:new"), 401)
    answer = await control(client, "useapi-accounts", {"token": "user:new", "email": "n@x", "maxJobs": 1})
    assert answer == {"token": "user:new", "email": "n@x", "maxJobs": 1}
    await create_id(client, token="user:new")
    await expect_error(await create(client, token="user:new"), 429)
    await control(client, "useapi-accounts", {"token": "user:new", "email": "n@x", "maxJobs": 2})
    await create_id(client, token="user:new")
    assert (await stats(client))["useapi_accounts"]["n@x"]["peak"] == 2


@pytest.mark.parametrize(
    "body",
    [
        {"token": "", "email": "e", "maxJobs": 1},
        {"token": "t", "email": "", "maxJobs": 1},
        {"token": "t", "email": "e", "maxJobs": -1},
        {"token": "t", "email": "e", "maxJobs": True},
        {"token": "t", "email": EMAIL, "maxJobs": 1},  # already an account of another token
    ],
)
async def test_useapi_account_control_route_rejects_bad_input(
    make_client: MakeClient, body: dict[str, Any]
) -> None:
    client = await make_client()
    resp = await client.post("/_emulator/useapi-accounts", json=body)
    assert resp.status == 400


async def test_webhook_knobs_are_live_but_allow_remote_is_not(make_client: MakeClient) -> None:
    client = await make_client()
    knobs = {
        "webhook_drop_rate": 0.5,
        "webhook_duplicate_rate": 0.25,
        "webhook_reorder": True,
        "webhook_delay_seconds": 2,
        "webhook_before_submit_response": True,
        "webhook_progress": True,
        "completed_without_artifact_reads": 3,
    }
    answer = await control(client, "config", knobs)
    assert {name: answer[name] for name in knobs} == knobs
    assert answer["useapi_accounts"] == ACCOUNTS
    for bad in ({"webhook_allow_remote": True}, {"webhook_reorder": "yes"}, {"webhook_drop_rate": 1.5}):
        assert (await client.post("/_emulator/config", json=bad)).status == 400


async def test_reset_forgets_jobs_callbacks_and_added_accounts(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = await make_client(clock=FakeClock(), job_seconds=10)
    job_id = await create_id(client, body=hooked(receiver, "ref-reset"))
    await control(client, "useapi-accounts", {"token": "user:new", "email": "n@x", "maxJobs": 1})

    await control(client, "reset")

    seen = await stats(client)
    assert set(seen["useapi_accounts"]) == {EMAIL, A, B}
    assert seen["submissions_by_ref"] == {} and seen["callbacks"]["pending"] == 0
    assert seen["useapi_accounts"][EMAIL]["submitted"] == 0
    resp = await client.get(f"/v1/ltxstudio/assets/{quote(job_id, safe='')}", headers=auth())
    await expect_error(resp, 404)
    await expect_error(await create(client, token="user:new"), 401)


def test_command_line_builds_accounts_and_knobs() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            *("--useapi-account", f"{TOKEN}:{A}=2", "--useapi-account", f"{TOKEN}:{B}=5"),
            *("--webhook-drop-rate", "0.1", "--webhook-reorder", "--webhook-delay-seconds", "1.5"),
            *("--completed-without-artifact-reads", "1"),
        ]
    )
    config = config_from_args(args)
    assert config.useapi_accounts == {TOKEN: {A: 2, B: 5}}
    assert config.webhook_drop_rate == 0.1 and config.webhook_reorder and config.webhook_delay_seconds == 1.5
    assert config.completed_without_artifact_reads == 1 and not config.webhook_allow_remote
    with pytest.raises(SystemExit):
        parser.parse_args(["--useapi-account", "no-email=2"])
