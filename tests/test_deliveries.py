"""Telling the app: jobs run through the emulator end with a signed POST to the app's replyUrl, which
is retried, dead-lettered and replayed, and never sent to an address the URL guard refuses.

The app is a loopback aiohttp server that answers each request from a script and records it; the
worker runs in this event loop. Every wait is on something the app or Redis reports, under a bound.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook

from daemon import keys
from daemon.cli import main
from daemon.client import Client
from daemon.deliveries import (
    DeadLetter,
    Signer,
    dead_letters,
    derive_secret,
    message_id,
    show_secret,
    signing_secret,
)
from daemon.errors import SettingsError
from daemon.services import Services
from daemon.settings import Settings
from tests.conftest import Emulator, process_env

WAIT_S = 30
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


@dataclass(frozen=True)
class Received:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float  # monotonic


@dataclass
class AppServer:
    """The app: answers each request to a path from its script (the last answer repeats) and records
    every request, waking whoever waits for a count."""

    host: str = "127.0.0.1"
    scripts: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    server: TestServer | None = None

    def script(self, path: str, *answers: int | tuple[int, dict[str, str]]) -> None:
        self.scripts[path] = [a if isinstance(a, tuple) else (a, {}) for a in answers]

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"http://{self.host}:{self.server.port}{path}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        answers = self.scripts.get(request.path, [(200, {})])
        status, headers = answers.pop(0) if len(answers) > 1 else answers[0]
        async with self.arrived:
            self.received.append(
                Received(request.path, request.query_string, dict(request.headers), body, time.monotonic())
            )
            self.arrived.notify_all()
        return web.Response(status=status, headers=headers, text="ok")

    async def wait_for(self, count: int) -> list[Received]:
        async with asyncio.timeout(WAIT_S), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)
        return list(self.received)


async def serve(app_server: AppServer) -> AppServer:
    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", app_server.handle)
    app_server.server = TestServer(application, host=app_server.host)
    await app_server.server.start_server()
    return app_server


@pytest.fixture
async def app_server() -> AsyncIterator[AppServer]:
    server = await serve(AppServer())
    try:
        yield server
    finally:
        assert server.server is not None
        await server.server.close()


@pytest.fixture
async def canary() -> AsyncIterator[AppServer]:
    """A server on another loopback address that a refused redirect would reach."""
    server = await serve(AppServer(host="127.0.0.2"))
    try:
        yield server
    finally:
        assert server.server is not None
        await server.server.close()


Start = Callable[..., Awaitable[tuple[Services, Settings]]]


@pytest.fixture
def start_daemon(emulator: Emulator, make_settings: Any, start_worker: Any, open_daemon: Any) -> Start:
    """Services and one in-process worker, on the emulator, with the extra GENRELAY_* env given."""

    async def start(**env: str) -> tuple[Services, Settings]:
        settings: Settings = make_settings(emulator.url, accounts={"a1": 2}, **env)
        services: Services = await open_daemon(settings)
        await start_worker(settings)
        return services, settings

    return start


async def submit(client: Client, reply_url: str, prompt: str = "a lighthouse [ok]") -> tuple[str, int]:
    """Run one job to its end; returns its id and the seq of its terminal transition (the delivery's)."""
    job_id = await client.submit(
        "ltx", "text-to-video", {"prompt": prompt, **T2V}, reply_url=reply_url, reply_ref="order-17"
    )
    async with asyncio.timeout(WAIT_S):
        await client.wait(job_id)
    seq = await client.redis.hget(keys.job_key(job_id), "seq")
    return job_id, int(seq)


class LogWatch:
    """A structlog processor that keeps every event and wakes whoever awaits one: the worker logs the
    outcome of each attempt after recording it, so awaiting the log line is awaiting the worker."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    def __call__(self, logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
        self.entries.append(event)
        self.changed.set()
        raise structlog.DropEvent

    async def attempt(self, job_id: str, outcome: str) -> dict[str, Any]:
        """The worker's ``delivery attempt`` line for ``job_id`` with ``outcome``, once logged."""
        async with asyncio.timeout(WAIT_S):
            while True:
                self.changed.clear()
                for entry in self.entries:
                    if entry.get("job_id") == job_id and entry.get("outcome") == outcome:
                        return entry
                await self.changed.wait()

    def attempts(self) -> list[dict[str, Any]]:
        return [entry for entry in self.entries if entry["event"] == "delivery attempt"]


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    """Route structlog to a :class:`LogWatch` for the test (the way ``capture_logs`` does)."""
    watch = LogWatch()
    processors = structlog.get_config()["processors"]
    saved = processors.copy()
    processors[:] = [watch]
    structlog.configure(processors=processors)
    try:
        yield watch
    finally:
        processors[:] = saved
        structlog.configure(processors=processors)


async def dead_letter_of(logs: LogWatch, redis_client: aioredis.Redis, job_id: str) -> DeadLetter:
    """The job's dead letter, once the worker has written it (it logs that right after)."""
    await logs.attempt(job_id, "dead_letter")
    (letter,) = await dead_letters(redis_client, job_id)
    return letter


async def genrelay(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """``python -m daemon ARGS`` without blocking the loop that runs the app and the worker."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# --- signing and settings ----------------------------------------------------------------------------


def test_the_derived_secret_is_stable_and_a_valid_whsec(make_settings: Any) -> None:
    """Every process derives the same whsec_ secret from the shared one; the setting overrides it."""
    derived = derive_secret("shared")
    assert derived == derive_secret("shared") != derive_secret("other")
    assert derived.startswith("whsec_") and len(Signer.from_secret(derived).key) == 32
    own = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert signing_secret(make_settings(GENRELAY_DELIVERY_SECRET=own), "shared") == own
    assert signing_secret(make_settings(), "shared") == derived
    headers = Signer.from_secret(derived).headers("msg_1", b'{"a":1}')
    assert Webhook(derived).verify(b'{"a":1}', headers) == {"a": 1}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GENRELAY_DELIVERY_SECRET", "not-a-whsec-secret-value"),
        ("GENRELAY_DELIVERY_SECRET", "whsec_dG9vc2hvcnQ="),
        ("GENRELAY_DELIVERY_ALLOW_PRIVATE", "10.0.0.0/8,intranet"),
        ("GENRELAY_DELIVERY_MAX_TRIES", "0"),
    ],
)
def test_bad_delivery_settings_are_named_and_secrets_not_echoed(
    make_settings: Any, variable: str, value: str
) -> None:
    """A malformed delivery setting stops the start with its name; a bad secret is never quoted."""
    with pytest.raises(SettingsError, match=variable) as error:
        make_settings(**{variable: value})
    if variable == "GENRELAY_DELIVERY_SECRET":
        assert value not in str(error.value)


async def test_the_secret_command_needs_no_redis_when_a_secret_is_configured(make_settings: Any) -> None:
    """With GENRELAY_DELIVERY_SECRET (or GENRELAY_SECRET) set, the printed secret comes from settings."""
    own = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

    def no_redis() -> str:
        raise AssertionError("Redis was asked for the secret")

    assert await show_secret(make_settings(GENRELAY_DELIVERY_SECRET=own), no_redis) == own
    from_shared = await show_secret(make_settings(GENRELAY_SECRET="shared-secret-value"), no_redis)
    assert from_shared == derive_secret("shared-secret-value")


@pytest.mark.parametrize("action", [[], ["list"], ["replay"], ["secret"]])
def test_every_deliveries_action_has_help(action: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`genrelay deliveries [ACTION] --help` describes the action and exits 0."""
    with pytest.raises(SystemExit) as exit_info:
        main(["deliveries", *action, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: genrelay {' '.join(['deliveries', *action])}")


@pytest.mark.parametrize("args", [["replay"], ["replay", "ltx-" + "0" * 32, "--all"]])
async def test_replay_needs_exactly_one_of_a_job_id_and_all(
    args: list[str], redis_url: str, tmp_path: Path
) -> None:
    """Replaying nothing, or both one job and all of them, is a usage error that says so."""
    env = process_env(tmp_path, redis_url, "http://127.0.0.1:9")
    code, _, err = await genrelay(env, "deliveries", *args)
    assert code == 2
    assert "needs a JOB_ID or --all" in err


# --- end to end ----------------------------------------------------------------------------------------


async def test_a_failing_app_is_retried_honouring_retry_after_then_gets_a_verifiable_delivery(
    start_daemon: Start,
    app_client: Client,
    app_server: AppServer,
    logs: LogWatch,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """500, then 429 with Retry-After: 1, then 200: three attempts at the same webhook-id, each signed
    so that the standardwebhooks library verifies it with the secret `genrelay deliveries secret`
    prints; the wait after the 429 is the app's, not our shorter backoff; logs show the host only."""
    services, settings = await start_daemon(GENRELAY_DELIVERY_ALLOW_PRIVATE="1")
    app_server.script("/hook", 500, (429, {"Retry-After": "1"}), 200)
    job_id, seq = await submit(app_client, app_server.url("/hook?token=app-capability"))
    first, second, third = await app_server.wait_for(3)
    await logs.attempt(job_id, "delivered")

    env = process_env(tmp_path, redis_url, "http://127.0.0.1:9")
    code, out, err = await genrelay(env, "deliveries", "secret")
    assert code == 0, err
    secret = out.strip()
    assert secret == signing_secret(settings, services.secret)
    for request in (first, second, third):
        assert request.headers["webhook-id"] == message_id(job_id, seq) == f"msg_{job_id}_{seq}"
        assert request.headers["Content-Type"] == "application/json"
        assert request.query == "token=app-capability"
        delivered = Webhook(secret).verify(request.body, request.headers)
        assert delivered["jobId"] == job_id and delivered["replyRef"] == "order-17"
        assert delivered["status"]["type"] == "completed"
    assert orjson.loads(third.body) == await app_client.get(job_id)

    attempts = logs.attempts()
    assert [a["outcome"] for a in attempts] == ["retry", "retry", "delivered"]
    assert [a["status"] for a in attempts] == [500, 429, 200]
    # The retry after the 429 was deferred by the app's Retry-After (1 s), not our backoff (<= 0.2 s).
    assert attempts[0]["delay_s"] <= 0.2 and attempts[1]["delay_s"] >= 1.0
    assert {a["host"] for a in attempts} == {"127.0.0.1"}
    assert "app-capability" not in repr(logs.entries)
    assert await dead_letters(services.client) == []
    assert not await services.client.exists(keys.delivery_tries_key(job_id, seq))


async def test_an_app_that_always_fails_ends_dead_and_a_replay_delivers_it(
    start_daemon: Start,
    logs: LogWatch,
    app_client: Client,
    app_server: AppServer,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """After GENRELAY_DELIVERY_MAX_TRIES failures the delivery is a dead letter; `genrelay deliveries`
    lists it, and once the app works, `genrelay deliveries replay JOB_ID` delivers the same message."""
    await start_daemon(GENRELAY_DELIVERY_ALLOW_PRIVATE="1", GENRELAY_DELIVERY_MAX_TRIES="3")
    app_server.script("/hook", 503)
    job_id, seq = await submit(app_client, app_server.url("/hook?token=app-capability"))
    await app_server.wait_for(3)
    letter = await dead_letter_of(logs, redis_client, job_id)
    assert (letter.seq, letter.tries, letter.status, letter.error) == (seq, 3, 503, "HTTP 503")
    assert len(app_server.received) == 3

    env = process_env(tmp_path, redis_url, "http://127.0.0.1:9")
    code, out, err = await genrelay(env, "deliveries")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["failed", "job", "seq", "tries", "status", "error", "url"]
    assert f"{job_id}  {seq}    3      503     HTTP 503  {app_server.url('/hook')}" in row
    assert "app-capability" not in out

    app_server.script("/hook", 200)
    code, _, err = await genrelay(env, "deliveries", "replay", job_id)
    assert code == 0, err
    replayed = (await app_server.wait_for(4))[3]
    assert replayed.headers["webhook-id"] == message_id(job_id, seq)
    assert orjson.loads(replayed.body)["jobId"] == job_id
    assert await dead_letters(redis_client) == []
    code, out, err = await genrelay(env, "deliveries")
    assert (code, out, err.strip()) == (0, "", "no dead deliveries")
    code, _, err = await genrelay(env, "deliveries", "replay", job_id)
    assert code == 1 and "no dead delivery for job" in err


async def test_a_private_address_is_refused_without_any_connection(
    start_daemon: Start,
    app_client: Client,
    app_server: AppServer,
    redis_client: aioredis.Redis,
) -> None:
    """Allow-private off: a loopback literal and the name localhost can never be delivered to, so the job
    is refused when it is submitted (a failed job with the guard's reason), not left for a dead letter;
    the app never sees a request."""
    await start_daemon()
    for url, reason in (
        (app_server.url("/hook"), "127.0.0.1 is a loopback address"),
        (app_server.url("/hook").replace("127.0.0.1", "localhost"), "localhost is a loopback name"),
    ):
        job_id = await app_client.submit(
            "ltx", "text-to-video", {"prompt": "x [ok]", **T2V}, reply_url=url, reply_ref="order-17"
        )
        async with asyncio.timeout(WAIT_S):
            job = await app_client.wait(job_id)
        assert job["status"]["type"] == "failed"
        assert reason in job["status"]["message"] and "can never be delivered" in job["status"]["message"]
    assert await redis_client.hlen(keys.DELIVERIES_DEAD) == 0
    assert app_server.received == []


async def test_redirects_are_followed_only_to_addresses_the_guard_allows(
    start_daemon: Start,
    logs: LogWatch,
    app_client: Client,
    app_server: AppServer,
    canary: AppServer,
    redis_client: aioredis.Redis,
) -> None:
    """Only 127.0.0.1 is allowed: a redirect on it is followed with the same signed POST; redirects
    to 127.0.0.2 or to the metadata address are refused before connecting (the canary is never hit);
    a redirect loop stops after 3 hops."""
    await start_daemon(GENRELAY_DELIVERY_ALLOW_PRIVATE="127.0.0.1/32", GENRELAY_DELIVERY_MAX_TRIES="1")
    app_server.script("/moved", (307, {"Location": "/final"}))
    app_server.script("/to-canary", (308, {"Location": canary.url("/steal")}))
    app_server.script("/to-metadata", (302, {"Location": "http://169.254.169.254/latest/meta-data/"}))
    app_server.script("/loop", (307, {"Location": "/loop"}))

    moved_job, _ = await submit(app_client, app_server.url("/moved"), "moved [ok]")
    moved, final = await app_server.wait_for(2)
    assert (moved.path, final.path) == ("/moved", "/final")
    assert final.body == moved.body
    assert final.headers["webhook-signature"] == moved.headers["webhook-signature"]

    canary_job, _ = await submit(app_client, app_server.url("/to-canary"), "canary [ok]")
    metadata_job, _ = await submit(app_client, app_server.url("/to-metadata"), "metadata [ok]")
    loop_job, _ = await submit(app_client, app_server.url("/loop"), "loop [ok]")
    assert (
        await dead_letter_of(logs, redis_client, canary_job)
    ).error == "refused: 127.0.0.2 is a loopback address"
    assert (await dead_letter_of(logs, redis_client, metadata_job)).error == (
        "refused: 169.254.169.254 is a link-local address"
    )
    assert (await dead_letter_of(logs, redis_client, loop_job)).error == "more than 3 redirects"
    assert canary.received == []
    assert [r.path for r in app_server.received].count("/loop") == 4
    assert await dead_letters(redis_client, moved_job) == []
