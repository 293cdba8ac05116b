"""The LTX Video API v2 emulator, over real HTTP on loopback (docs/providers.md §2).

Job status is derived from the time since submit, so no test sleeps: jobs use ``[seconds=0]``,
``job_seconds=0`` or a large ``job_seconds``, and the walk through the lifecycle uses a fake
clock passed to ``create_app``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from emulator.app import create_app
from emulator.config import EmulatorConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KEY = "ltxv-test-key"
OTHER_KEY = "ltxv-other-key"
AUTH = {"Authorization": f"Bearer {KEY}"}

# A minimal valid body per endpoint (docs/providers.md §2.3) and the result key of a completed job.
BODIES: dict[str, dict[str, Any]] = {
    "text-to-video": {
        "prompt": "an eagle",
        "model": "ltx-2-3-fast",
        "duration": 8,
        "resolution": "1920x1080",
    },
    "image-to-video": {
        "image_uri": "https://example.com/a.png",
        "prompt": "an eagle",
        "model": "ltx-2-3-fast",
        "duration": 8,
        "resolution": "1920x1080",
    },
    "audio-to-video": {"audio_uri": "https://example.com/a.mp3", "prompt": "an eagle"},
    "retake": {"video_uri": "https://example.com/a.mp4", "start_time": 1, "duration": 2},
    "extend": {"video_uri": "https://example.com/a.mp4", "duration": 4},
    "video-to-video-reframe": {
        "video_uri": "https://example.com/a.mp4",
        "model": "ltx-2-3-pro",
        "resolution": "1080x1920",
    },
    "video-to-video-hdr": {"video_uri": "https://example.com/a.mp4"},
}
RESULT_KEYS = {endpoint: "video_url" for endpoint in BODIES} | {"video-to-video-hdr": "exr_frames_url"}
REQUIRED = {
    "text-to-video": ("prompt", "model", "duration", "resolution"),
    "image-to-video": ("image_uri", "prompt", "model", "duration", "resolution"),
    "audio-to-video": ("audio_uri",),
    "retake": ("video_uri", "start_time", "duration"),
    "extend": ("video_uri", "duration"),
    "video-to-video-reframe": ("video_uri", "model", "resolution"),
    "video-to-video-hdr": ("video_uri",),
}

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient) -> MakeClient:
    async def make(clock: Callable[[], float] | None = None, **config: Any) -> TestClient[Any, Any]:
        config.setdefault("keys", {KEY: 2, OTHER_KEY: 2})
        app = (
            create_app(EmulatorConfig(**config))
            if clock is None
            else create_app(EmulatorConfig(**config), clock=clock)
        )
        return await aiohttp_client(app)

    return make


def text_body(prompt: str) -> dict[str, Any]:
    return BODIES["text-to-video"] | {"prompt": prompt}


async def submit(
    client: TestClient[Any, Any],
    body: dict[str, Any],
    endpoint: str = "text-to-video",
    key: str = KEY,
) -> aiohttp.ClientResponse:
    return await client.post(f"/v2/{endpoint}", json=body, headers={"Authorization": f"Bearer {key}"})


async def submit_id(
    client: TestClient[Any, Any], body: dict[str, Any], endpoint: str = "text-to-video"
) -> str:
    resp = await submit(client, body, endpoint)
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["id"]
    assert isinstance(job_id, str) and job_id
    return job_id


async def poll(client: TestClient[Any, Any], job_id: str, endpoint: str = "text-to-video") -> dict[str, Any]:
    resp = await client.get(f"/v2/{endpoint}/{job_id}", headers=AUTH)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def assert_error(resp: aiohttp.ClientResponse, status: int, error_type: str) -> str:
    """The response is the provider's error envelope; returns its message."""
    assert resp.status == status, await resp.text()
    assert resp.headers["x-request-id"]
    body = await resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


async def stats_for(client: TestClient[Any, Any], key: str = KEY) -> dict[str, int]:
    resp = await client.get("/_emulator/stats")
    assert resp.status == 200
    keys: dict[str, dict[str, int]] = (await resp.json())["keys"]
    return keys[key]


async def control(client: TestClient[Any, Any], route: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(f"/_emulator/{route}", json=body)
    assert resp.status == 200, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


# --- lifecycle -------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", sorted(BODIES))
async def test_every_endpoint_submits_and_completes_with_its_result_key(
    make_client: MakeClient, endpoint: str
) -> None:
    client = await make_client(job_seconds=0)
    resp = await submit(client, BODIES[endpoint], endpoint)
    assert resp.status == 202
    assert resp.headers["x-request-id"]
    accepted = await resp.json()
    assert accepted["created_at"].endswith("Z")

    job = await poll(client, accepted["id"], endpoint)

    assert job["id"] == accepted["id"]
    assert job["status"] == "completed"
    assert job["created_at"] == accepted["created_at"]
    assert job["completed_at"]
    assert list(job["result"]) == [RESULT_KEYS[endpoint]]
    assert job["result"][RESULT_KEYS[endpoint]].startswith("https://")
    assert "error" not in job


async def test_status_walks_pending_processing_completed_then_expires(make_client: MakeClient) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, job_seconds=10, retention_seconds=100)
    job_id = await submit_id(client, text_body("an eagle"))

    assert (await poll(client, job_id))["status"] == "pending"
    clock.now += 5
    processing = await poll(client, job_id)
    assert processing["status"] == "processing"
    assert "result" not in processing and "completed_at" not in processing
    clock.now += 5
    assert (await poll(client, job_id))["status"] == "completed"
    clock.now += 99
    assert (await poll(client, job_id))["status"] == "completed"
    clock.now += 1
    resp = await client.get(f"/v2/text-to-video/{job_id}", headers=AUTH)
    await assert_error(resp, 404, "not_found_error")


async def test_long_job_is_pending_on_the_real_clock(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=3600)
    job_id = await submit_id(client, text_body("an eagle"))
    assert (await poll(client, job_id))["status"] == "pending"


async def test_seconds_marker_overrides_job_seconds(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=3600)
    quick = await submit_id(client, text_body("an eagle [seconds=0]"))
    assert (await poll(client, quick))["status"] == "completed"

    await control(client, "config", {"job_seconds": 0})
    slow = await submit_id(client, text_body("an eagle [seconds=3600]"))
    assert (await poll(client, slow))["status"] == "pending"


async def test_jitter_spreads_durations(make_client: MakeClient) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, keys={KEY: 50}, job_seconds=10, job_seconds_jitter=0.5, seed=7)
    ids = [await submit_id(client, text_body("an eagle")) for _ in range(20)]

    async def statuses() -> set[str]:
        return {(await poll(client, job_id))["status"] for job_id in ids}

    start = clock.now
    clock.now = start + 4.9
    assert "completed" not in await statuses()
    clock.now = start + 10
    assert await statuses() == {"processing", "completed"}
    clock.now = start + 15.1
    assert await statuses() == {"completed"}


# --- failures --------------------------------------------------------------------------------


async def test_fail_marker_ends_failed_with_an_error_object(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    job = await poll(client, await submit_id(client, text_body("an eagle [fail]")))
    assert job["status"] == "failed"
    assert job["completed_at"]
    assert job["error"]["type"] == "content_filtered_error"
    assert job["error"]["message"]
    assert "result" not in job


async def test_fail_marker_may_name_the_error_type(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    job = await poll(client, await submit_id(client, text_body("an eagle [fail=api_error]")))
    assert job["status"] == "failed"
    assert job["error"]["type"] == "api_error"


async def test_failing_job_shows_no_error_before_its_end(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=3600)
    job = await poll(client, await submit_id(client, text_body("an eagle [fail]")))
    assert job["status"] == "pending"
    assert "error" not in job


async def test_failure_rate_one_fails_every_job_but_ok_marker(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0, failure_rate=1.0)
    for endpoint in ("text-to-video", "video-to-video-hdr"):
        job = await poll(client, await submit_id(client, BODIES[endpoint], endpoint), endpoint)
        assert job["status"] == "failed"
        assert job["error"]["type"] == "content_filtered_error"
    assert (await poll(client, await submit_id(client, text_body("an eagle [ok]"))))["status"] == "completed"


async def test_failure_rate_zero_never_fails(make_client: MakeClient) -> None:
    client = await make_client(keys={KEY: 30}, job_seconds=0, failure_rate=0.0)
    for _ in range(20):
        assert (await poll(client, await submit_id(client, text_body("an eagle"))))["status"] == "completed"


# --- request errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "wrong-key", "not-bearer", "empty"],
)
async def test_bad_key_is_401(make_client: MakeClient, headers: dict[str, str]) -> None:
    client = await make_client(job_seconds=0)
    resp = await client.post("/v2/text-to-video", json=BODIES["text-to-video"], headers=headers)
    await assert_error(resp, 401, "authentication_error")
    job_id = await submit_id(client, text_body("an eagle"))
    resp = await client.get(f"/v2/text-to-video/{job_id}", headers=headers)
    await assert_error(resp, 401, "authentication_error")


async def test_accept_any_key_gives_each_key_default_max_jobs(make_client: MakeClient) -> None:
    client = await make_client(keys={}, accept_any_key=True, default_max_jobs=1, job_seconds=3600)
    assert (await submit(client, text_body("a"), key="anything")).status == 202
    assert (await submit(client, text_body("a"), key="anything")).status == 429
    assert (await submit(client, text_body("a"), key="something-else")).status == 202


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[1, 2]", b'"text"'], ids=["malformed", "empty", "array", "string"]
)
async def test_body_that_is_not_a_json_object_is_400(make_client: MakeClient, raw: bytes) -> None:
    client = await make_client()
    resp = await client.post(
        "/v2/text-to-video", data=raw, headers=AUTH | {"Content-Type": "application/json"}
    )
    await assert_error(resp, 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [(endpoint, field) for endpoint, fields in REQUIRED.items() for field in fields],
)
async def test_missing_required_field_is_400(make_client: MakeClient, endpoint: str, field: str) -> None:
    client = await make_client()
    body = dict(BODIES[endpoint])
    body.pop(field)
    message = await assert_error(await submit(client, body, endpoint), 400, "invalid_request_error")
    assert field in message
    assert (await stats_for(client))["submitted"] == 0


async def test_audio_to_video_needs_prompt_or_image(make_client: MakeClient) -> None:
    client = await make_client(keys={KEY: 5})
    audio = {"audio_uri": "https://example.com/a.mp3"}
    await assert_error(await submit(client, audio, "audio-to-video"), 400, "invalid_request_error")
    image = audio | {"image_uri": "https://example.com/a.png"}
    assert (await submit(client, image, "audio-to-video")).status == 202


@pytest.mark.parametrize(
    "change",
    [{"prompt": ""}, {"prompt": 5}, {"duration": "8"}, {"duration": 0}, {"generate_audio": "yes"}],
    ids=["empty-prompt", "number-prompt", "string-duration", "zero-duration", "string-bool"],
)
async def test_wrongly_typed_field_is_400(make_client: MakeClient, change: dict[str, Any]) -> None:
    client = await make_client()
    resp = await submit(client, BODIES["text-to-video"] | change)
    await assert_error(resp, 400, "invalid_request_error")


async def test_unknown_endpoint_is_404(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    await assert_error(await submit(client, BODIES["text-to-video"], "text-to-song"), 404, "not_found_error")
    job_id = await submit_id(client, text_body("an eagle"))
    resp = await client.get(f"/v2/text-to-song/{job_id}", headers=AUTH)
    await assert_error(resp, 404, "not_found_error")
    resp = await client.get("/v3/text-to-video", headers=AUTH)
    await assert_error(resp, 404, "not_found_error")


async def test_unknown_or_foreign_job_is_404(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    resp = await client.get("/v2/text-to-video/0123456789abcdef", headers=AUTH)
    await assert_error(resp, 404, "not_found_error")
    job_id = await submit_id(client, text_body("an eagle"))
    # Polled under another endpoint, or by another key, the job does not exist.
    resp = await client.get(f"/v2/extend/{job_id}", headers=AUTH)
    await assert_error(resp, 404, "not_found_error")
    resp = await client.get(f"/v2/text-to-video/{job_id}", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    await assert_error(resp, 404, "not_found_error")


async def test_wrong_method_and_oversized_body_use_the_envelope(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.delete("/v2/text-to-video", headers=AUTH)
    await assert_error(resp, 405, "invalid_request_error")
    big = b'{"prompt": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    resp = await client.post("/v2/text-to-video", data=big, headers=AUTH)
    await assert_error(resp, 413, "request_too_large")


async def test_every_answer_has_a_distinct_request_id(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    answers = [
        await submit(client, text_body("an eagle")),
        await client.get("/v2/text-to-video/nope", headers=AUTH),
        await client.get("/_emulator/stats"),
        await client.post("/v2/text-to-video", data=b"{", headers=AUTH),
    ]
    ids = [resp.headers["x-request-id"] for resp in answers]
    assert all(ids) and len(set(ids)) == len(ids)


# --- concurrency limit -----------------------------------------------------------------------


async def test_submit_at_max_jobs_is_429_with_retry_after(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=3600, retry_after_seconds=7)
    first = await submit_id(client, text_body("one"))
    await submit_id(client, text_body("two"))

    resp = await submit(client, text_body("three"))

    await assert_error(resp, 429, "concurrency_limit_error")
    assert resp.headers["Retry-After"] == "7"
    await poll(client, first)
    assert await stats_for(client) == {
        "max_jobs": 2,
        "executing": 2,
        "peak": 2,
        "submitted": 2,
        "rejected_429": 1,
        "polls": 1,
        "rejected_concurrency": 1,
        "rejected_rate": 0,
        "foreign": 0,
    }
    # Another key has its own limit.
    assert (await submit(client, text_body("four"), key=OTHER_KEY)).status == 202


async def test_slot_is_held_until_the_job_ends(make_client: MakeClient) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock, keys={KEY: 1}, job_seconds=10)
    await submit_id(client, text_body("an eagle [fail]"))
    clock.now += 9
    assert (await submit(client, text_body("too early"))).status == 429
    assert (await stats_for(client))["executing"] == 1
    clock.now += 1
    assert (await stats_for(client))["executing"] == 0
    await submit_id(client, text_body("now it fits"))
    assert await stats_for(client) == {
        "max_jobs": 1,
        "executing": 1,
        "peak": 1,
        "submitted": 2,
        "rejected_429": 1,
        "polls": 0,
        "rejected_concurrency": 1,
        "rejected_rate": 0,
        "foreign": 0,
    }


async def test_a_foreign_job_holds_a_slot_of_the_key_until_it_ends(make_client: MakeClient) -> None:
    """A job started outside the client holds one of the key's slots (for N seconds, or until ended
    by the control route); the submit that finds every slot busy is a concurrency 429."""
    clock = FakeClock()
    client = await make_client(clock=clock, keys={KEY: 2}, job_seconds=3600)
    held = await control(client, "ltx-foreign-jobs", {"key": KEY})
    timed = await control(client, "ltx-foreign-jobs", {"key": KEY, "seconds": 5})
    resp = await submit(client, text_body("no slot"))
    await assert_error(resp, 429, "concurrency_limit_error")
    clock.now += 5
    await submit_id(client, text_body("the timed one ended"))
    assert (await submit(client, text_body("full again"))).status == 429
    gone = await client.delete(f"/_emulator/ltx-foreign-jobs/{held['id']}")
    assert gone.status == 200
    assert (await client.delete(f"/_emulator/ltx-foreign-jobs/{timed['id']}")).status == 404
    await submit_id(client, text_body("the held one ended"))
    stats = await stats_for(client)
    assert (stats["rejected_concurrency"], stats["foreign"], stats["executing"]) == (2, 0, 2)
    bad = await client.post("/_emulator/ltx-foreign-jobs", json={"key": "nobody"})
    assert bad.status == 400


async def test_the_rate_limit_knob_answers_rate_limit_errors(make_client: MakeClient) -> None:
    client = await make_client(ltx_rate_limit_rate=1.0, retry_after_seconds=3)
    resp = await submit(client, text_body("too fast"))
    await assert_error(resp, 429, "rate_limit_error")
    assert resp.headers["Retry-After"] == "3"
    await client.post("/_emulator/config", json={"ltx_rate_limit_rate": 0.0})
    await submit_id(client, text_body("calm now"))
    stats = await stats_for(client)
    assert (stats["rejected_rate"], stats["rejected_concurrency"], stats["submitted"]) == (1, 0, 1)


async def test_peak_never_exceeds_max_jobs_under_concurrent_submits(make_client: MakeClient) -> None:
    client = await make_client(keys={KEY: 3}, job_seconds=3600)
    answers = await asyncio.gather(*(submit(client, text_body(f"job {n}")) for n in range(25)))
    statuses = sorted(resp.status for resp in answers)
    assert statuses == [202] * 3 + [429] * 22
    stats = await stats_for(client)
    assert stats["peak"] == 3
    assert stats["executing"] == 3
    assert stats["submitted"] == 3
    assert stats["rejected_429"] == 22


async def test_instant_jobs_never_pile_up(make_client: MakeClient) -> None:
    client = await make_client(keys={KEY: 1}, job_seconds=0)
    answers = await asyncio.gather(*(submit(client, text_body(f"job {n}")) for n in range(10)))
    assert [resp.status for resp in answers] == [202] * 10
    assert (await stats_for(client))["peak"] == 1


async def test_registered_key_gets_its_max_jobs(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=3600)
    assert (await submit(client, text_body("a"), key="late-key")).status == 401
    assert await control(client, "keys", {"key": "late-key", "max_jobs": 1}) == {
        "key": "late-key",
        "max_jobs": 1,
    }
    assert (await submit(client, text_body("a"), key="late-key")).status == 202
    assert (await submit(client, text_body("b"), key="late-key")).status == 429
    # Raising max_jobs of a known key takes effect at once.
    await control(client, "keys", {"key": "late-key", "max_jobs": 2})
    assert (await submit(client, text_body("c"), key="late-key")).status == 202
    assert (await stats_for(client, "late-key"))["peak"] == 2


@pytest.mark.parametrize(
    "body", [{"key": "", "max_jobs": 1}, {"key": "k", "max_jobs": -1}, {"key": "k", "max_jobs": "2"}, {}]
)
async def test_register_key_rejects_bad_input(make_client: MakeClient, body: dict[str, Any]) -> None:
    client = await make_client()
    resp = await client.post("/_emulator/keys", json=body)
    await assert_error(resp, 400, "invalid_request_error")


# --- retention -------------------------------------------------------------------------------


async def test_job_past_retention_is_404_and_unlisted(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=3600, retention_seconds=0)
    running = await submit_id(client, text_body("still running"))
    ended = await submit_id(client, text_body("done [seconds=0]"))

    resp = await client.get(f"/v2/text-to-video/{ended}", headers=AUTH)
    await assert_error(resp, 404, "not_found_error")
    assert (await poll(client, running))["status"] == "pending"
    listed = (await (await client.get("/_emulator/jobs")).json())["jobs"]
    assert [job["id"] for job in listed] == [running]


# --- control API -----------------------------------------------------------------------------


async def test_config_knobs_change_live(make_client: MakeClient) -> None:
    """The control route changes the knobs of a running emulator and the next job obeys them."""
    client = await make_client(job_seconds=3600)
    knobs = {
        "job_seconds": 0,
        "job_seconds_jitter": 0.25,
        "failure_rate": 1.0,
        "retention_seconds": 60,
        "retry_after_seconds": 9,
    }
    answer = await control(client, "config", knobs)
    assert {name: answer[name] for name in knobs} == knobs
    current = await (await client.get("/_emulator/config")).json()
    assert {name: current[name] for name in knobs} == knobs
    assert (await poll(client, await submit_id(client, text_body("an eagle"))))["status"] == "failed"


@pytest.mark.parametrize(
    "body",
    [{"failure_rate": 2}, {"job_seconds": -1}, {"retry_after_seconds": "1"}, {"keys": {}}, {"colour": 1}],
    ids=["rate-above-1", "negative", "string", "not-live", "unknown"],
)
async def test_config_rejects_bad_knobs(make_client: MakeClient, body: dict[str, Any]) -> None:
    client = await make_client(failure_rate=0.5)
    resp = await client.post("/_emulator/config", json=body)
    await assert_error(resp, 400, "invalid_request_error")
    assert (await (await client.get("/_emulator/config")).json())["failure_rate"] == 0.5


async def test_jobs_listing_shows_each_job(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=3600)
    slow = await submit_id(client, text_body("slow"))
    quick = await submit_id(client, text_body("quick [seconds=0]"))
    await submit(client, BODIES["text-to-video"], key=OTHER_KEY)

    resp = await client.get("/_emulator/jobs", params={"key": KEY})

    jobs = {job["id"]: job for job in (await resp.json())["jobs"]}
    assert set(jobs) == {slow, quick}
    assert jobs[slow]["status"] == "pending" and jobs[slow]["executing"] is True
    assert jobs[quick]["status"] == "completed" and jobs[quick]["executing"] is False
    assert jobs[slow]["endpoint"] == "text-to-video"
    assert jobs[slow]["key"] == KEY
    assert jobs[slow]["prompt"] == "slow"
    all_jobs = (await (await client.get("/_emulator/jobs")).json())["jobs"]
    assert len(all_jobs) == 3


async def test_reset_returns_to_start_up_state(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=3600)
    job_id = await submit_id(client, text_body("an eagle"))
    await submit_id(client, text_body("an eagle"))
    await submit(client, text_body("rejected"))
    await control(client, "config", {"failure_rate": 1.0})
    await control(client, "keys", {"key": "late-key", "max_jobs": 1})
    await control(client, "faults", {"status": 500, "count": 3})

    assert await control(client, "reset", {}) == {"reset": True}

    stats = await (await client.get("/_emulator/stats")).json()
    assert stats["injected_remaining"] == 0
    assert set(stats["keys"]) == {KEY, OTHER_KEY}
    assert all(value == 0 for name, value in stats["keys"][KEY].items() if name != "max_jobs")
    assert (await (await client.get("/_emulator/config")).json())["failure_rate"] == 0.0
    assert (await (await client.get("/_emulator/jobs")).json()) == {"jobs": []}
    assert (await (await client.get("/_emulator/faults")).json())["faults"] == []
    await assert_error(await client.get(f"/v2/text-to-video/{job_id}", headers=AUTH), 404, "not_found_error")
    assert (await submit(client, text_body("a"), key="late-key")).status == 401
    assert (await submit(client, text_body("fresh slots"))).status == 202


# --- injected faults -------------------------------------------------------------------------


async def test_503_fault_twice_then_normal(make_client: MakeClient) -> None:
    """An injected 503 with a count answers exactly that many submits in LTX's envelope with its
    Retry-After, then the emulator serves normally again."""
    client = await make_client(job_seconds=0)
    answer = await control(
        client,
        "faults",
        {"method": "post", "path_prefix": "/v2/text-to-video", "status": 503, "count": 2, "retry_after": 3},
    )
    assert answer["injected_remaining"] == 2
    assert answer["fault"]["method"] == "POST"

    for _ in range(2):
        resp = await submit(client, text_body("an eagle"))
        await assert_error(resp, 503, "service_unavailable")
        assert resp.headers["Retry-After"] == "3"
    job_id = await submit_id(client, text_body("an eagle"))

    assert (await poll(client, job_id))["status"] == "completed"
    stats = await (await client.get("/_emulator/stats")).json()
    assert stats["injected_remaining"] == 0
    assert stats["keys"][KEY]["submitted"] == 1


async def test_fault_matches_only_its_method_and_prefix(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    await control(client, "faults", {"method": "GET", "path_prefix": "/v2/extend/", "status": 500})
    job_id = await submit_id(client, BODIES["extend"], "extend")
    assert (await poll(client, await submit_id(client, text_body("a"))))["status"] == "completed"
    # Control routes are never faulted.
    assert (await client.get("/_emulator/stats")).status == 200

    resp = await client.get(f"/v2/extend/{job_id}", headers=AUTH)

    await assert_error(resp, 500, "api_error")
    assert (await poll(client, job_id, "extend"))["status"] == "completed"


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        ({"status": 429, "retry_after": 2}, "rate_limit_error"),
        ({"status": 402, "message": "Insufficient funds. Required: 120 credits"}, "insufficient_funds_error"),
        ({"status": 403}, "permission_error"),
        ({"status": 422}, "content_filtered_error"),
        ({"status": 529}, "overloaded_error"),
        ({"status": 500, "error_type": "custom_error"}, "custom_error"),
    ],
)
async def test_fault_status_maps_to_error_type(
    make_client: MakeClient, fault: dict[str, Any], error_type: str
) -> None:
    client = await make_client()
    await control(client, "faults", fault)
    resp = await submit(client, BODIES["text-to-video"])
    message = await assert_error(resp, fault["status"], error_type)
    if "message" in fault:
        assert message == fault["message"]
    if "retry_after" in fault:
        assert resp.headers["Retry-After"] == str(fault["retry_after"])


async def test_drop_connection_fault_is_a_client_error(make_client: MakeClient) -> None:
    client = await make_client(job_seconds=0)
    await control(client, "faults", {"drop_connection": True, "method": "POST"})

    with pytest.raises(aiohttp.ClientError):
        await submit(client, text_body("an eagle"))

    job_id = await submit_id(client, text_body("an eagle"))
    assert (await poll(client, job_id))["status"] == "completed"
    assert (await stats_for(client))["submitted"] == 1


@pytest.mark.parametrize(
    "fault",
    [{"status": 200}, {"status": 600}, {"count": 0}, {"method": "FETCH"}, {"drop_connection": 1}, {"x": 1}],
)
async def test_bad_fault_is_400(make_client: MakeClient, fault: dict[str, Any]) -> None:
    client = await make_client()
    resp = await client.post("/_emulator/faults", json=fault)
    await assert_error(resp, 400, "invalid_request_error")
    assert (await (await client.get("/_emulator/faults")).json())["injected_remaining"] == 0


# --- command line ----------------------------------------------------------------------------


async def run_module(*args: str) -> asyncio.subprocess.Process:
    # Without PYTHONUNBUFFERED the announcement reaches the pipe only if the emulator flushes it.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulator",
        *args,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_help_exits_0() -> None:
    proc = await run_module("--help")
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert b"--job-seconds" in out and b"--retention-seconds" in out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_module_announces_port_serves_and_stops_on_signal(signum: signal.Signals) -> None:
    proc = await run_module("--port", "0", "--key", f"{KEY}=1", "--job-seconds", "0", "--retry-after", "4")
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        prefix = "emulator listening on http://127.0.0.1:"
        assert line.startswith(prefix), line
        port = int(line.removeprefix(prefix))
        assert port > 0
        base = f"http://127.0.0.1:{port}"
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(base, headers=AUTH, timeout=timeout) as session:
            async with session.post("/v2/text-to-video", json=BODIES["text-to-video"]) as resp:
                assert resp.status == 202
                job_id = (await resp.json())["id"]
            async with session.get(f"/v2/text-to-video/{job_id}") as resp:
                assert (await resp.json())["status"] == "completed"
            async with session.get("/_emulator/config") as resp:
                assert (await resp.json())["retry_after_seconds"] == 4

        proc.send_signal(signum)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
