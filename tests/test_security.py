"""The trust boundaries, tried as an attacker on loopback would, against a real ``genrelay web`` process
(and real workers where the Redis queue is the way in) on the real embedded redis-server.

- job identity: a callback naming another provider job (useapi, vydra), or reaching a job that was never
  submitted, gets 409 and changes nothing;
- the Host check of the open API (421), the request-head and keep-alive timeouts;
- inputs that used to give a 500: deep params, ``progress: 1e308``, non-ASCII tokens, deep pages,
  job ids with a trailing newline, ``replyUrl`` that can never be delivered, non-http artifact links;
  and a hypothesis run over callback bodies and job requests (no 5xx, no change on a refusal);
- the Redis queue: a malformed enqueue ends as a failed job, forged internal tasks do nothing.

The embedded Redis's own lock-down (socket and file modes, TCP password, CONFIG) is in
tests/test_embedded_redis.py.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import keys
from daemon.client import accept_payload, arq_payload, enqueue
from daemon.jobs import JobRequest, State, Update
from daemon.redis_connection import connect
from daemon.services import Services, open_services
from daemon.task_guard import REFUSED_KEY
from tests.conftest import Emulator, process_env
from tests.harness.processes import DaemonProcess, ProcessGroup

pytestmark = pytest.mark.timeout(120)

USEAPI = "ltxstudio/me@example.com"
VYDRA = "vydra/v1"
PUBLIC_URL = "https://relay.example.com"
ARTIFACT = {"assetUrl": "https://storage.example/v.mp4", "expirationDateString": "1748919477350"}
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
TIMEOUT_S = 1  # head and keep-alive timeouts of the web process


class Stack:
    """Services in this process and a ``genrelay web`` process on the same Redis and secret."""

    def __init__(self, services: Services, web: DaemonProcess) -> None:
        self.services = services
        self.web = web

    @property
    def url(self) -> str:
        return self.web.address or ""

    async def job(self, provider: str, *, submitted: bool = True, n: int = 0) -> str:
        operation = "videos/ltx-create" if provider == "ltxstudio" else "generate_video"
        request = JobRequest.from_json({"provider": provider, "operation": operation, "params": {"p": n}})
        job_id = (await self.services.store.create(request)).job_id
        if submitted:
            assert (await self.services.store.claim_submit(job_id)).outcome == "go"
            update = Update(State.ACTIVE, provider_job_id=f"{provider}-pid-{n}")
            assert await self.services.store.apply(job_id, update, source="submit") == "applied"
        return job_id

    async def end(self, job_id: str) -> None:
        """End the job (its slot is free for the next example)."""
        update = Update(State.FAILED, message="test over", error_type="failed")
        await self.services.store.apply(job_id, update, source="sweep")

    def callback_url(self, provider: str, job_id: str) -> str:
        token = self.services.callback_tokens().issue(provider, job_id)
        query = f"?ref={job_id}" if provider == "vydra" else ""
        return f"{self.url}/callbacks/{provider}/{token}{query}"

    async def record(self, job_id: str) -> dict[str, str]:
        fields: dict[str, str] = await self.services.client.hgetall(keys.job_key(job_id))
        return fields


async def start_stack(
    tmp_path: Path, redis_url: str, daemon_processes: ProcessGroup, open_daemon, make_settings, **extra: str
) -> Stack:  # type: ignore[no-untyped-def]
    env = {
        "GENRELAY_PUBLIC_URL": PUBLIC_URL,
        "GENRELAY_HEAD_TIMEOUT": str(TIMEOUT_S),
        "GENRELAY_KEEPALIVE_TIMEOUT": str(TIMEOUT_S),
        **extra,
    }
    accounts = {USEAPI: 4, VYDRA: 4}
    services: Services = await open_daemon(make_settings(accounts=accounts, **env))
    web = await daemon_processes.web(process_env(tmp_path, redis_url, "http://127.0.0.1:9", accounts, **env))
    return Stack(services, web)


@pytest.fixture
async def stack(
    tmp_path: Path, redis_url: str, daemon_processes: ProcessGroup, open_daemon, make_settings
) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    yield await start_stack(tmp_path, redis_url, daemon_processes, open_daemon, make_settings)


def completed_body(provider: str, job_id: str, provider_job_id: str) -> dict[str, Any]:
    if provider == "vydra":
        return {"jobId": provider_job_id, "status": "completed", "videoUrl": "https://cdn.example/x.mp4"}
    return {
        "jobId": provider_job_id,
        "replyRef": job_id,
        "status": {"type": "completed", "progress": 100, "artifact": ARTIFACT},
    }


JSON = {"Content-Type": "application/json"}


async def post(url: str, body: object, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, data=json.dumps(body), headers={"Content-Type": "application/json", **headers}
        ) as r:
            return r.status, await r.json(content_type=None)


# --- job identity -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("confirm", ["0", "1"])
@pytest.mark.parametrize("provider", ["ltxstudio", "vydra"])
async def test_a_callback_naming_another_provider_job_is_refused_and_changes_nothing(
    tmp_path: Path, redis_url: str, daemon_processes, open_daemon, make_settings, provider: str, confirm: str
) -> None:
    s = await start_stack(
        tmp_path, redis_url, daemon_processes, open_daemon, make_settings, GENRELAY_CALLBACK_CONFIRM=confirm
    )
    victim = await s.job(provider, n=1)
    other = await s.job(provider, n=2)
    before = (await s.record(victim), await s.record(other))
    # On the victim's callback URL, the other job's provider id (the attack of the issue).
    status, answer = await post(
        s.callback_url(provider, victim), completed_body(provider, victim, f"{provider}-pid-2")
    )
    assert status == 409 and answer["code"] == 409 and "another provider job" in answer["error"]
    assert (await s.record(victim), await s.record(other)) == before
    assert await s.services.client.zcard(keys.asset_index_key(provider)) == 0
    # Logged with the job id.
    refused = [line for line in s.web.lines if "callback refused" in line]
    assert refused and victim in refused[0]
    # The job's own provider id still works.
    status, _ = await post(
        s.callback_url(provider, victim), completed_body(provider, victim, f"{provider}-pid-1")
    )
    assert status == 200
    assert (await s.record(victim))["provider_job_id"] == f"{provider}-pid-1"


@pytest.mark.parametrize("provider", ["ltxstudio", "vydra"])
async def test_a_queued_job_ignores_callbacks(stack: Stack, provider: str) -> None:
    job_id = await stack.job(provider, submitted=False)
    before = await stack.record(job_id)
    running: dict[str, Any] = (
        {"jobId": "x", "status": "running", "progress": 5}
        if provider == "vydra"
        else {"jobId": "x", "replyRef": job_id, "status": {"type": "active", "progress": 5}}
    )
    for body in (
        completed_body(provider, job_id, "anything"),
        running,
    ):
        status, answer = await post(stack.callback_url(provider, job_id), body)
        assert status == 409 and "never submitted" in answer["error"]
    after = await stack.record(job_id)
    assert after == before and after["state"] == "queued" and "provider_job_id" not in after


# --- HTTP: Host check, head and keep-alive timeouts -------------------------------------------------------


async def test_the_open_api_answers_only_loopback_names_and_the_public_host(stack: Stack) -> None:
    port = urlsplit(stack.url).port
    async with aiohttp.ClientSession() as http:
        for host, expected in (
            (f"127.0.0.1:{port}", 200),
            (f"localhost:{port}", 200),
            (f"[::1]:{port}", 200),
            ("relay.example.com", 200),
            ("rebound.attacker.example", 421),
            (f"rebound.attacker.example:{port}", 421),
            ("", 421),
        ):
            async with http.get(f"{stack.url}/v1/jobs", headers={"Host": host}) as resp:
                assert resp.status == expected, host
                if expected == 421:
                    body = await resp.json()
                    assert body["code"] == 421 and "GENRELAY_API_TOKENS" in body["error"]
        # Probes (orchestrators use the pod's address) and the token-authenticated callbacks pass.
        async with http.get(f"{stack.url}/healthz", headers={"Host": "10.1.2.3:8080"}) as resp:
            assert resp.status == 200


async def closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (the safety bound is the test's)."""
    received = b""
    async with asyncio.timeout(30):
        while chunk := await reader.read(65536):
            received += chunk
    return received


async def test_a_request_head_that_never_ends_is_cut(stack: Stack) -> None:
    url = urlsplit(stack.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    await writer.drain()
    assert await closed(reader) == b""
    writer.close()
    # A connection that sends nothing at all is cut too.
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    assert await closed(reader) == b""
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed(stack: Stack) -> None:
    url = urlsplit(stack.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
    await writer.drain()
    answer = await closed(reader)
    assert answer.startswith(b"HTTP/1.1 200")
    writer.close()


# --- inputs that used to give a 500 ------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_limits_are_4xx_json_errors_and_write_nothing(stack: Stack) -> None:
    job_id = await stack.job("ltxstudio")
    before = await stack.record(job_id)
    jobs_before = await stack.services.client.zcard(keys.provider_keys("ltxstudio").index)
    base = {"provider": "ltxstudio", "operation": "videos/ltx-create"}
    async with aiohttp.ClientSession() as http:
        for body in (
            {**base, "params": nested(255)},
            {**base, "params": nested(40)},
            {**base, "params": {"n": 1e300}},
            {**base, "params": {}, "replyUrl": "http://2130706433/hook"},
            {**base, "params": {}, "replyUrl": "http://0x7f.1/hook"},
            {**base, "params": {}, "replyUrl": "http://127.0.0.1:9/hook"},
            {**base, "params": {}, "replyUrl": "http://10.0.0.8/hook"},
            {**base, "params": {}, "replyUrl": "http://localhost/hook"},
            {**base, "params": {}, "replyUrl": "javascript:alert(1)"},
        ):
            async with http.post(f"{stack.url}/v1/jobs", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 400 and answer["code"] == 400, (body, answer)
        for path in (
            "/v1/jobs?page=999999999",
            "/v1/jobs?page=999999999&provider=ltxstudio",
        ):
            async with http.get(f"{stack.url}{path}") as resp:
                assert resp.status == 200 and (await resp.json())["items"] == []
        async with http.get(f"{stack.url}/v1/jobs/{job_id}%0A") as resp:
            assert resp.status == 404 and (await resp.json())["code"] == 404
        async with http.post(f"{stack.url}/callbacks/ltxstudio/é{'x' * 10}", json={}) as resp:
            assert resp.status == 404 and (await resp.json())["code"] == 404
    huge = {
        "jobId": before["provider_job_id"],
        "replyRef": job_id,
        "status": {"type": "active", "progress": 1e308},
    }
    status, answer = await post(stack.callback_url("ltxstudio", job_id), huge)
    assert status == 400 and answer["code"] == 400
    status, _ = await post(
        stack.callback_url("ltxstudio", job_id),
        {**huge, "status": {"type": "active", "progress": 1e15}},  # in range, clamped to 100 at most
    )
    assert status == 200 and int((await stack.record(job_id))["progress"]) <= 100
    before = await stack.record(job_id)
    link = {**ARTIFACT, "assetUrl": "javascript:alert(1)"}
    status, answer = await post(
        stack.callback_url("ltxstudio", job_id),
        {
            "jobId": before["provider_job_id"],
            "replyRef": job_id,
            "status": {"type": "completed", "artifact": link},
        },
    )
    assert status == 400 and "http" in answer["error"]
    assert await stack.record(job_id) == before
    assert await stack.services.client.zcard(keys.provider_keys("ltxstudio").index) == jobs_before
    assert not any('"level": "error"' in line or "Traceback" in line for line in stack.web.lines)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=20,
)
deep = st.integers(1, 300).map(nested)
callback_bodies = st.fixed_dictionaries(
    {},
    optional={
        "jobId": st.one_of(
            st.just("ltxstudio-pid-0"), st.just("vydra-pid-0"), st.text(max_size=10), json_values
        ),
        "replyRef": json_values,
        "status": st.one_of(
            st.sampled_from(["completed", "failed", "running", "queued"]),
            st.fixed_dictionaries(
                {},
                optional={
                    "type": st.sampled_from(["active", "completed", "failed", "other"]),
                    "progress": st.one_of(
                        st.floats(allow_nan=False, allow_infinity=False), st.integers(), json_values
                    ),
                    "artifact": st.one_of(
                        json_values, st.fixed_dictionaries({"assetUrl": st.text(max_size=30)})
                    ),
                },
            ),
            json_values,
        ),
        "progress": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers()),
        "videoUrl": st.text(max_size=30),
        "deep": deep,
    },
)
job_requests = st.fixed_dictionaries(
    {},
    optional={
        "provider": st.sampled_from(["ltxstudio", "vydra", "nope"]),
        "operation": st.sampled_from(["videos/ltx-create", "generate_video", "x"]),
        "params": st.one_of(json_values, deep),
        "replyUrl": st.one_of(
            st.sampled_from(["http://2130706433/", "https://app.example/hook", "http://[::1]/", "ftp://x/"]),
            st.text(max_size=20),
        ),
        "priority": json_values,
        "requestId": json_values,
    },
)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=callback_bodies, provider=st.sampled_from(["ltxstudio", "vydra"]), submitted=st.booleans())
async def test_no_callback_body_gives_a_5xx_and_a_refusal_changes_nothing(
    stack: Stack, body: dict[str, Any], provider: str, submitted: bool
) -> None:
    job_id = await stack.job(provider, submitted=submitted, n=0)
    if provider == "ltxstudio" and "replyRef" not in body:
        body = {**body, "replyRef": job_id}
    before = await stack.record(job_id)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                stack.callback_url(provider, job_id), data=json.dumps(body), headers=JSON
            ) as resp:
                assert resp.status < 500, await resp.text()
                if resp.status >= 400:
                    assert (await resp.json())["code"] == resp.status
                    assert await stack.record(job_id) == before
        if not submitted:
            assert await stack.record(job_id) == before  # a queued job ignores every callback
    finally:
        await stack.end(job_id)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=job_requests)
async def test_no_job_request_gives_a_5xx_and_a_refusal_writes_nothing(
    stack: Stack, body: dict[str, Any]
) -> None:
    index = keys.provider_keys(
        body.get("provider") if body.get("provider") in ("ltxstudio", "vydra") else "ltxstudio"
    ).index
    count = await stack.services.client.zcard(index)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.url}/v1/jobs", data=json.dumps(body), headers=JSON) as resp:
            assert resp.status < 500, await resp.text()
            if resp.status >= 400:
                assert (await resp.json())["code"] == resp.status
                assert await stack.services.client.zcard(index) == count


# --- the Redis queue ----------------------------------------------------------------------------------------


@pytest.fixture
async def workers(
    tmp_path: Path, redis_url: str, emulator: Emulator, daemon_processes, open_daemon, make_settings
) -> AsyncIterator[tuple[Services, DaemonProcess]]:  # type: ignore[no-untyped-def]
    accounts = {"a1": 2}
    services: Services = await open_daemon(make_settings(emulator.url, accounts=accounts))
    worker = await daemon_processes.worker(process_env(tmp_path, redis_url, emulator.url, accounts))
    yield services, worker


async def logged(process: DaemonProcess, *texts: str, count: int = 1) -> list[str]:
    """The first ``count`` output lines holding every one of ``texts`` (waits for them)."""
    found: list[str] = []
    after = 0
    while len(found) < count:
        try:
            line = await process.wait_for_line(texts[0], after=after)
        except TimeoutError:
            raise AssertionError(f"no line with {texts} in:\n{process.text()[-4000:]}") from None
        after = process.lines.index(line, after) + 1
        if all(text in line for text in texts):
            found.append(line)
    return found


async def finished_by_arq(client: aioredis.Redis, arq_job_id: str) -> None:
    """Wait until the worker has removed the task (queue entry and payload; it logs the task's end
    after that, but a payload written before then would be deleted by it)."""
    for _ in range(1000):  # 10 s at most
        if not await client.exists(keys.ARQ_JOB_PREFIX + arq_job_id) and (
            await client.zscore(keys.ARQ_QUEUE, arq_job_id) is None
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"arq never finished {arq_job_id}")


def ltx_id() -> str:
    return f"ltx-{uuid.uuid4().hex}"


async def test_a_malformed_enqueue_ends_as_a_failed_job(workers: tuple[Services, DaemonProcess]) -> None:
    services, worker = workers
    client: aioredis.Redis = services.client
    now = int(time.time() * 1000)
    unreadable, deep_params, wrong_args = ltx_id(), ltx_id(), ltx_id()
    request = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "x"}}
    deep = {
        "t": 1,
        "f": "accept_job",
        "a": [deep_params, {**request, "params": nested(300)}],
        "k": {},
        "et": now,
    }
    deep_request = json.dumps(deep).encode()  # orjson itself refuses to write 300 levels
    await enqueue(client, f"accept:{unreadable}", b"{this is not json", now)
    await enqueue(client, f"accept:{deep_params}", deep_request, now)
    await enqueue(client, f"accept:{wrong_args}", arq_payload("accept_job", [wrong_args], now), now)
    # No job id anywhere: counted and logged.
    await enqueue(client, "accept:not-a-job-id", b"[]", now)
    for job_id in (unreadable, deep_params, wrong_args):
        await logged(worker, "job rejected", job_id)
        record = await client.hgetall(keys.job_key(job_id))
        assert record["state"] == "failed" and record["message"].startswith("invalid request:"), record
    await logged(worker, "task refused", "accept:not-a-job-id")
    assert int(await client.hget(REFUSED_KEY, "accept_job") or 0) == 1


async def test_a_rejection_never_overwrites_an_existing_job(workers: tuple[Services, DaemonProcess]) -> None:
    services, worker = workers
    client = services.client
    now = int(time.time() * 1000)
    job_id = ltx_id()
    request = {
        "provider": "ltx",
        "operation": "text-to-video",
        "params": {"prompt": "a lighthouse [ok]", **T2V},
    }
    await enqueue(client, f"accept:{job_id}", accept_payload(job_id, request, now), now)
    await logged(worker, "task done", f"accept:{job_id}")  # the worker ran the first entry...
    await finished_by_arq(client, f"accept:{job_id}")  # ...and has cleared its keys
    # The same id again with garbage: the job is left alone.
    await client.set(f"{keys.ARQ_JOB_PREFIX}accept:{job_id}", b"{garbage", px=60_000)
    await client.zadd(keys.ARQ_QUEUE, {f"accept:{job_id}": now})
    assert '"exists"' in (await logged(worker, "job rejected", job_id))[0]
    assert await client.hget(keys.job_key(job_id), "error_type") != "invalid_request"


async def test_forged_internal_tasks_through_redis_do_nothing(
    workers: tuple[Services, DaemonProcess],
) -> None:
    services, worker = workers
    client = services.client
    now = int(time.time() * 1000)
    # A running job, its provider id known.
    request = JobRequest.from_json(
        {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "a lighthouse [ok]", **T2V}}
    )
    victim = (await services.store.create(request)).job_id
    await logged(worker, "job active", victim)
    record = await client.hgetall(keys.job_key(victim))
    forgeries = {
        # Under the app's own prefix, naming internal tasks.
        f"accept:{victim}": arq_payload("cancel_at_provider", [victim], now),
        f"accept:{ltx_id()}": arq_payload("deliver_job", [victim, 1], now),
        # Under internal prefixes, with arguments genrelay never scheduled.
        f"cancel:{victim}": arq_payload("cancel_at_provider", [victim], now),
        f"deliver:{victim}:999": arq_payload("deliver_job", [victim, 999], now),
        f"submit:{victim}:x": arq_payload("submit_job", [victim], now),
        "anything": arq_payload("submit_job", [victim], now),
        "dispatch:nope:1": arq_payload("dispatch_waiting", ["nope"], now),
    }
    for arq_id, payload in forgeries.items():
        await enqueue(client, arq_id, payload, now)
    await logged(worker, "task refused", count=len(forgeries) - 1)  # submit:<victim>:x reaches the claim
    after = await client.hgetall(keys.job_key(victim))
    assert after.get("cancel_note") is None
    assert after["provider_job_id"] == record["provider_job_id"]
    assert after.get("ended_by") != "cancel" and after["state"] != "canceled"
    refused = await client.hgetall(REFUSED_KEY)
    assert int(refused["cancel_at_provider"]) == 2 and int(refused["deliver_job"]) == 2
    assert int(refused["submit_job"]) == 1 and int(refused["dispatch_waiting"]) == 1


# --- secrets at rest ----------------------------------------------------------------------------------------


async def test_redis_holds_no_secret_and_an_external_redis_needs_one(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, make_settings
) -> None:  # type: ignore[no-untyped-def]
    from daemon.callback_tokens import key_id
    from daemon.embedded_redis import EmbeddedRedis
    from daemon.errors import SettingsError
    from daemon.secret_store import VERIFIER_KEY, verifier

    # An external Redis (any URL that is not the embedded server's socket) and no GENRELAY_SECRET:
    # start-up says what to set. The TCP URL of an embedded server counts as external.
    with EmbeddedRedis(tmp_path / "redis", port=0, appendonly=False) as server:
        settings = make_settings(GENRELAY_SECRET="")
        with pytest.raises(SettingsError, match="GENRELAY_SECRET is required with an external Redis"):
            await open_services(settings, server.tcp_url)
        # The embedded server's own socket: the secret is generated into its data dir, 0600, and Redis
        # keeps only a key id and a verifier. A value kept by an earlier version is moved, then deleted.
        client = await connect(server.url)
        try:
            await client.set(keys.SECRET, "legacy-secret-value")
            services = await open_services(settings, server.url)
            await services.close()
            secret_file = tmp_path / "redis" / "secret"
            assert services.secret == "legacy-secret-value" == secret_file.read_text()
            assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
            assert await client.get(keys.SECRET) is None
            assert await client.get(VERIFIER_KEY) == verifier(services.secret)
            assert key_id(services.secret) in verifier(services.secret)
            values = [await client.dump(key) for key in await client.keys("*")]
            assert not [value for value in values if value and services.secret.encode() in value]
            # A second process finds the same secret without configuration.
            again = await open_services(settings, server.url)
            await again.close()
            assert again.secret == services.secret
        finally:
            await client.aclose()


async def test_a_process_with_another_secret_is_told(open_daemon, make_settings, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    from structlog.testing import capture_logs

    await open_daemon(make_settings(GENRELAY_SECRET="the-first-secret-value"))
    with capture_logs() as logs:
        rotated = await open_services(
            make_settings(
                GENRELAY_SECRET="the-next-secret-value", GENRELAY_SECRET_PREVIOUS="the-first-secret-value"
            ),
            redis_url,
        )
        await rotated.close()
        stray = await open_services(make_settings(GENRELAY_SECRET="a-stray-secret-value"), redis_url)
        await stray.close()
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1 and "differs" in errors[0]["event"]
    assert "a-stray-secret-value" not in repr(logs) and "the-next-secret-value" not in repr(logs)
