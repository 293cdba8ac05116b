"""Scenarios D38-D40 of docs/fault-scenarios.md (abuse of the HTTP receiver), against a real
``genrelay web`` process (aiohttp's C parser, the real access log).

- D38 slowloris: headers, then a byte a second of body: 408 with the error JSON at the body
  deadline (``GENRELAY_BODY_TIMEOUT``), while normal callbacks sent meanwhile all succeed.
- D39 200 headers, or one 16 KiB header line: 400 or 431, never a 5xx.
- D40 a direct client sending ``X-Forwarded-For``: the access log shows the peer address, not the
  claimed one (genrelay trusts no forwarding header; a proxy in front logs the client itself).

D29-D37 and D41-D42 are in tests/test_callbacks*.py and tests/test_openapi.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from daemon.jobs import JobRequest, State, Update
from daemon.services import Services
from tests.conftest import API_KEYS, USEAPI_TOKEN, process_env
from tests.harness.invariants import no_secrets_logged, no_server_errors
from tests.harness.processes import DaemonProcess, ProcessGroup

ACCOUNT = "ltxstudio/me@example.com"
ARTIFACT = {"assetUrl": "https://storage.example/v.mp4", "expirationDateString": "1748919477350"}
BODY_TIMEOUT_S = 1
PARALLEL_CALLBACKS = 4

pytestmark = pytest.mark.timeout(60)


async def start_web(
    tmp_path: Path, redis_url: str, daemon_processes: ProcessGroup, open_daemon, make_settings, max_jobs: int
) -> tuple[Services, DaemonProcess]:  # type: ignore[no-untyped-def]
    extra = {
        "GENRELAY_PUBLIC_URL": "https://relay.example.com",
        "GENRELAY_CALLBACK_CONFIRM": "0",
        "GENRELAY_BODY_TIMEOUT": str(BODY_TIMEOUT_S),
    }
    services: Services = await open_daemon(make_settings(accounts={ACCOUNT: max_jobs}, **extra))
    env = process_env(
        tmp_path,
        redis_url,
        "http://127.0.0.1:9",
        {ACCOUNT: max_jobs},
        **extra,
        GENRELAY_SECRET=services.secret,
    )
    return services, await daemon_processes.web(env)


async def active_job(services: Services, n: int) -> tuple[str, str]:
    """A job running at the provider, and its callback token."""
    request = JobRequest.from_json(
        {"provider": "ltxstudio", "operation": "videos/ltx-create", "params": {"prompt": f"p{n}"}}
    )
    job_id = (await services.store.create(request)).job_id
    assert (await services.store.claim_submit(job_id)).outcome == "go"
    await services.store.apply(job_id, Update(State.ACTIVE, provider_job_id=f"pj{n}"), source="submit")
    return job_id, services.callback_tokens().issue("ltxstudio", job_id)


async def raw_exchange(address: str, head: bytes, body_bytes: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """Send ``head``, then each of ``body_bytes`` a second apart until an answer comes; returns the
    answer once complete (aiohttp would otherwise linger reading the rest of the body)."""
    url = urlsplit(address)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head)
        await writer.drain()
        pending = list(body_bytes)
        answer = b""
        while True:
            try:
                # The pacing of a slow client: a byte, then a second for the server to answer.
                chunk = await asyncio.wait_for(reader.read(65536), 1.0)
            except TimeoutError:
                if pending:
                    writer.write(pending.pop(0))
                    await writer.drain()
                    continue
                if answer:
                    return answer
                raise AssertionError("the server neither answered nor closed the connection") from None
            if not chunk:
                return answer
            answer += chunk
            if complete(answer):
                return answer
    finally:
        writer.close()


def complete(answer: bytes) -> bool:
    """A whole response: its head and as many body bytes as its Content-Length says."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_d38_a_slowloris_body_gets_408_while_other_callbacks_succeed(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, daemon_processes, open_daemon, make_settings
) -> None:
    services, web = await start_web(
        tmp_path, redis_url, daemon_processes, open_daemon, make_settings, max_jobs=PARALLEL_CALLBACKS + 1
    )
    slow_job, slow_token = await active_job(services, 0)
    others = [await active_job(services, n) for n in range(1, PARALLEL_CALLBACKS + 1)]
    body = orjson.dumps(
        {"status": {"type": "completed", "progress": 100, "artifact": ARTIFACT}, "replyRef": slow_job}
    )
    head = (
        f"POST /callbacks/ltxstudio/{slow_token} HTTP/1.1\r\nHost: relay\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    slowloris = asyncio.create_task(
        raw_exchange(web.address or "", head, [body[i : i + 1] for i in range(len(body))])
    )
    async with aiohttp.ClientSession() as http:

        async def callback(job_id: str, token: str) -> int:
            sent = {
                "status": {"type": "completed", "progress": 100, "artifact": ARTIFACT},
                "replyRef": job_id,
            }
            async with http.post(f"{web.address}/callbacks/ltxstudio/{token}", json=sent) as resp:
                return resp.status

        statuses = await asyncio.gather(*(callback(job_id, token) for job_id, token in others))
    answer = await asyncio.wait_for(slowloris, 30)
    assert statuses == [200] * PARALLEL_CALLBACKS
    assert status_of(answer) == 408, answer
    error = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert error["code"] == 408 and "did not arrive" in error["error"], error
    # The trickled callback changed nothing; the others ended their jobs.
    assert (await services.store.require(slow_job)).state is State.ACTIVE
    assert [(await services.store.require(job_id)).state for job_id, _ in others] == [State.COMPLETED] * len(
        others
    )
    no_server_errors([*statuses, status_of(answer)], daemon_processes.logs())


@pytest.mark.parametrize(
    "extra_headers",
    [
        pytest.param("".join(f"X-Filler-{n}: {n}\r\n" for n in range(200)), id="200-headers"),
        pytest.param(f"X-Long: {'a' * 16 * 1024}\r\n", id="16KiB-header-line"),
    ],
)
async def test_d39_too_many_or_too_long_headers_get_400_or_431(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    daemon_processes,
    open_daemon,
    make_settings,
    extra_headers: str,
) -> None:
    _, web = await start_web(tmp_path, redis_url, daemon_processes, open_daemon, make_settings, max_jobs=1)
    head = f"GET /v1/jobs HTTP/1.1\r\nHost: relay\r\n{extra_headers}Connection: close\r\n\r\n".encode()
    answer = await raw_exchange(web.address or "", head)
    assert status_of(answer) in (400, 431), answer[:200]
    # The process is still serving.
    async with aiohttp.ClientSession() as http, http.get(f"{web.address}/healthz") as resp:
        assert resp.status == 200
    no_server_errors([status_of(answer)], daemon_processes.logs())


async def test_d40_a_spoofed_forwarded_for_is_not_logged_as_the_client(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, daemon_processes, open_daemon, make_settings
) -> None:
    _, web = await start_web(tmp_path, redis_url, daemon_processes, open_daemon, make_settings, max_jobs=1)
    spoofed = {"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7", "X-Real-IP": "203.0.113.7"}
    mark = len(web.lines)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{web.address}/v1/jobs?limit=1", headers=spoofed) as resp,
    ):
        assert resp.status == 200
    line = orjson.loads(await web.wait_for_line('"request"', after=mark))
    assert line["path"] == "/v1/jobs" and line["status"] == 200, line
    assert line["remote"] == "127.0.0.1", line
    assert "203.0.113.7" not in web.text()
    no_secrets_logged(daemon_processes.logs(), [*API_KEYS.values(), USEAPI_TOKEN])
