"""Upgrading at start-up a Redis written by slot layout 1, with jobs in flight, loses nothing, leaks
no slot and submits no job twice.

The Redis is filled by the frozen layout-1 code (tests/layout_v1): accounts a1 (maxJobs 1) and a2
(maxJobs 2) of ltx, a1's slot held by a job running at the emulator, a2's two slots held by a job
dispatched whose submit task has not run yet and by a job claimed whose provider call is to be
retried (both tasks still in the arq queue), and six jobs waiting: two pinned to a1, four unpinned,
of several priorities. Then the daemon (a web and two workers, as processes) starts on that Redis
and every job must complete, each submitted once, no account over its maxJobs at the emulator, and
no lease left in either layout.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.client import Client
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, Emulator, process_env
from tests.harness.processes import ProcessGroup
from tests.layout_v1.fill import ARQ_QUEUE, Layout1, lease_key, tag

PROVIDER = "ltx"
T = tag(PROVIDER)
ACCOUNTS = {"a1": 1, "a2": 2}
# The emulator lets each key run more jobs than genrelay's maxJobs: an over-allocation after the
# upgrade then shows in its peak instead of being hidden behind its 429s.
EMULATOR_MAX_JOBS = 10
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
# The active job still runs at the provider while the new daemon starts; the others take a moment.
ACTIVE_SECONDS = 8
JOB_SECONDS = 0.3
POLL_MS = 50  # GENRELAY_POLL_INTERVAL of process_env
WAIT_S = 60
# label -> (pinned account, priority) of the jobs that wait for a slot.
WAITING = {
    "pinned-p5": ("a1", 5),
    "pinned-p8": ("a1", 8),
    "unpinned-p0": ("", 0),
    "unpinned-p5-first": ("", 5),
    "unpinned-p5-second": ("", 5),
    "unpinned-p9": ("", 9),
}
# The keys of slot layout 2 that name a job holding or waiting for a slot.
SLOT_KEYS = ("leases", "lease_account", "held_by", "waiting", "waiting_pinned", "pins", "pinned_ready")


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS[n]: EMULATOR_MAX_JOBS for n in ACCOUNTS}, job_seconds=JOB_SECONDS)


def params(label: str) -> dict[str, object]:
    seconds = f" [seconds={ACTIVE_SECONDS}]" if label == "active" else ""
    return {"prompt": f"[ok]{seconds} layout upgrade: {label}", **T2V}


async def submit_at_emulator(emulator: Emulator, account: str, label: str) -> str:
    """The request ``LtxProvider.submit`` sends; the emulator's job id."""
    async with emulator.session.post(
        f"{emulator.url}/v2/text-to-video",
        json=params(label),
        headers={"Authorization": f"Bearer {API_KEYS[account]}"},
    ) as resp:
        assert resp.status == 202, await resp.text()
        body = await resp.json()
    provider_job_id: str = body["id"]
    return provider_job_id


async def emulator_jobs(emulator: Emulator) -> list[dict[str, Any]]:
    """Every job the emulator was given (its submissions)."""
    jobs = (await emulator.control("GET", "jobs"))["jobs"]
    assert isinstance(jobs, list)
    return jobs


async def fill_layout_1(client: aioredis.Redis, emulator: Emulator) -> dict[str, str]:
    """Jobs in flight as the layout-1 daemon left them; label -> job id."""
    v1 = Layout1(client, PROVIDER, ACCOUNTS)
    await v1.sync_accounts()
    ids: dict[str, str] = {}
    for label, pin, expected in (("active", "a1", "a1"), ("dispatched", "", "a2"), ("claimed", "", "a2")):
        ids[label], result = await v1.create("text-to-video", params(label), account=pin)
        assert result == ["dispatched", expected], (label, result)
    # a1's job: claimed, accepted by the provider, active with its provider job id.
    assert (await v1.claim_submit(ids["active"]))[:2] == ["go", "a1"]
    pid = await submit_at_emulator(emulator, "a1", "active")
    assert (await v1.submitted(ids["active"], pid, POLL_MS))[:2] == ["applied", "active"]
    # One of a2's: claimed, the provider call ended with an error worth retrying, the retry queued.
    assert await v1.claim_submit(ids["claimed"]) == ["go", "a2", "1", "queued"]
    await v1.submit_attempt_ended(ids["claimed"])
    # The other ("dispatched") holds its lease; its submit task waits in the queue.
    for label, (pin, priority) in WAITING.items():
        ids[label], result = await v1.create("text-to-video", params(label), account=pin, priority=priority)
        assert result == ["waiting"], (label, result)
    return ids


async def check_layout_1(client: aioredis.Redis, ids: dict[str, str]) -> None:
    """The Redis holds what layout 1 wrote (a check of the fill, before the daemon starts)."""
    assert await client.zrange(lease_key(PROVIDER, "a1"), 0, -1) == [ids["active"]]
    assert sorted(await client.zrange(lease_key(PROVIDER, "a2"), 0, -1)) == sorted(
        [ids["dispatched"], ids["claimed"]]
    )
    assert sorted(await client.zrange(f"{T}:waiting", 0, -1)) == sorted(ids[label] for label in WAITING)
    pinned = {ids[label]: pin for label, (pin, _) in WAITING.items() if pin}
    assert await client.hgetall(f"{T}:pins") == pinned
    queued = sorted(entry.split(":")[1] for entry in await client.zrange(ARQ_QUEUE, 0, -1))
    assert queued == sorted([ids["dispatched"], ids["claimed"]])
    states = {label: await client.hget(f"{T}:job:{job}", "state") for label, job in ids.items()}
    assert states == {
        "active": "active",
        "claimed": "submitting",
        "dispatched": "queued",
        **dict.fromkeys(WAITING, "queued"),
    }
    assert await client.exists(f"{T}:layout") == 0


@pytest.mark.slow
async def test_upgrade_from_layout_1_with_jobs_in_flight(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    daemon_processes: ProcessGroup,
) -> None:
    ids = await fill_layout_1(redis_client, emulator)
    await check_layout_1(redis_client, ids)

    env = process_env(tmp_path, redis_url, emulator.url, ACCOUNTS)
    web, *_ = await asyncio.gather(
        daemon_processes.web(env), daemon_processes.worker(env), daemon_processes.worker(env)
    )
    # Otherwise a1's peak below says nothing about the slot its running job holds.
    running = {job["prompt"]: job["executing"] for job in await emulator_jobs(emulator)}
    assert running[params("active")["prompt"]], "the layout-1 active job ended before the daemon started"

    app = Client(redis_client)
    try:
        async with asyncio.timeout(WAIT_S):
            jobs = {label: await app.wait(job_id) for label, job_id in ids.items()}
    except TimeoutError:
        states = {label: await redis_client.hget(f"{T}:job:{job}", "state") for label, job in ids.items()}
        raise AssertionError(f"jobs that never ended after the upgrade: {states}") from None
    async with emulator.session.get(f"{web.address}/v1/scheduler/available") as resp:
        capacity = await resp.json()
    emulated = await emulator_jobs(emulator)
    stats = (await emulator.stats())["keys"]
    assert isinstance(stats, dict)

    # Nothing lost: every job completed, the pinned ones on their account.
    assert {label: job["status"]["type"] for label, job in jobs.items()} == dict.fromkeys(ids, "completed")
    assert {label: jobs[label]["account"] for label in ("active", "pinned-p5", "pinned-p8")} == dict.fromkeys(
        ("active", "pinned-p5", "pinned-p8"), "a1"
    )
    assert {label: jobs[label]["account"] for label in ("dispatched", "claimed")} == {
        "dispatched": "a2",
        "claimed": "a2",
    }
    # No job submitted twice: one emulator job per genrelay job (prompts are unique); the active one
    # kept its provider job, the claimed one was sent once more (its first call never reached it).
    assert Counter(job["prompt"] for job in emulated) == Counter(params(label)["prompt"] for label in ids)
    assert jobs["active"]["providerJobId"] in {job["id"] for job in emulated}
    assert {label: job["submitTries"] for label, job in jobs.items()} == {
        **dict.fromkeys(ids, 1),
        "claimed": 2,
    }
    # No account ever ran more than its maxJobs at the provider.
    for name, max_jobs in ACCOUNTS.items():
        assert stats[API_KEYS[name]]["peak"] <= max_jobs, (name, stats[API_KEYS[name]])
        assert stats[API_KEYS[name]]["rejected_429"] == 0, (name, stats[API_KEYS[name]])
    # No slot leaked: every slot free, no lease of either layout left, no submit task left queued.
    assert capacity["executing"] == []
    assert {a["email"]: a["available"] for a in capacity["available"]} == ACCOUNTS
    assert [key async for key in redis_client.scan_iter(match=f"{T}:leases:*")] == []
    assert {name: await redis_client.exists(f"{T}:{name}") for name in SLOT_KEYS} == dict.fromkeys(
        SLOT_KEYS, 0
    )
    assert [e for e in await redis_client.zrange(ARQ_QUEUE, 0, -1) if e.startswith("submit:")] == []
    # Every job was given a slot once (by layout 1 or after the upgrade), and no lease was lost on
    # the way: a job sent back in line or timed out would have kept its slot in vain.
    events = [fields for _, fields in await redis_client.xrange(f"{T}:events")]
    granted = Counter(e["job"] for e in events if e["state"] == "dispatched")
    assert granted == Counter(ids.values())
    assert [e for e in events if e["source"] == "lease_lost" or e["state"] == "lease_expired"] == []

    # Needs the layout-2 code (the scale change): the layout-1 daemon writes no layout key and no
    # room index, so on it the test fails here, and only here.
    assert await redis_client.get(f"{T}:layout") == "3", "the Redis was not upgraded to layout 3"
    assert dict(await redis_client.zrange(f"{T}:room", 0, -1, withscores=True)) == ACCOUNTS


async def test_upgrade_from_layout_2_keeps_every_poll_claim(
    redis_client: aioredis.Redis,
    emulator: Emulator,
    open_daemon: Any,
    make_settings: Any,
) -> None:
    """Layout 2 kept claimed polls apart ('polling': job -> claim expiry); layout 3 keeps each in the
    schedule at its claim's expiry, marked by a half. Staged as layout 2 leaves them: two jobs
    claimed by a poller, one of which a callback made due again meanwhile, and a job due later.
    After the upgrade at start each claim is in the schedule, the poll the callback made due stays
    due, and no claim is left apart."""
    pk = keys.provider_keys(PROVIDER)
    claimed, hinted, later = (f"ltx-{c * 32}" for c in "abc")
    expiry = 1_900_000_000_000
    await redis_client.set(pk.layout, "2")
    await redis_client.zadd(pk.polling, {claimed: expiry, hinted: expiry})
    await redis_client.zadd(pk.polls, {hinted: 5, later: 7})
    await open_daemon(make_settings(emulator.url, ACCOUNTS))
    assert await redis_client.get(pk.layout) == "3"
    assert await redis_client.exists(pk.polling) == 0
    schedule = await redis_client.zrange(pk.polls, 0, -1, withscores=True)
    assert schedule == [(hinted, 5.0), (later, 7.0), (claimed, expiry + 0.5)]
