"""The HTTP API on the real app against the real Redis: submit, read, list, capacity, the error
shape of every refusal, bearer auth, the probes, the access log and the server loop."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from daemon import keys
from daemon.jobs import State, Update
from daemon.redis_connection import connect
from daemon.services import Services
from daemon.settings import Settings
from daemon.web.api import MAX_BODY_BYTES, SERVICES
from daemon.web.app import AccessLogger, create_app, serve
from daemon.web.auth import UNAUTHORIZED_MESSAGE

Client = TestClient[web.Request, web.Application]
Snapshot = Callable[[], Awaitable[dict[bytes, bytes]]]

TOKENS = ("token-one-0123456789abcdef", "token-two-0123456789abcdef")
JOB = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "a cat"}}
UNKNOWN_JOB = "ltx-" + "0" * 32
STATES = "queued, submitting, active, completed, failed, canceled"


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(accounts={"a1": 2, "a2": 1})


@pytest.fixture
async def api(
    redis_client: aioredis.Redis, redis_url: str, settings: Settings, aiohttp_client: AiohttpClient
) -> Client:
    return await aiohttp_client(create_app(settings, redis_url))


@pytest.fixture
async def guarded_api(
    redis_client: aioredis.Redis,
    redis_url: str,
    make_settings: Callable[..., Settings],
    aiohttp_client: AiohttpClient,
) -> Client:
    settings = make_settings(GENRELAY_API_TOKENS=",".join(TOKENS))
    return await aiohttp_client(create_app(settings, redis_url))


@pytest.fixture
async def redis_state(redis_url: str) -> AsyncIterator[Snapshot]:
    """Every key with its DUMP: equal snapshots mean nothing in Redis was written."""
    raw = await connect(redis_url, decode_responses=False)

    async def snapshot() -> dict[bytes, bytes]:
        state = {key: await raw.dump(key) for key in sorted(await raw.keys("*"))}
        assert state, "the app has started, so at least the accounts are in Redis"
        return state

    try:
        yield snapshot
    finally:
        await raw.aclose()


def services_of(client: Client) -> Services:
    assert client.app is not None
    return client.app[SERVICES]


async def submit(client: Client, **extra: Any) -> str:
    resp = await client.post("/v1/jobs", json={**JOB, **extra})
    assert resp.status == 202, await resp.text()
    job_id: str = (await resp.json())["jobId"]
    return job_id


async def listing(client: Client, query: str = "") -> dict[str, Any]:
    resp = await client.get(f"/v1/jobs?{query}")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def expect_error(resp: aiohttp.ClientResponse, status: int, *fragments: str) -> str:
    """Assert useapi's error shape (docs/providers.md §1.1) and status; returns the message."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error", "code"} and body["code"] == status, body
    for fragment in fragments:
        assert fragment in body["error"], body
    message: str = body["error"]
    return message


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- submit, read, list ---------------------------------------------------------------------------


async def test_a_submitted_job_can_be_read_and_listed(api: Client) -> None:
    """POST answers 202 with the new id; GET shows the job in the status shape; the list has it."""
    resp = await api.post("/v1/jobs", json={**JOB, "replyRef": "ref-1", "priority": 7})
    assert resp.status == 202
    created = await resp.json()
    assert created["created"] is True and keys.provider_of(created["jobId"]) == "ltx"

    resp = await api.get(f"/v1/jobs/{created['jobId']}")
    assert resp.status == 200
    job = await resp.json()
    assert job["jobId"] == created["jobId"]
    assert job["status"] == {"type": "queued", "progress": 0}
    assert (job["replyRef"], job["priority"], job["params"]) == ("ref-1", 7, {"prompt": "a cat"})

    body = await listing(api)
    assert [item["jobId"] for item in body["items"]] == [created["jobId"]]
    assert body["meta"] == {
        "totalItems": 1,
        "itemCount": 1,
        "itemsPerPage": 20,
        "totalPages": 1,
        "currentPage": 1,
    }


async def test_a_repeated_request_id_returns_the_existing_job_with_200(
    api: Client, redis_client: aioredis.Redis
) -> None:
    """The second POST with the same requestId is the same job, answered 200 and not queued twice."""
    first = await api.post("/v1/jobs", json={**JOB, "requestId": "order-17"})
    again = await api.post("/v1/jobs", json={**JOB, "requestId": "order-17"})
    assert (first.status, again.status) == (202, 200)
    first_body, again_body = await first.json(), await again.json()
    assert first_body["jobId"] == again_body["jobId"]
    assert (first_body["created"], again_body["created"]) == (True, False)
    assert await redis_client.zcard(keys.provider_keys("ltx").index) == 1


async def test_the_list_pages_newest_first_with_meta(api: Client) -> None:
    """Five jobs in pages of two: three pages with the right meta, each job exactly once."""
    job_ids = [await submit(api, params={"prompt": f"cat {n}"}) for n in range(5)]
    pages = [await listing(api, f"limit=2&page={page}") for page in (1, 2, 3, 4)]
    assert [(p["meta"]["itemCount"], p["meta"]["currentPage"]) for p in pages] == [
        (2, 1),
        (2, 2),
        (1, 3),
        (0, 4),
    ]
    assert {(p["meta"]["totalItems"], p["meta"]["totalPages"], p["meta"]["itemsPerPage"]) for p in pages} == {
        (5, 3, 2)
    }
    items = [item for page in pages for item in page["items"]]
    assert sorted(item["jobId"] for item in items) == sorted(job_ids)
    created = [item["createdAt"] for item in items]
    assert created == sorted(created, reverse=True)


async def test_the_list_filters_by_status_and_provider(api: Client) -> None:
    """A job moved to active is listed under status=active only; the other stays under queued."""
    started, waiting = await submit(api), await submit(api)
    store = services_of(api).store
    assert (await store.claim_submit(started)).outcome == "go"
    outcome = await store.apply(started, Update(State.ACTIVE, provider_job_id="p1"), source="submit")
    assert outcome == "applied"

    active = await listing(api, "status=active")
    queued = await listing(api, "status=queued&provider=ltx")
    completed = await listing(api, "status=completed&provider=")
    assert [item["jobId"] for item in active["items"]] == [started]
    assert [item["jobId"] for item in queued["items"]] == [waiting]
    assert completed["items"] == []
    assert (completed["meta"]["totalItems"], completed["meta"]["totalPages"]) == (0, 0)


async def test_scheduler_available_mirrors_every_account(api: Client) -> None:
    """The capacity mirror lists each account with maxJobs, and the dispatched job as executing."""
    job_id = await submit(api)
    for path in ("/v1/scheduler/available", "/v1/scheduler/available?provider=ltx"):
        resp = await api.get(path)
        assert resp.status == 200
        body = await resp.json()
        assert {a["email"]: a["maxJobs"] for a in body["available"]} == {"a1": 2, "a2": 1}
        assert sum(a["executing"] for a in body["available"]) == 1
        assert [e["jobId"] for e in body["executing"]] == [job_id]


# -- refusals: {"error", "code"} with the right status, and nothing written -----------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"provider": "ltx",', "malformed JSON: "),
        (b"", "malformed JSON: "),
        (b"[1, 2]", "the body must be a JSON object"),
        ({**JOB, "priority": "high"}, "'priority' must be an integer from 0 to 9"),
        ({**JOB, "params": ["a cat"]}, "'params' must be a JSON object"),
        ({**JOB, "colour": "red"}, "unknown field(s): colour"),
        ({**JOB, "provider": "vydra"}, "unknown provider 'vydra': configured providers are ltx"),
        ({**JOB, "operation": "paint"}, "unknown operation 'paint' for ltx"),
        ({**JOB, "account": "zz"}, "no ltx account named 'zz'"),
        ({"operation": "text-to-video"}, "'provider' is required"),
        ({**JOB, "replyUrl": "ftp://example.com/x"}, "'replyUrl' cannot be used: only http:// and https://"),
        ({**JOB, "replyUrl": "https://user:pw@example.com/x"}, "'replyUrl' cannot be used"),
    ],
)
async def test_an_invalid_job_request_gets_400_and_writes_nothing(
    api: Client, redis_state: Snapshot, body: bytes | dict[str, Any], fragment: str
) -> None:
    """Malformed JSON, wrong types, unknown fields, provider, operation or account: 400, no write."""
    before = await redis_state()
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = await api.post("/v1/jobs", data=data, headers={"Content-Type": "application/json"})
    await expect_error(resp, 400, fragment)
    assert await redis_state() == before


@pytest.mark.parametrize(
    ("content_type", "fragment"),
    [
        ("text/plain", "got 'text/plain'"),
        ("application/x-www-form-urlencoded", "got 'application/x-www-form-urlencoded'"),
        (None, "no Content-Type was sent"),
    ],
)
async def test_a_body_that_is_not_declared_json_gets_415(
    api: Client, redis_state: Snapshot, content_type: str | None, fragment: str
) -> None:
    """Only application/json is read; anything else is 415 before the body is parsed."""
    before = await redis_state()
    headers = {"Content-Type": content_type} if content_type else {}
    skip = () if content_type else ("Content-Type",)
    resp = await api.post("/v1/jobs", data=orjson.dumps(JOB), headers=headers, skip_auto_headers=skip)
    await expect_error(resp, 415, "Content-Type: application/json", fragment)
    assert await redis_state() == before


async def test_a_body_over_256_kib_gets_413_in_the_json_shape(api: Client, redis_state: Snapshot) -> None:
    """A declared Content-Length over the cap is refused with the error JSON."""
    before = await redis_state()
    oversize = orjson.dumps({**JOB, "params": {"prompt": "x" * MAX_BODY_BYTES}})
    resp = await api.post("/v1/jobs", data=oversize, headers={"Content-Type": "application/json"})
    await expect_error(resp, 413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    assert await redis_state() == before


async def test_a_chunked_body_over_256_kib_gets_413_in_the_json_shape(
    api: Client, redis_state: Snapshot
) -> None:
    """Without a Content-Length the body is cut off at the cap by aiohttp; still 413 in our shape."""
    before = await redis_state()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * 65536

    resp = await api.post("/v1/jobs", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    await expect_error(resp, 413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    assert await redis_state() == before


@pytest.mark.parametrize("job_id", [UNKNOWN_JOB, "vydra-" + "a" * 32, "not-a-job", "ltx-XYZ"])
async def test_an_unknown_or_malformed_job_id_gets_404(api: Client, job_id: str) -> None:
    await expect_error(await api.get(f"/v1/jobs/{job_id}"), 404, f"no job {job_id!r}")


@pytest.mark.parametrize(
    ("query", "fragments"),
    [
        ("status=done", (f"'status' must be one of {STATES}", "'done'")),
        ("provider=vydra", ("unknown provider 'vydra'", "configured providers are ltx")),
        ("page=0", ("'page' must be an integer of at least 1", "'0'")),
        ("page=two", ("'page' must be an integer of at least 1",)),
        ("page=1.5", ("'page' must be an integer",)),
        ("page=-1", ("'page' must be an integer",)),
        ("limit=0", ("'limit' must be an integer from 1 to 100", "'0'")),
        ("limit=101", ("'limit' must be an integer from 1 to 100", "'101'")),
        ("limit=1e3", ("'limit' must be an integer from 1 to 100",)),
        ("sort=asc", ("unknown query parameter 'sort'", "status, provider, page, limit")),
        ("page=1&page=2", ("'page' is given more than once",)),
    ],
)
async def test_a_bad_list_query_gets_400_naming_the_parameter(
    api: Client, query: str, fragments: tuple[str, ...]
) -> None:
    await expect_error(await api.get(f"/v1/jobs?{query}"), 400, *fragments)


async def test_scheduler_available_refuses_unknown_providers_and_parameters(api: Client) -> None:
    resp = await api.get("/v1/scheduler/available?provider=vydra")
    await expect_error(resp, 404, "unknown provider 'vydra'", "configured providers are ltx")
    resp = await api.get("/v1/scheduler/available?account=a1")
    await expect_error(resp, 400, "unknown query parameter 'account'")


async def test_no_route_gets_404_and_a_wrong_method_405_in_the_json_shape(api: Client) -> None:
    await expect_error(await api.get("/v1/nothing"), 404, "no route for GET /v1/nothing")
    await expect_error(await api.get("/nothing-here"), 404, "no route for GET /nothing-here")
    resp = await api.put("/v1/jobs", json=JOB)
    await expect_error(resp, 405, "method PUT is not allowed on /v1/jobs: use GET, HEAD, POST")
    assert resp.headers["Allow"] == "GET,HEAD,POST"
    await expect_error(await api.post(f"/v1/jobs/{UNKNOWN_JOB}", json=JOB), 405, "use DELETE, GET, HEAD")


# -- failures that are not the client's -----------------------------------------------------------


async def test_an_unreachable_redis_gets_503(api: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis connection error is a 503 the client may retry, not a 500."""
    dead = await connect(f"redis://127.0.0.1:{closed_port()}/0")
    monkeypatch.setattr(services_of(api).store, "client", dead)
    try:
        resp = await api.get(f"/v1/jobs/{UNKNOWN_JOB}")
        await expect_error(resp, 503, "Redis is unreachable: ")
        assert resp.headers["Retry-After"] == "1"
    finally:
        await dead.aclose()


async def test_an_unexpected_error_is_logged_and_answered_500_without_details(
    api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(job_id: str) -> None:
        raise RuntimeError("detail only the log may see")

    monkeypatch.setattr(services_of(api).store, "get", broken)
    with capture_logs() as logs:
        resp = await api.get(f"/v1/jobs/{UNKNOWN_JOB}")
    assert resp.status == 500
    text = await resp.text()
    assert orjson.loads(text) == {"error": "internal error", "code": 500}
    assert "detail only" not in text and "Traceback" not in text
    [entry] = [e for e in logs if e["event"] == "unhandled error"]
    assert (entry["log_level"], entry["exc_info"]) == ("error", True)
    assert entry["path"] == f"/v1/jobs/{UNKNOWN_JOB}"


# -- bearer auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer wrong-token-0123456789abcdef",
        f"Bearer {TOKENS[0]}x",
        f"Bearer {TOKENS[0][:-1]}",
        f"Basic {TOKENS[0]}",
        TOKENS[0],
    ],
)
async def test_the_api_refuses_a_missing_or_wrong_token_and_writes_nothing(
    guarded_api: Client, redis_state: Snapshot, authorization: str | None
) -> None:
    before = await redis_state()
    headers = {"Authorization": authorization} if authorization else {}
    resp = await guarded_api.post("/v1/jobs", json=JOB, headers=headers)
    assert await expect_error(resp, 401) == UNAUTHORIZED_MESSAGE
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    await expect_error(await guarded_api.get("/v1/jobs", headers=headers), 401)
    assert await redis_state() == before


@pytest.mark.parametrize(
    "authorization", [f"Bearer {TOKENS[0]}", f"Bearer {TOKENS[1]}", f"bearer {TOKENS[0]}"]
)
async def test_the_api_accepts_each_configured_token(guarded_api: Client, authorization: str) -> None:
    headers = {"Authorization": authorization}
    resp = await guarded_api.post("/v1/jobs", json=JOB, headers=headers)
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["jobId"]
    assert (await guarded_api.get(f"/v1/jobs/{job_id}", headers=headers)).status == 200


async def test_probes_need_no_token_and_unknown_api_routes_do(guarded_api: Client) -> None:
    assert (await guarded_api.get("/healthz")).status == 200
    assert (await guarded_api.get("/readyz")).status == 200
    await expect_error(await guarded_api.get("/v1/nothing"), 401)
    await expect_error(await guarded_api.get("/nothing"), 404)


async def test_an_open_api_on_a_public_address_is_warned_about(
    redis_client: aioredis.Redis,
    redis_url: str,
    make_settings: Callable[..., Settings],
    aiohttp_client: AiohttpClient,
) -> None:
    with capture_logs() as logs:
        await aiohttp_client(create_app(make_settings(GENRELAY_HOST="0.0.0.0"), redis_url))
        await aiohttp_client(create_app(make_settings(GENRELAY_HOST="::1"), redis_url))
        guarded = make_settings(GENRELAY_HOST="0.0.0.0", GENRELAY_API_TOKENS=TOKENS[0])
        await aiohttp_client(create_app(guarded, redis_url))
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["host"] for e in warnings] == ["0.0.0.0"]
    assert "GENRELAY_API_TOKENS" in warnings[0]["event"]


# -- probes ---------------------------------------------------------------------------------------


async def test_healthz_and_readyz_answer_200(api: Client) -> None:
    resp = await api.get("/healthz")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    resp = await api.get("/readyz")
    assert (resp.status, await resp.json()) == (200, {"status": "ready"})


async def test_readyz_is_503_once_the_accounts_are_gone_from_redis(
    api: Client, redis_client: aioredis.Redis
) -> None:
    await redis_client.delete(keys.provider_keys("ltx").accounts)
    resp = await api.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body == {
        "error": "not ready: accounts of ltx are not loaded",
        "code": 503,
        "missing": ["accounts of ltx are not loaded"],
    }
    assert (await api.get("/healthz")).status == 200


async def test_readyz_loads_the_scripts_again_after_redis_lost_them(
    api: Client, redis_client: aioredis.Redis
) -> None:
    """Redis forgets scripts on restart; readiness reloads them instead of staying unready."""
    sha = services_of(api).scripts.create_job.sha
    await redis_client.script_flush()
    assert await redis_client.script_exists(sha) == [False]
    assert (await api.get("/readyz")).status == 200
    assert await redis_client.script_exists(sha) == [True]


# -- access log -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/callbacks/ltx/s3cr3t-t0ken?sig=abc", "/callbacks/ltx/***"),
        ("/callbacks/ltx/s3cr3t%2Ft0ken/x", "/callbacks/ltx/***"),
        ("/v1/jobs?status=queued&sig=abc", "/v1/jobs"),
    ],
)
def test_the_access_log_never_shows_a_callback_token_or_the_query(target: str, logged: str) -> None:
    request = make_mocked_request("POST", target)
    with capture_logs() as logs:
        AccessLogger(None, "").log(request, web.Response(status=204), 0.0123)  # type: ignore[arg-type]
    [entry] = logs
    assert (entry["method"], entry["path"], entry["status"], entry["duration_ms"]) == (
        "POST",
        logged,
        204,
        12.3,
    )
    assert "s3cr3t" not in repr(entry) and "t0ken" not in repr(entry) and "sig=" not in repr(entry)


# -- the server loop ------------------------------------------------------------------------------


async def start_serving(
    settings: Settings, redis_url: str, stop: asyncio.Event | None
) -> tuple[str, asyncio.Task[None]]:
    """Run serve() on a free port; returns its base URL and task once it listens."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(dataclasses.replace(settings, port=0), redis_url, on_ready=ready.set_result, stop=stop)
    )
    either: set[asyncio.Future[Any]] = {ready, task}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    assert ready.done(), task.exception()
    return ready.result(), task


async def test_serve_answers_until_stopped_then_refuses_connections(
    redis_client: aioredis.Redis, redis_url: str, settings: Settings
) -> None:
    stop = asyncio.Event()
    url, task = await start_serving(settings, redis_url, stop)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/jobs") as resp:
            assert resp.status == 200
        stop.set()
        await task
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(f"{url}/healthz")


async def test_serve_stops_gracefully_on_sigterm(
    redis_client: aioredis.Redis, redis_url: str, settings: Settings
) -> None:
    url, task = await start_serving(settings, redis_url, stop=None)
    os.kill(os.getpid(), signal.SIGTERM)
    await task
    assert task.exception() is None
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
