"""The provider callback route over real HTTP against real Redis (docs/fault-scenarios.md,
D29-D36, D41, D42): only the right token for the right job changes anything, and each change happens once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import callback_tokens, keys
from daemon.jobs import JobRequest, State, Update
from daemon.services import Services
from daemon.web.app import create_app
from tests.harness import slots as slot_index

ACCOUNT = "ltxstudio/me@example.com"
ARTIFACT = {
    "assetUrl": "https://storage.example/v.mp4",
    "expirationDateString": "1748919477350",
    "asset": {"type": "artifact", "fileId": "asset:1-type:video/mp4", "mimeType": "video/mp4"},
}


def status_body(job_id: str, kind: str, progress: int = 0, artifact: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"type": kind, "progress": progress}
    if kind == "completed" and artifact:
        status["artifact"] = ARTIFACT
    return {
        "status": status,
        "jobId": "email:me@example.com-job:abc-type:video",
        "replyRef": job_id,
        "code": 200,
    }


@pytest.fixture
async def daemon(open_daemon, make_settings, redis_url: str) -> AsyncIterator[tuple[Services, TestClient]]:
    # Confirmation off: these tests look at what a callback alone does (test_callback_confirm covers it on).
    app_settings = make_settings(
        accounts={ACCOUNT: 2}, GENRELAY_PUBLIC_URL="https://relay.example.com", GENRELAY_CALLBACK_CONFIRM="0"
    )
    services = await open_daemon(app_settings)
    client = TestClient(TestServer(create_app(app_settings, redis_url), host="127.0.0.1"))
    await client.start_server()
    try:
        yield services, client
    finally:
        await client.close()


async def new_job(services: Services, *, active: bool = True, claim: bool = True) -> str:
    request = JobRequest.from_json(
        {"provider": "ltxstudio", "operation": "videos/ltx-create", "params": {"prompt": "x"}}
    )
    job_id = (await services.store.create(request)).job_id
    if not claim:
        return job_id
    assert (await services.store.claim_submit(job_id)).outcome == "go"
    if active:
        update = Update(State.ACTIVE, provider_job_id="email:me@example.com-job:abc-type:video")
        assert await services.store.apply(job_id, update, source="submit") == "applied"
    return job_id


def url(services: Services, job_id: str) -> str:
    return f"/callbacks/ltxstudio/{services.callback_tokens().issue('ltxstudio', job_id)}"


async def snapshot(redis: aioredis.Redis, job_id: str) -> dict[str, str]:
    return dict(await redis.hgetall(keys.job_key(job_id)))


async def expect_error(resp: Any, status: int) -> None:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error", "code"} and body["code"] == status


async def test_wrong_missing_or_foreign_token_is_404_and_changes_nothing(daemon) -> None:
    services, client = daemon
    job_id, other = await new_job(services), await new_job(services, claim=False)
    before = await snapshot(services.client, job_id)
    body = status_body(job_id, "active", 50)
    await expect_error(await client.post(f"/callbacks/ltxstudio/{job_id}.deadbeef.AAAA", json=body), 404)
    await expect_error(await client.post("/callbacks/ltxstudio/", json=body), 404)
    await expect_error(await client.post("/callbacks/ltxstudio/garbage", json=body), 404)
    # Another job's valid token, with this job's replyRef in the body.
    await expect_error(await client.post(url(services, other), json=body), 404)
    assert await snapshot(services.client, job_id) == before


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = callback_tokens.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(callback_tokens.hmac, "compare_digest", spy)
    tokens = callback_tokens.CallbackTokens("s3cret")
    token = tokens.issue("ltxstudio", "ltxstudio-" + "a" * 32)
    assert tokens.verify("ltxstudio", token) == "ltxstudio-" + "a" * 32
    assert tokens.verify("ltxstudio", token[:-2] + "xx") is None
    assert len(calls) >= 4


def test_a_rotated_secret_still_accepts_tokens_of_the_previous_one() -> None:
    job_id = "ltxstudio-" + "b" * 32
    old = callback_tokens.CallbackTokens("old-secret").issue("ltxstudio", job_id)
    assert (
        callback_tokens.CallbackTokens("new-secret", previous="old-secret").verify("ltxstudio", old) == job_id
    )
    assert callback_tokens.CallbackTokens("new-secret").verify("ltxstudio", old) is None
    assert callback_tokens.CallbackTokens("old-secret").verify("ltx", old) is None


async def test_oversized_body_is_413_and_nothing_is_recorded(daemon) -> None:
    services, client = daemon
    job_id = await new_job(services)
    before = await snapshot(services.client, job_id)
    huge = orjson.dumps({**status_body(job_id, "active", 10), "pad": "x" * 300_000})
    resp = await client.post(url(services, job_id), data=huge, headers={"Content-Type": "application/json"})
    await expect_error(resp, 413)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    resp = await client.post(
        url(services, job_id), data=chunks(), headers={"Content-Type": "application/json"}
    )
    await expect_error(resp, 413)
    assert await snapshot(services.client, job_id) == before


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'{"status": "done", "replyRef": "x"}', "application/json", 400),
        (b'{"status": {"type": "completed", "progress": "high"}}', "application/json", 400),
        (b'{"status": {"type": "active", "progress": 5}}', "application/json", 400),
        (b"status=completed", "application/x-www-form-urlencoded", 415),
    ],
)
async def test_malformed_bodies_get_4xx_and_change_nothing(
    daemon, data: bytes, content_type: str, status: int
) -> None:
    services, client = daemon
    job_id = await new_job(services)
    before = await snapshot(services.client, job_id)
    await expect_error(
        await client.post(url(services, job_id), data=data, headers={"Content-Type": content_type}), status
    )
    assert await snapshot(services.client, job_id) == before


async def test_unknown_provider_or_one_without_callbacks_is_404(daemon) -> None:
    services, client = daemon
    job_id = await new_job(services)
    await expect_error(await client.post(f"/callbacks/nosuch/{job_id}", json={}), 404)
    await expect_error(await client.post(f"/callbacks/ltx/{job_id}", json={}), 404)


async def test_out_of_order_progress_after_completed_changes_nothing(daemon) -> None:
    services, client = daemon
    job_id = await new_job(services)
    assert (
        await client.post(url(services, job_id), json=status_body(job_id, "completed", 100))
    ).status == 200
    late = await client.post(url(services, job_id), json=status_body(job_id, "active", 40))
    assert late.status == 200 and (await late.json())["outcome"] == "terminal"
    job = (await services.store.require(job_id)).to_api()
    assert job["status"]["type"] == "completed"
    assert job["status"]["artifact"]["assetUrl"] == ARTIFACT["assetUrl"]


async def test_completed_without_artifact_is_not_completed(daemon) -> None:
    services, client = daemon
    job_id = await new_job(services)
    resp = await client.post(
        url(services, job_id), json=status_body(job_id, "completed", 100, artifact=False)
    )
    assert resp.status == 200 and (await resp.json())["outcome"] == "no_artifact"
    assert (await services.store.require(job_id)).state is State.ACTIVE
    # It keeps being polled soon, so the artifact is fetched when it appears.
    assert await services.client.zscore(keys.provider_keys("ltxstudio").polls, job_id) is not None


async def test_callback_before_the_submit_is_recorded_is_kept(daemon) -> None:
    services, client = daemon
    job_id = await new_job(services, active=False)  # the provider was called; its answer not recorded yet
    resp = await client.post(url(services, job_id), json=status_body(job_id, "active", 20))
    assert resp.status == 200 and (await resp.json())["outcome"] == "applied"
    # The submit's own answer arrives afterwards: nothing moves back, its bookkeeping is kept.
    late = Update(
        State.ACTIVE,
        progress=0,
        provider_job_id="email:me@example.com-job:abc-type:video",
        fields={"submit_open": "0", "poll_ms": "60000"},
    )
    assert await services.store.apply(job_id, late, source="submit") == "duplicate"
    record = await snapshot(services.client, job_id)
    assert (record["state"], record["progress"], record["poll_ms"]) == ("active", "20", "60000")


async def test_callback_after_retention_is_a_2xx_no_op(daemon) -> None:
    services, client = daemon
    job_id = await new_job(services)
    await services.client.delete(keys.job_key(job_id))  # what retention does
    resp = await client.post(url(services, job_id), json=status_body(job_id, "completed", 100))
    assert resp.status == 200 and (await resp.json())["outcome"] == "gone"
    assert not await services.client.exists(keys.job_key(job_id))


async def test_the_same_completed_callback_ten_times_at_once_ends_the_job_once(daemon) -> None:
    services, client = daemon
    job_id, filler = await new_job(services), await new_job(services)
    waiting = await new_job(services, claim=False)  # no slot yet: it takes the one job_id frees
    body = status_body(job_id, "completed", 100)
    answers = await asyncio.gather(*(client.post(url(services, job_id), json=body) for _ in range(10)))
    assert [a.status for a in answers] == [200] * 10
    outcomes = [(await a.json())["outcome"] for a in answers]
    assert outcomes.count("applied") == 1
    assert set(outcomes) - {"applied"} <= {"terminal", "duplicate"}
    events = await services.client.xrange(keys.events_key("ltxstudio"))
    assert [f["state"] for _, f in events if f["job"] == job_id].count("completed") == 1
    assert [f["state"] for _, f in events if f["job"] == waiting].count("dispatched") == 1
    held = await slot_index.leases_on(services.client, "ltxstudio", "me@example.com")
    assert sorted(held) == sorted([filler, waiting])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(json_values.map(orjson.dumps), st.binary(max_size=200)),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]),
    token_kind=st.sampled_from(["valid", "garbage", "other"]),
    header_value=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=50),
)
async def test_fuzzed_callbacks_get_only_2xx_or_4xx_and_change_nothing_without_a_valid_token(
    daemon,
    body: bytes,
    content_type: str,
    token_kind: str,
    header_value: str,
) -> None:
    services, client = daemon
    job_id = await new_job(services, claim=False)  # a fresh job each example; no slot needed
    other = "ltxstudio-" + "c" * 32
    token = {
        "valid": services.callback_tokens().issue("ltxstudio", job_id),
        "garbage": header_value.replace("/", "_") or "x",
        "other": services.callback_tokens().issue("ltxstudio", other),
    }[token_kind]
    before = await snapshot(services.client, job_id)
    headers = (
        {"Content-Type": content_type, "X-Fuzz": header_value} if content_type else {"X-Fuzz": header_value}
    )
    resp = await client.post(f"/callbacks/ltxstudio/{token}", data=body, headers=headers)
    assert 200 <= resp.status < 500, await resp.text()
    if token_kind != "valid" or resp.status != 200:
        assert await snapshot(services.client, job_id) == before


async def callback_counts(client: TestClient) -> dict[str, float]:
    """``genrelay_callbacks_total`` of ltxstudio by outcome, read from the app's own ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = await client.get("/metrics")
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            if sample.name == "genrelay_callbacks_total" and sample.labels["provider"] == "ltxstudio":
                counts[sample.labels["outcome"]] = sample.value
    return counts


async def test_each_callback_moves_its_outcome_counter_by_one(daemon) -> None:
    services, client = daemon
    job_id = await new_job(services)
    steps = [
        ("applied", status_body(job_id, "active", 40), url(services, job_id)),
        ("duplicate", status_body(job_id, "active", 40), url(services, job_id)),  # a byte-identical repeat
        ("duplicate", status_body(job_id, "active", 20), url(services, job_id)),  # progress only goes up
        ("applied", status_body(job_id, "completed", 100), url(services, job_id)),
        ("ignored", status_body(job_id, "active", 60), url(services, job_id)),  # the job has ended
        ("rejected", status_body(job_id, "active", 50), f"/callbacks/ltxstudio/{job_id}.deadbeef.AAAA"),
    ]
    for outcome, body, path in steps:
        before = await callback_counts(client)
        await client.post(path, json=body)
        after = await callback_counts(client)
        moved = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        assert moved == {name: float(name == outcome) for name in after}, (outcome, moved)
