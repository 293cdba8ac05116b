"""Scenarios B12-B18 of docs/fault-scenarios.md (the slot allocator under faults), against the real
scripts on real Redis, with the emulator as the oracle where a provider is involved.

Where a scenario is covered elsewhere:

- B13 (a holder SIGKILLed holding every slot: the next acquire only after expiry by Redis TIME,
  no cleanup call): tests/test_lease_expiry.py.
- B16 (double release, a late callback after release: a no-op): tests/test_store.py
  (``test_terminal_job_is_never_rewritten_and_releases_once``), tests/test_slots_stateful.py
  (every release repeated), tests/test_callbacks_multiprocess.py (ten identical callbacks).
- B19/B20 (provider 429 with a free local slot, lost lease keys): tests of the capacity mirror.
- B21 (hypothesis state machine): tests/test_slots_stateful.py.

Here: B12 (4 processes x 500 acquire/release cycles on maxJobs=3, the high-water mark replayed
from the events stream Redis wrote), B14 (a paused holder), B15+B18 (a job 10x its lease TTL keeps
its slot; the release hands the slot over in the same script; an idle worker's Redis command
count), B17 (maxJobs lowered while held, then raised).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.client import Client
from daemon.jobs import JobRequest, State, Update
from daemon.services import Services
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, USEAPI_TOKEN, Emulator, process_env
from tests.harness import slots as slot_index
from tests.harness.events import EventLog
from tests.harness.invariants import check_invariants
from tests.harness.oracle import Oracle
from tests.harness.processes import ProcessGroup
from workers.runtime import RUNTIME

T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
ARTIFACT = {"assetUrl": "https://cdn.example/v.mp4", "kind": "video", "expirationDateString": "1"}
SECRETS = [*API_KEYS.values(), USEAPI_TOKEN]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 3, API_KEYS["a2"]: 1}, job_seconds=0.1)


@pytest.fixture
async def oracle(emulator: Emulator) -> Oracle:
    return Oracle(emulator.url, emulator.session)


def request(prompt: str = "[ok] x", **extra: object) -> JobRequest:
    return JobRequest.from_json(
        {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": prompt, **T2V}, **extra}
    )


def live_high_water(events: list[dict[str, str]]) -> dict[str, int]:
    """Replay the stream in its order (the order Redis ran the scripts in): the most leases each
    account held at once. A grant emits ``dispatched``; a terminal state, an expiry or a lost
    lease gives the slot back."""
    holder: dict[str, str] = {}
    live: dict[str, int] = {}
    high: dict[str, int] = {}
    for event in events:
        job, state = event["job"], event["state"]
        if state == "dispatched":
            holder[job] = event["account"]
            live[event["account"]] = live.get(event["account"], 0) + 1
            high[event["account"]] = max(high.get(event["account"], 0), live[event["account"]])
        elif state in ("completed", "failed", "canceled", "lease_expired") or (
            state == "queued" and job in holder
        ):
            account = holder.pop(job, None)
            if account is not None:
                live[account] -= 1
    return high


CYCLER = """
import asyncio, sys
from daemon import keys
from daemon.jobs import JobRequest, State, Update
from daemon.services import open_services
from daemon.settings import Settings

ARTIFACT = {"assetUrl": "https://cdn.example/v.mp4", "kind": "video", "expirationDateString": "1"}
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}

async def main(cycles: int, name: str) -> None:
    settings = Settings.from_env()
    services = await open_services(settings, settings.redis_url, sync_accounts=False)
    store, client, stream = services.store, services.client, keys.events_key("ltx")
    await client.blpop(["start"], timeout=30)
    for n in range(cycles):
        newest = await client.xrevrange(stream, count=1)
        last = newest[0][0] if newest else "0-0"
        body = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": f"{name}-{n}", **T2V}}
        created = await store.create(JobRequest.from_json(body))
        job = created.job_id
        while await client.hget(keys.provider_keys("ltx").lease_account, job) != "a1":
            for _, entries in await client.xread({stream: last}, block=1000, count=1000):
                last = entries[-1][0]
        assert (await store.claim_submit(job)).outcome == "go"
        await store.apply(job, Update(State.ACTIVE, provider_job_id="p"), source="submit")
        assert await store.apply(job, Update(State.COMPLETED, artifact=ARTIFACT), source="poll") == "applied"
    await services.close()

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""
CYCLES = 500
CYCLERS = 4


@pytest.mark.slow
async def test_b12_four_processes_cycling_500_times_never_hold_more_than_max_jobs(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, open_daemon, make_settings
) -> None:  # type: ignore[no-untyped-def]
    await open_daemon(make_settings(accounts={"a1": 3}))
    env = process_env(tmp_path, redis_url, "http://127.0.0.1:9", {"a1": 3})
    root = str(Path(__file__).parent.parent)
    cyclers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CYCLER, str(CYCLES), f"p{n}", env={**env, "PYTHONPATH": root}
        )
        for n in range(CYCLERS)
    ]
    await redis_client.rpush("start", *["go"] * CYCLERS)
    async with asyncio.timeout(100):
        codes = [await p.wait() for p in cyclers]
    assert codes == [0] * CYCLERS
    events = [fields for _, fields in await redis_client.xrange(keys.events_key("ltx"))]
    assert sum(e["state"] == "completed" for e in events) == CYCLES * CYCLERS
    # With 4 cyclers on 3 slots every slot was in use at some point, and never one more.
    assert live_high_water(events) == {"a1": 3}
    assert await slot_index.lease_count(redis_client, "ltx", "a1") == 0
    assert await slot_index.waiting_jobs(redis_client, "ltx") == []


async def test_b14_a_paused_holder_loses_its_slot_and_does_not_submit_on_it(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    oracle: Oracle,
    daemon_processes: ProcessGroup,
    open_daemon,  # type: ignore[no-untyped-def]
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    """B14: the only worker is stopped (SIGSTOP) while a job holds the one slot of its account.
    The lease runs out by the Redis clock, another process's job takes the slot, and after
    SIGCONT the stopped worker's submit finds its lease lost: the first job is never sent."""
    timings = {"GENRELAY_LEASE_TTL": "1", "GENRELAY_SWEEP_INTERVAL": "0.2"}
    services: Services = await open_daemon(make_settings(emulator.url, {"a2": 1}, **timings))
    env = process_env(tmp_path, redis_url, emulator.url, {"a2": 1}, **timings)
    worker = await daemon_processes.worker(env)
    worker.pause()
    events = EventLog(redis_client)
    paused = (await services.store.create(request("[ok] paused"))).job_id
    async with asyncio.timeout(30):
        while True:
            expiry = await slot_index.lease_expiry(redis_client, "ltx", paused)
            seconds, micros = await redis_client.time()
            if expiry is not None and expiry <= seconds * 1000 + micros // 1000:
                break
            await events.read(block_ms=100)
    # Long enough that the first job is still waiting when the sweep fails it.
    taker = (await services.store.create(request("[seconds=2] [ok] taker"))).job_id
    async with asyncio.timeout(10):
        await events.reached(taker, "dispatched")
    assert "lease_expired" in events.states(paused)
    assert await slot_index.leases_on(redis_client, "ltx", "a2") == [taker]
    worker.resume()
    app = Client(redis_client)
    async with asyncio.timeout(30):
        ended = await app.wait(paused)
        taken = await app.wait(taker)
    await events.read(block_ms=0)
    assert taken["status"]["type"] == "completed", taken
    # Either the sweep failed the first job as timed out, or its submit found the lease lost and put
    # it back in line; then it was sent only on a fresh slot, after the taker ended: never on the
    # lost lease (the provider refused nothing and never ran two at once).
    if ended["status"]["type"] == "failed":
        assert ended["errorType"] == "timeout", ended
        assert (await oracle.submissions_by_prompt()).get("[ok] paused", 0) == 0
    else:
        assert ended["status"]["type"] == "completed", ended
        order = [(e["job"], e["state"]) for e in events.seen]
        assert order.index((paused, "submitting")) > order.index((taker, "completed")), order
    stats = (await oracle.accounts())[API_KEYS["a2"]]
    assert stats["rejected_429"] == 0 and stats["peak"] == 1, stats
    await check_invariants(
        redis_client, oracle, [paused, taker], logs=daemon_processes.logs(), secrets=SECRETS
    )


async def test_b14_a_job_put_back_in_line_after_its_lease_expired_is_not_failed_by_the_sweep(
    redis_client: aioredis.Redis, open_daemon, make_settings
) -> None:  # type: ignore[no-untyped-def]
    """B14, the repair: a submit that finds its lease expired puts the job back in line (here it
    gets the free slot again at once). The expiry noted for the sweep is dropped with it, so the
    sweep does not fail a job that holds a fresh lease and may already be at the provider."""
    services: Services = await open_daemon(make_settings(accounts={"a2": 1}, GENRELAY_LEASE_TTL="0.2"))
    job_id = (await services.store.create(request("[ok] late"))).job_id
    events = EventLog(redis_client)
    async with asyncio.timeout(10):
        while True:
            expiry = await slot_index.lease_expiry(redis_client, "ltx", job_id)
            seconds, micros = await redis_client.time()
            if expiry is not None and expiry <= seconds * 1000 + micros // 1000:
                break
            await events.read(block_ms=50)
    assert (await services.store.claim_submit(job_id)).outcome == "requeued"
    assert await slot_index.leases_on(redis_client, "ltx", "a2") == [
        job_id
    ]  # granted again, in the same script
    assert await services.slots.sweep("ltx") == []
    assert (await services.store.claim_submit(job_id)).outcome == "go"


# An idle poller looks for due polls at least every second (workers/poll.py), so a lease must
# outlive that plus the poll interval before the first status read renews it.
LEASE_TTL_S = 1.5
LONG_JOB_S = 15.0  # 10 x the lease TTL
QUEUE_POLL_S = 0.05
SWEEP_S = 1.0
# Redis commands an idle worker may cause (commandstats also counts those a script runs): a look at
# the queue costs 1, a sweep script at most ~40, and the poller and health record ~40 a second.
QUEUE_LOOK_COMMANDS = 2
SWEEP_COMMANDS = 40
OTHER_COMMANDS_PER_S = 40


async def test_b15_b18_a_long_job_keeps_its_slot_and_its_release_hands_it_over_at_once(
    redis_client: aioredis.Redis,
    emulator: Emulator,
    oracle: Oracle,
    start_worker,  # type: ignore[no-untyped-def]
    open_daemon,  # type: ignore[no-untyped-def]
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    """B15: a job running 10x its lease TTL keeps its slot (each status read renews the lease):
    no expiry, no second job let in. B18: its release grants the slot to the waiting job in the
    same script (adjacent stream entries with one timestamp); an idle worker then sends Redis a
    bounded number of commands."""
    settings = make_settings(
        emulator.url,
        {"a2": 1},
        GENRELAY_LEASE_TTL=str(LEASE_TTL_S),
        GENRELAY_SWEEP_INTERVAL=str(SWEEP_S),
        GENRELAY_QUEUE_POLL_DELAY=str(QUEUE_POLL_S),
    )
    services: Services = await open_daemon(settings)
    worker = await start_worker(settings)
    async with asyncio.timeout(30):  # the worker has started: a granted slot is claimed at once
        while RUNTIME not in worker.ctx:
            await EventLog(redis_client).read(block_ms=50)
    long_job = (await services.store.create(request(f"[seconds={LONG_JOB_S}] [ok] long"))).job_id
    next_job = (await services.store.create(request("[ok] next"))).job_id
    app = Client(redis_client)
    async with asyncio.timeout(60):
        finished = [await app.wait(long_job), await app.wait(next_job)]
    assert [job["status"]["type"] for job in finished] == ["completed", "completed"]
    events = [fields for _, fields in await redis_client.xrange(keys.events_key("ltx"))]
    assert [e for e in events if e["state"] == "lease_expired"] == []
    stats = (await oracle.accounts())[API_KEYS["a2"]]
    assert stats["rejected_429"] == 0 and stats["peak"] == 1, stats
    done = next(i for i, e in enumerate(events) if e["job"] == long_job and e["state"] == "completed")
    handed = events[done + 1]
    assert (handed["job"], handed["state"], handed["ts"]) == (next_job, "dispatched", events[done]["ts"])
    await check_invariants(redis_client, oracle, [long_job, next_job], secrets=SECRETS)

    # B18: an idle worker wakes on timers only (queue looks, poller, sweep): nothing spins.
    async def calls() -> int:
        info = await redis_client.info("commandstats")
        return sum(int(v["calls"]) for v in info.values())

    before, (s0, us0) = await calls(), await redis_client.time()
    assert await redis_client.xread({"genrelay:idle": "$"}, block=1000) == []
    after, (s1, us1) = await calls(), await redis_client.time()
    idle_s = (s1 - s0) + (us1 - us0) / 1e6
    bound = (
        QUEUE_LOOK_COMMANDS * idle_s / QUEUE_POLL_S
        + SWEEP_COMMANDS * (idle_s / SWEEP_S + 1)
        + OTHER_COMMANDS_PER_S * (idle_s + 1)
    )
    assert after - before <= bound, (after - before, idle_s, bound)


async def test_b17_lowered_max_jobs_grants_nothing_until_below_it_and_a_raise_grants_at_once(
    redis_client: aioredis.Redis, open_daemon, make_settings
) -> None:  # type: ignore[no-untyped-def]
    """B17: 5 of 5 slots held, maxJobs lowered to 2: releases grant nothing until fewer than 2
    are live; raised back to 5: the waiting jobs are granted by the same script that raised it."""
    services: Services = await open_daemon(make_settings(accounts={"a3": 5}))
    held = [(await services.store.create(request(f"h{n}"))).job_id for n in range(5)]
    waiting = [(await services.store.create(request(f"w{n}"))).job_id for n in range(4)]
    assert sorted(await slot_index.leases_on(redis_client, "ltx", "a3")) == sorted(held)
    await open_daemon(make_settings(accounts={"a3": 2}))  # loads maxJobs=2 into Redis

    async def finish(job_id: str) -> None:
        assert (await services.store.claim_submit(job_id)).outcome == "go"
        await services.store.apply(job_id, Update(State.ACTIVE, provider_job_id="p"), source="submit")
        await services.store.apply(job_id, Update(State.COMPLETED, artifact=ARTIFACT), source="poll")

    live = []
    for job_id in held:
        await finish(job_id)
        live.append(await slot_index.lease_count(redis_client, "ltx", "a3"))
    # 4, 3, 2 live: no grant; at 1 live one waiting job gets the slot (2); the last release, one more.
    assert live == [4, 3, 2, 2, 2], live
    events = EventLog(redis_client)
    await events.read(block_ms=0)
    granted = [e["job"] for e in events.seen if e["state"] == "dispatched" and e["job"] in waiting]
    # Jobs created in the same millisecond tie on arrival; which two go first is the script's choice.
    assert len(set(granted)) == 2 and set(granted) <= set(waiting), granted
    mark = len(events.seen)
    await open_daemon(make_settings(accounts={"a3": 5}))
    await events.read(block_ms=0)
    raised = [e["job"] for e in events.seen[mark:] if e["state"] == "dispatched"]
    assert sorted(raised) == sorted(set(waiting) - set(granted))
    assert await slot_index.lease_count(redis_client, "ltx", "a3") == 4
