"""The capacity mirror of Kling, MiniMax and PixVerse end to end, with a worker and the emulator over
HTTP: a submit whose answer was lost is adopted by its replyRef from ``scheduler/available`` (never
sent twice), also where the ``executing[]`` entry names no account (MiniMax, PixVerse: placed by
the account its id embeds, or, with ids that embed none, by our job record); MiniMax's 502/504
that still accepted the job is reconciled the same way, and one that did not is sent again once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.client import Client
from daemon.jobs import JobRequest
from daemon.services import Services
from emulator.config import EmulatorConfig
from tests.conftest import USEAPI_TOKEN, Emulator
from tests.harness import slots as slot_index

pytestmark = pytest.mark.timeout(90)

ACCOUNTS = {
    "kling": ("k1@example.com", "k2@example.com"),
    "minimax": ("300001", "300002"),
    "pixverse": ("p1@example.com", "p2@example.com"),
}
CREATE = {
    "kling": ("/v1/kling", "videos/text2video"),
    "minimax": ("/v1/minimax", "videos/create"),
    "pixverse": ("/v2/pixverse", "videos/create"),
}
MAX_JOBS = 2


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        useapi_services={s: {USEAPI_TOKEN: dict.fromkeys(names, MAX_JOBS)} for s, names in ACCOUNTS.items()},
        job_seconds=0.3,
    )


async def until(check: Callable[[], Awaitable[Any]], seconds: float = 30) -> Any:
    async with asyncio.timeout(seconds):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.05)


async def start(service: str, make_settings, open_daemon, start_worker, emulator: Emulator) -> Services:  # type: ignore[no-untyped-def]
    accounts = {f"{service}/{name}": MAX_JOBS for name in ACCOUNTS[service]}
    env = {"GENRELAY_CAPACITY_SYNC_INTERVAL": "0.2", "GENRELAY_RECONCILE_GRACE": "0.5"}
    settings = make_settings(emulator.url, accounts, **env)
    services: Services = await open_daemon(settings)
    await start_worker(settings)
    return services


async def submit(services: Services, service: str, prompt: str, account: str | None = None) -> str:
    operation = CREATE[service][1]
    created = await services.store.create(JobRequest(service, operation, {"prompt": prompt}, account=account))
    return created.job_id


async def by_ref(emulator: Emulator, service: str) -> dict[str, int]:
    stats: dict[str, Any] = await emulator.stats()
    return dict(stats["useapi_services"][service]["submissions_by_ref"])


async def reconcile_events(client: aioredis.Redis, service: str, job_id: str) -> list[str]:
    events = [fields for _, fields in await client.xrange(keys.events_key(service))]
    return [e["state"] for e in events if e["job"] == job_id and e["source"] == "reconcile"]


@pytest.mark.parametrize(
    ("service", "opaque"),
    [("kling", False), ("minimax", False), ("pixverse", False), ("minimax", True), ("pixverse", True)],
)
async def test_a_lost_submit_answer_is_adopted_by_replyref(
    redis_client: aioredis.Redis,
    emulator: Emulator,
    open_daemon,
    make_settings,
    start_worker,
    service: str,
    opaque: bool,
) -> None:
    await emulator.configure(useapi_opaque_ids=opaque)
    services = await start(service, make_settings, open_daemon, start_worker, emulator)
    prefix, operation = CREATE[service]
    # The emulator accepts the next create and drops the connection: no answer, no id.
    await emulator.fault(method="POST", path_prefix=f"{prefix}/{operation}", accept_then_drop=True, count=1)
    second = ACCOUNTS[service][1]
    dropped = await submit(services, service, "[seconds=2] the answer is lost", account=second)
    headers = {"Authorization": f"Bearer {USEAPI_TOKEN}"}

    async def listed() -> list[dict[str, Any]]:
        async with emulator.session.get(f"{emulator.url}{prefix}/scheduler/available", headers=headers) as r:
            return [e for e in (await r.json())["executing"] if e.get("replyRef") == dropped]

    entries = await until(listed, 10)
    if service != "kling":
        assert all("email" not in e and "account" not in e for e in entries), entries
    ours = [await submit(services, service, f"[seconds=0.3] ours {n}") for n in range(3)]
    async with asyncio.timeout(60):
        done = [await Client(redis_client).wait(job_id) for job_id in [dropped, *ours]]
    assert [job["status"]["type"] for job in done] == ["completed"] * 4, done
    assert done[0]["account"] == second  # adopted on the account it ran on, not another one
    refs = await by_ref(emulator, service)
    assert {job_id: refs.get(job_id) for job_id in [dropped, *ours]} == dict.fromkeys([dropped, *ours], 1)
    assert await reconcile_events(redis_client, service, dropped) == ["active"]
    for name in ACCOUNTS[service]:
        assert await slot_index.lease_count(redis_client, service, name) == 0


async def test_minimax_502_that_accepted_the_job_is_adopted_not_resent(
    redis_client: aioredis.Redis, emulator: Emulator, open_daemon, make_settings, start_worker
) -> None:
    services = await start("minimax", make_settings, open_daemon, start_worker, emulator)
    await emulator.fault(
        method="POST", path_prefix="/v1/minimax/videos/create", status=502, accept_then_error=True
    )
    job_id = await submit(services, "minimax", "[seconds=1] a busy site")
    async with asyncio.timeout(60):
        job = await Client(redis_client).wait(job_id)
    assert job["status"]["type"] == "completed", job
    assert (await by_ref(emulator, "minimax"))[job_id] == 1
    assert await reconcile_events(redis_client, "minimax", job_id) == ["active"]


async def test_minimax_504_that_did_not_accept_the_job_is_sent_again_once(
    redis_client: aioredis.Redis, emulator: Emulator, open_daemon, make_settings, start_worker
) -> None:
    services = await start("minimax", make_settings, open_daemon, start_worker, emulator)
    await emulator.fault(method="POST", path_prefix="/v1/minimax/videos/create", status=504)
    job_id = await submit(services, "minimax", "[seconds=0.2] never queued")
    async with asyncio.timeout(60):
        job = await Client(redis_client).wait(job_id)
    assert job["status"]["type"] == "completed", job
    assert (await by_ref(emulator, "minimax"))[job_id] == 1
    record = await redis_client.hgetall(keys.job_key(job_id))
    assert record["submit_tries"] == "2"  # the uncertain try, and the one after the listing ruled it out
    assert await reconcile_events(redis_client, "minimax", job_id) == ["submitting"]
