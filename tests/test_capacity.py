"""The capacity mirror's reconcile script on a real Redis: foreign jobs count as busy slots, our
jobs the provider lists are adopted (an in-flight or uncertain submit included), an uncertain
submit absent from a listing read after the grace is sent again (or failed where the provider
cannot tell), leases the provider no longer runs get a status read, and lost leases come back."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.jobs import JobRequest, State, Update
from daemon.providers.base import ProviderCapacity, RunningJob
from daemon.services import Services
from daemon.slots import Reconciled
from tests.harness import slots as slot_index

P = "ltxstudio"
ACCOUNT = "a@x"
LTX = {"prompt": "waves at dusk"}
GRACE_MS = 1000


@pytest.fixture
async def services(open_daemon, make_settings) -> Services:  # type: ignore[no-untyped-def]
    settings = make_settings(accounts={f"{P}/{ACCOUNT}": 3}, GENRELAY_POLL_INTERVAL="30")
    opened: Services = await open_daemon(settings)
    return opened


async def redis_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def new_job(services: Services, n: int) -> str:
    created = await services.store.create(JobRequest(P, "videos/ltx-create", {**LTX, "n": n}))
    return created.job_id


async def reconcile(
    services: Services, running: list[RunningJob], *, listed_at_ms: int, lists_refs: bool = True
) -> Reconciled:
    return await services.slots.reconcile(
        P,
        ACCOUNT,
        ProviderCapacity(executing=tuple(running), max_jobs=3),
        listed_at_ms=listed_at_ms,
        lists_refs=lists_refs,
        grace_ms=GRACE_MS,
        poll_ms=30_000,
    )


def foreign(n: int) -> RunningJob:
    return RunningJob(provider_job_id=f"email:{ACCOUNT}-job:foreign-{n}", account=ACCOUNT, reply_ref=None)


def ours(job_id: str, pid: str | None = None) -> RunningJob:
    return RunningJob(
        provider_job_id=pid or f"email:{ACCOUNT}-job:{job_id}", account=ACCOUNT, reply_ref=job_id
    )


async def test_foreign_jobs_take_slots_and_show_in_the_mirror(
    services: Services, redis_client: aioredis.Redis
) -> None:
    other_client = RunningJob(provider_job_id="email:a@x-job:x", account=ACCOUNT, reply_ref="order-17")
    result = await reconcile(services, [foreign(1), other_client], listed_at_ms=await redis_ms(redis_client))
    assert result.foreign == 2
    assert await redis_client.hget(keys.provider_keys(P).foreign, ACCOUNT) == "2"
    first, second = await new_job(services, 1), await new_job(services, 2)
    assert await slot_index.leases_on(redis_client, P, ACCOUNT) == [first]
    assert second in await slot_index.waiting_jobs(redis_client, P)
    view = (await services.slots.capacity(P))["available"][0]
    assert (view["foreign"], view["available"], view["providerMaxJobs"]) == (2, 0, 3)
    assert view["lastSync"] is not None
    # The foreign jobs end: the next sync frees their slots and hands one to the waiting job.
    await reconcile(services, [], listed_at_ms=await redis_ms(redis_client))
    assert await redis_client.hget(keys.provider_keys(P).foreign, ACCOUNT) is None
    assert set(await slot_index.leases_on(redis_client, P, ACCOUNT)) == {first, second}


async def test_an_in_flight_submit_listed_with_our_ref_is_ours_and_adopted(
    services: Services, redis_client: aioredis.Redis
) -> None:
    job_id = await new_job(services, 1)
    assert (await services.store.claim_submit(job_id)).outcome == "go"  # the call is in flight
    result = await reconcile(services, [ours(job_id)], listed_at_ms=await redis_ms(redis_client))
    assert (result.foreign, result.adopted) == (0, (job_id,))
    record = await redis_client.hgetall(keys.job_key(job_id))
    assert record["state"] == "active" and record["provider_job_id"] == f"email:{ACCOUNT}-job:{job_id}"
    assert record["submit_open"] == "0"
    assert await slot_index.lease_account(redis_client, P, job_id) == ACCOUNT
    assert await redis_client.zscore(keys.provider_keys(P).polls, job_id) is not None
    # The worker's own answer arrives afterwards: nothing moves back, nothing is counted twice.
    again = await reconcile(services, [ours(job_id)], listed_at_ms=await redis_ms(redis_client))
    assert (again.foreign, again.adopted, again.rebuilt) == (0, (), ())


async def test_an_uncertain_submit_waits_for_the_grace_then_is_sent_again(
    services: Services, redis_client: aioredis.Redis
) -> None:
    job_id = await new_job(services, 1)
    await services.store.claim_submit(job_id)
    assert await services.store.mark_uncertain(job_id, "sent, no answer") == "marked"
    soon = await reconcile(services, [], listed_at_ms=await redis_ms(redis_client))
    assert soon.resubmitted == () and soon.interrupted == ()
    record = await redis_client.hgetall(keys.job_key(job_id))
    assert record["state"] == "submitting" and record["submit_uncertain"] == "1"
    assert await slot_index.lease_account(redis_client, P, job_id) == ACCOUNT

    late = int(record["uncertain_ms"]) + GRACE_MS
    result = await reconcile(services, [], listed_at_ms=late)
    assert result.resubmitted == (job_id,)
    record = await redis_client.hgetall(keys.job_key(job_id))
    assert (
        record["state"] == "submitting" and record["submit_open"] == "0" and "submit_uncertain" not in record
    )
    # A fresh submit task is queued, and the next claim is a new, counted try.
    assert any(k.startswith(f"submit:{job_id}:") for k in await redis_client.zrange(keys.ARQ_QUEUE, 0, -1))
    claim = await services.store.claim_submit(job_id)
    assert (claim.outcome, claim.tries) == ("go", 2)


async def test_an_uncertain_submit_is_failed_where_the_listing_has_no_refs(
    services: Services, redis_client: aioredis.Redis
) -> None:
    job_id = await new_job(services, 1)
    await services.store.claim_submit(job_id)
    await services.store.mark_uncertain(job_id, "sent, no answer")
    uncertain_ms = int(await redis_client.hget(keys.job_key(job_id), "uncertain_ms") or 0)
    result = await reconcile(services, [], listed_at_ms=uncertain_ms + GRACE_MS, lists_refs=False)
    assert result.interrupted == (job_id,) and result.resubmitted == ()


async def test_an_uncertain_submit_listed_is_adopted_even_without_its_lease(
    services: Services, redis_client: aioredis.Redis
) -> None:
    job_id = await new_job(services, 1)
    await services.store.claim_submit(job_id)
    await slot_index.lose_lease_keys(redis_client, P)
    # A rerun finds the lease gone: with the call still open, the job is not put back in line.
    claim = await services.store.claim_submit(job_id)
    assert (claim.outcome, claim.account) == ("interrupted", ACCOUNT)
    await services.store.mark_uncertain(job_id, "interrupted")
    result = await reconcile(services, [ours(job_id)], listed_at_ms=await redis_ms(redis_client))
    assert result.adopted == (job_id,)
    assert await slot_index.lease_account(redis_client, P, job_id) == ACCOUNT
    assert await redis_client.hget(keys.job_key(job_id), "state") == "active"


async def test_leases_the_provider_no_longer_runs_get_a_status_read_after_the_grace(
    services: Services, redis_client: aioredis.Redis
) -> None:
    job_id = await new_job(services, 1)
    await services.store.claim_submit(job_id)
    await reconcile(services, [ours(job_id)], listed_at_ms=await redis_ms(redis_client))
    polls = keys.provider_keys(P).polls
    due_before = await redis_client.zscore(polls, job_id)
    # Listed no more, but the listing is not later than the grace: left alone.
    early = await reconcile(services, [], listed_at_ms=await redis_ms(redis_client))
    assert early.checked == () and await redis_client.zscore(polls, job_id) == due_before
    started = int(await redis_client.hget(keys.job_key(job_id), "started_ms") or 0)
    result = await reconcile(services, [], listed_at_ms=started + GRACE_MS)
    assert result.checked == (job_id,)
    due_now = await redis_client.zscore(polls, job_id)
    assert due_now is not None and due_before is not None and due_now < due_before
    # Not ended blindly: the lease stays until the status read says what happened.
    assert await redis_client.hget(keys.job_key(job_id), "state") == "active"
    assert await slot_index.lease_account(redis_client, P, job_id) == ACCOUNT


async def test_lost_lease_keys_are_rebuilt_from_the_listing(
    services: Services, redis_client: aioredis.Redis
) -> None:
    jobs = [await new_job(services, n) for n in range(3)]
    for job_id in jobs:
        await services.store.claim_submit(job_id)
    await reconcile(services, [ours(j) for j in jobs], listed_at_ms=await redis_ms(redis_client))
    await slot_index.lose_lease_keys(redis_client, P)
    # The room index still counts the lost leases: a newcomer gets no slot the provider lacks.
    waiting = await new_job(services, 9)
    assert waiting in await slot_index.waiting_jobs(redis_client, P)
    result = await reconcile(services, [ours(j) for j in jobs], listed_at_ms=await redis_ms(redis_client))
    assert set(result.rebuilt) == set(jobs) and result.foreign == 0
    assert set(await slot_index.leases_on(redis_client, P, ACCOUNT)) == set(jobs)
    assert waiting in await slot_index.waiting_jobs(redis_client, P)
    # One of them ends: its slot goes to the job in line, in the same script.
    await services.store.apply(jobs[0], Update(State.FAILED, message="x"), source="poll")
    assert set(await slot_index.leases_on(redis_client, P, ACCOUNT)) == {*jobs[1:], waiting}
