"""The capacity mirror end to end, with a worker and the emulator over HTTP: jobs started at the
provider outside genrelay occupy slots, a submit whose answer was lost is adopted by its replyRef
(never sent twice), a lease the provider forgot ends after one status read, a 429 with a local
slot free is handled and shows the foreign jobs (B19), and lost lease keys are rebuilt (B20)."""

from __future__ import annotations

import asyncio
import time
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

P = "ltxstudio"
ACCOUNT = "a@x"
MAX_JOBS = 3
CREATE = "/v1/ltxstudio/videos/ltx-create"

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(useapi_accounts={USEAPI_TOKEN: {ACCOUNT: MAX_JOBS}}, job_seconds=0.3)


async def start_outside(emulator: Emulator, prompt: str, ref: str | None = None) -> str:
    """A job started at the emulator by another client of the same account (not genrelay)."""
    body = {"email": ACCOUNT, "prompt": prompt, **({"replyRef": ref} if ref else {})}
    headers = {"Authorization": f"Bearer {USEAPI_TOKEN}"}
    async with emulator.session.post(f"{emulator.url}{CREATE}", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        job_id: str = (await resp.json())["jobId"]
        return job_id


async def until(check: Callable[[], Awaitable[Any]], seconds: float = 30) -> Any:
    """Poll ``check`` (Redis or emulator state) until it returns something truthy."""
    async with asyncio.timeout(seconds):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.05)


async def submit(services: Services, prompt: str) -> str:
    created = await services.store.create(JobRequest(P, "videos/ltx-create", {"prompt": prompt}))
    return created.job_id


async def account_stats(emulator: Emulator) -> dict[str, Any]:
    stats: dict[str, Any] = await emulator.stats()
    return dict(stats["useapi_accounts"][ACCOUNT])


async def submissions(emulator: Emulator) -> dict[str, int]:
    return dict((await emulator.stats())["submissions_by_ref"])  # type: ignore[call-overload]


async def events_of(client: aioredis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in await client.xrange(keys.events_key(P))]


def settings_env(**extra: str) -> dict[str, str]:
    return {"GENRELAY_CAPACITY_SYNC_INTERVAL": "0.2", "GENRELAY_RECONCILE_GRACE": "0.5", **extra}


async def test_foreign_jobs_take_slots_and_a_lost_submit_answer_is_adopted(
    redis_client: aioredis.Redis, emulator: Emulator, open_daemon, make_settings, start_worker
) -> None:
    settings = make_settings(emulator.url, {f"{P}/{ACCOUNT}": MAX_JOBS}, **settings_env())
    services: Services = await open_daemon(settings)
    await start_worker(settings)
    app = Client(redis_client)
    outside = [await start_outside(emulator, f"[seconds=4] theirs {n}") for n in range(2)]
    await until(lambda: redis_client.hget(keys.provider_keys(P).foreign, ACCOUNT))
    view = (await services.slots.capacity(P))["available"][0]
    assert view["foreign"] == len(outside) and view["available"] == MAX_JOBS - len(outside)

    # The provider accepts the next create and then drops the connection: no answer, no jobId.
    await emulator.fault(method="POST", path_prefix=CREATE, accept_then_drop=True, count=1)
    dropped = await submit(services, "[seconds=2] the answer is lost")
    ours = [await submit(services, f"[seconds=0.3] ours {n}") for n in range(4)]
    async with asyncio.timeout(60):
        done = [await app.wait(job_id) for job_id in [dropped, *ours]]
    assert [job["status"]["type"] for job in done] == ["completed"] * 5, done

    by_ref = await submissions(emulator)
    assert {job_id: by_ref.get(job_id) for job_id in [dropped, *ours]} == dict.fromkeys([dropped, *ours], 1)
    adopted = [e for e in await events_of(redis_client) if e["job"] == dropped and e["source"] == "reconcile"]
    assert [e["state"] for e in adopted] == ["active"]
    stats = await account_stats(emulator)
    # The foreign jobs' slots were never offered: genrelay ran at most one job beside them.
    assert stats["peak"] <= MAX_JOBS and stats["rejected_429"] == 0, stats
    assert await slot_index.lease_count(redis_client, P, ACCOUNT) == 0


async def test_a_lease_the_provider_forgot_ends_after_one_status_read(
    redis_client: aioredis.Redis, emulator: Emulator, open_daemon, make_settings, start_worker
) -> None:
    # Status reads every 30 s: only the reconcile makes one due sooner.
    env = settings_env(GENRELAY_POLL_INTERVAL="30")
    settings = make_settings(emulator.url, {f"{P}/{ACCOUNT}": MAX_JOBS}, **env)
    services: Services = await open_daemon(settings)
    await start_worker(settings)
    job_id = await submit(services, "[seconds=20] forgotten")
    provider_job_id = await until(lambda: redis_client.hget(keys.job_key(job_id), "provider_job_id"))
    headers = {"Authorization": f"Bearer {USEAPI_TOKEN}"}
    url = f"{emulator.url}/v1/ltxstudio/scheduler/{provider_job_id}"
    async with emulator.session.delete(url, headers=headers) as resp:
        assert resp.status == 204
    async with asyncio.timeout(30):
        job = await Client(redis_client).wait(job_id)
    assert job["errorType"] == "lost", job
    record = await redis_client.hgetall(keys.job_key(job_id))
    assert record["ended_by"] == "poll"
    assert await slot_index.lease_expiry(redis_client, P, job_id) is None
    assert (await submissions(emulator))[job_id] == 1


async def test_b19_a_429_with_a_local_slot_free_requeues_and_shows_the_foreign_jobs(
    redis_client: aioredis.Redis, emulator: Emulator, open_daemon, make_settings, start_worker
) -> None:
    settings = make_settings(
        emulator.url, {f"{P}/{ACCOUNT}": MAX_JOBS}, **settings_env(GENRELAY_CAPACITY_SYNC_INTERVAL="2")
    )
    services: Services = await open_daemon(settings)
    await start_worker(settings)
    capacity_key = keys.provider_keys(P).capacity
    first = await until(lambda: redis_client.hget(capacity_key, ACCOUNT))
    # Right after a sync (the next is 2 s away), the provider fills up with someone else's jobs.
    await until(lambda: _changed(redis_client, capacity_key, first))
    for n in range(MAX_JOBS):
        await start_outside(emulator, f"[seconds=2] theirs {n}", ref=f"other-app-{n}")
    ours = [await submit(services, f"[seconds=0.2] ours {n}") for n in range(2)]
    await until(lambda: _foreign_shown(services))
    async with asyncio.timeout(60):
        done = [await Client(redis_client).wait(job_id) for job_id in ours]
    assert [job["status"]["type"] for job in done] == ["completed", "completed"], done
    stats = await account_stats(emulator)
    assert stats["rejected_429"] >= 1 and stats["peak"] <= MAX_JOBS, stats
    requeued = [
        e for e in await events_of(redis_client) if e["state"] == "queued" and e["source"] == "requeue"
    ]
    assert requeued and {e["job"] for e in requeued} <= set(ours)
    # The 429 cooled the account down (the cooldown is over by now, and its entry gone with it).
    assert {e["account"] for e in requeued} == {ACCOUNT}
    by_ref = await submissions(emulator)
    assert [by_ref[job_id] for job_id in ours] == [1, 1]


async def _changed(client: aioredis.Redis, key: str, before: str) -> bool:
    return await client.hget(key, ACCOUNT) != before


async def _foreign_shown(services: Services) -> bool:
    view = (await services.slots.capacity(P))["available"][0]
    return bool(view["foreign"] == MAX_JOBS)


async def test_b20_lost_lease_keys_are_rebuilt_and_no_job_fails(
    redis_client: aioredis.Redis, emulator: Emulator, open_daemon, make_settings, start_worker
) -> None:
    settings = make_settings(emulator.url, {f"{P}/{ACCOUNT}": MAX_JOBS}, **settings_env())
    services: Services = await open_daemon(settings)
    await start_worker(settings)
    jobs = [await submit(services, f"[seconds=1.5] load {n}") for n in range(9)]
    await until(lambda: _active_count(redis_client, MAX_JOBS))
    await slot_index.lose_lease_keys(redis_client, P)  # the lease keys are lost under load
    started = time.monotonic()
    async with asyncio.timeout(60):
        done = [await Client(redis_client).wait(job_id) for job_id in jobs]
    assert [job["status"]["type"] for job in done] == ["completed"] * len(jobs), done
    rebuilt = [e for e in await events_of(redis_client) if e["state"] == "lease_rebuilt"]
    assert rebuilt, f"no lease rebuilt within {time.monotonic() - started:.1f} s"
    by_ref = await submissions(emulator)
    assert [by_ref[job_id] for job_id in jobs] == [1] * len(jobs)
    assert (await account_stats(emulator))["peak"] <= MAX_JOBS
    assert await slot_index.lease_count(redis_client, P, ACCOUNT) == 0


async def _active_count(client: aioredis.Redis, count: int) -> bool:
    return bool(await client.zcard(keys.provider_keys(P).state("active")) >= count)


async def test_a_submit_dropped_before_the_provider_took_it_is_sent_again_once(
    redis_client: aioredis.Redis, emulator: Emulator, open_daemon, make_settings, start_worker
) -> None:
    settings = make_settings(emulator.url, {f"{P}/{ACCOUNT}": MAX_JOBS}, **settings_env())
    services: Services = await open_daemon(settings)
    await start_worker(settings)
    # The connection drops before the provider handles the create: no job, no answer either.
    await emulator.fault(method="POST", path_prefix=CREATE, drop_connection=True, count=1)
    job_id = await submit(services, "[seconds=0.2] never reached the provider")
    async with asyncio.timeout(30):
        job = await Client(redis_client).wait(job_id)
    assert job["status"]["type"] == "completed", job
    assert (await submissions(emulator))[job_id] == 1
    record = await redis_client.hgetall(keys.job_key(job_id))
    assert record["submit_tries"] == "2"  # the uncertain try and the one after the listing ruled it out
    resent = [e for e in await events_of(redis_client) if e["job"] == job_id and e["source"] == "reconcile"]
    assert [e["state"] for e in resent] == ["submitting"]
