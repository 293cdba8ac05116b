"""The job store's scripts against real Redis: create, dispatch, monotonic transitions, release."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.errors import InvalidRequest
from daemon.jobs import JobRequest, State, Update
from daemon.services import Services
from tests.harness import slots as slot_index

ARTIFACT = {"assetUrl": "https://cdn.example/v.mp4", "kind": "video", "expirationDateString": "1"}


def request(**extra: object) -> JobRequest:
    body = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "a cat"}, **extra}
    return JobRequest.from_json(body)


@pytest.fixture
async def daemon(open_daemon, make_settings) -> Services:  # type: ignore[no-untyped-def]
    services: Services = await open_daemon(make_settings(accounts={"a1": 1, "a2": 1}))
    return services


async def queued_submissions(client: aioredis.Redis) -> list[str]:
    return [j for j in await client.zrange(keys.ARQ_QUEUE, 0, -1) if j.startswith("submit:")]


async def start(daemon: Services, job_id: str) -> None:
    claim = await daemon.store.claim_submit(job_id)
    assert claim.outcome == "go"
    outcome = await daemon.store.apply(job_id, Update(State.ACTIVE, provider_job_id="p1"), source="submit")
    assert outcome == "applied"


async def test_create_dispatches_while_slots_are_free_then_waits(daemon: Services) -> None:
    results = [await daemon.store.create(request()) for _ in range(3)]
    assert [r.dispatched for r in results] == [True, True, False]
    assert len(await queued_submissions(daemon.client)) == 2
    waiting = await slot_index.waiting_jobs(daemon.client, "ltx")
    assert waiting == [results[2].job_id]
    capacity = await daemon.slots.capacity("ltx")
    assert sorted(a["executing"] for a in capacity["available"]) == [1, 1]


async def test_request_id_makes_create_idempotent(daemon: Services) -> None:
    first = await daemon.store.create(request(requestId="order-17"))
    again = await daemon.store.create(request(requestId="order-17"))
    assert first.job_id == again.job_id
    assert (first.created, again.created) == (True, False)
    assert await daemon.client.zcard(keys.provider_keys("ltx").index) == 1


async def test_check_refuses_unknown_operation_and_account(daemon: Services) -> None:
    with pytest.raises(InvalidRequest, match="unknown operation"):
        await daemon.store.create(request(operation="paint"))
    with pytest.raises(InvalidRequest, match="no ltx account named 'zz'"):
        await daemon.store.create(request(account="zz"))
    with pytest.raises(InvalidRequest, match="unknown provider"):
        await daemon.store.create(request(provider="vydra"))
    assert (
        await daemon.client.dbsize() <= 5
    )  # only the accounts, their room index and digest, the slot layout, the secret


async def test_progress_only_moves_forward_and_duplicates_change_nothing(daemon: Services) -> None:
    job_id = (await daemon.store.create(request())).job_id
    await start(daemon, job_id)
    assert await daemon.store.apply(job_id, Update(State.ACTIVE, progress=40), source="poll") == "applied"
    seq = await daemon.client.hget(keys.job_key(job_id), "seq")
    assert await daemon.store.apply(job_id, Update(State.ACTIVE, progress=40), source="poll") == "duplicate"
    assert await daemon.store.apply(job_id, Update(State.ACTIVE, progress=10), source="poll") == "duplicate"
    assert await daemon.store.apply(job_id, Update(State.QUEUED), source="poll") == "stale"
    job = await daemon.store.require(job_id)
    assert (job.state, job.fields["progress"], job.fields["seq"]) == (State.ACTIVE, "40", seq)


async def test_terminal_job_is_never_rewritten_and_releases_once(daemon: Services) -> None:
    first = (await daemon.store.create(request(account="a1"))).job_id
    second = (await daemon.store.create(request(account="a1"))).job_id
    await start(daemon, first)
    done = Update(State.COMPLETED, artifact=ARTIFACT)
    assert await daemon.store.apply(first, done, source="poll") == "applied"
    # The freed slot went to the next waiting job in the same script.
    assert await slot_index.leases_on(daemon.client, "ltx", "a1") == [second]
    for late in (done, Update(State.FAILED, message="late"), Update(State.ACTIVE, progress=99)):
        assert await daemon.store.apply(first, late, source="poll") == "terminal"
    assert await slot_index.leases_on(daemon.client, "ltx", "a1") == [second]
    job = await daemon.store.require(first)
    assert job.state is State.COMPLETED
    # The artifact as recorded, naming the asset its completion recorded.
    assert job.to_api()["status"]["artifact"] == {
        **ARTIFACT,
        "assetId": job.to_api()["status"]["artifact"]["assetId"],
    }


async def test_completed_without_artifact_is_not_completed(daemon: Services) -> None:
    job_id = (await daemon.store.create(request())).job_id
    await start(daemon, job_id)
    assert await daemon.store.apply(job_id, Update(State.COMPLETED), source="poll") == "no_artifact"
    assert (await daemon.store.require(job_id)).state is State.ACTIVE


async def test_events_stream_gets_one_entry_per_transition(daemon: Services) -> None:
    job_id = (await daemon.store.create(request())).job_id
    await start(daemon, job_id)
    await daemon.store.apply(job_id, Update(State.FAILED, message="boom"), source="poll")
    await daemon.store.apply(job_id, Update(State.FAILED, message="boom"), source="poll")
    entries = await daemon.store.events_since("ltx", "0", block_ms=0)
    states = [fields["state"] for _, fields in entries if fields["job"] == job_id]
    assert states == ["queued", "dispatched", "submitting", "active", "failed"]


async def test_claim_polls_never_hands_one_job_to_two_claimers(daemon: Services) -> None:
    ids = [(await daemon.store.create(request())).job_id for _ in range(2)]
    for job_id in ids:
        await start(daemon, job_id)
        await daemon.store.reschedule("ltx", [], 0)
    polls = keys.provider_keys("ltx").polls
    await daemon.client.zadd(polls, {job_id: 0 for job_id in ids})
    first = await daemon.store.claim_polls("ltx", batch=10, claim_ms=60_000)
    second = await daemon.store.claim_polls("ltx", batch=10, claim_ms=60_000)
    assert sorted(j for j, _ in first.due) == sorted(ids)
    assert second.due == []
    # A claim is kept in the schedule at its expiry, marked by the half.
    held = await daemon.client.zscore(polls, ids[0])
    assert held is not None and held % 1 == 0.5 and held > first.now_ms
    # A claim whose holder died comes back once it expires (staged: it expired long ago), and so
    # does one that a process of slot layout 2 left in its zset of claims.
    await daemon.client.zadd(polls, {ids[0]: 1.5})
    await daemon.client.zrem(polls, ids[1])
    await daemon.client.zadd(keys.provider_keys("ltx").polling, {ids[1]: 1})
    third = await daemon.store.claim_polls("ltx", batch=10, claim_ms=60_000)
    assert sorted(j for j, _ in third.due) == sorted(ids[:2])
    assert await daemon.client.zcard(keys.provider_keys("ltx").polling) == 0


async def test_the_app_is_told_at_the_end_and_on_progress_only_when_it_asked(daemon: Services) -> None:
    async def deliveries(job_id: str) -> list[str]:
        queued = await daemon.client.zrange(keys.ARQ_QUEUE, 0, -1)
        return sorted(t for t in queued if t.startswith(f"deliver:{job_id}:"))

    quiet = (await daemon.store.create(request(replyUrl="https://app.example.com/hook"))).job_id
    chatty = (
        await daemon.store.create(request(replyUrl="https://app.example.com/hook", notifyProgress=True))
    ).job_id
    for job_id in (quiet, chatty):
        await start(daemon, job_id)
        await daemon.store.apply(job_id, Update(State.ACTIVE, progress=30), source="poll")
    assert await deliveries(quiet) == []
    assert len(await deliveries(chatty)) == 2  # 'active' on submit, then progress 30
    await daemon.store.apply(quiet, Update(State.FAILED, message="x"), source="poll")
    await daemon.store.apply(quiet, Update(State.FAILED, message="x"), source="poll")  # a duplicate
    assert len(await deliveries(quiet)) == 1


async def test_ending_the_last_pinned_job_settles_no_expired_lease_when_nobody_waits(
    daemon: Services,
) -> None:
    """A release with nobody left waiting stops after its two reads (docs/slots.md): an expired lease
    is left to the sweep, also when the job that ended was the last pinned one."""
    await daemon.slots.set_enabled("ltx", "a2", enabled=False)
    pinned = (await daemon.store.create(request(account="a2"))).job_id  # waits for a disabled account
    holder = (await daemon.store.create(request())).job_id  # takes a1
    await slot_index.expire_lease(daemon.client, "ltx", holder)
    assert await daemon.store.apply(pinned, Update(State.CANCELED, message="x"), source="cancel") == "applied"
    pk = keys.provider_keys("ltx")
    assert await daemon.client.zscore(pk.leases, holder) == 1  # still there, for the sweep
    assert await daemon.client.lrange(pk.expired, 0, -1) == []
    assert await daemon.slots.sweep("ltx") == [holder]  # the sweep settles it
