"""Scenario A2 with real processes: a worker is SIGKILLed after the provider accepted a submit and
before the provider's job id was recorded; the next worker finds the job in the provider's
executing list by its replyRef and adopts it, and the provider sees one submission."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.client import Client
from daemon.services import Services
from emulator.config import EmulatorConfig
from tests.conftest import USEAPI_TOKEN, Emulator, process_env
from tests.harness import slots as slot_index
from tests.test_reconcile import ACCOUNT, CREATE, MAX_JOBS, P, events_of, submissions, submit, until

ACCOUNTS = {f"{P}/{ACCOUNT}": MAX_JOBS}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(useapi_accounts={USEAPI_TOKEN: {ACCOUNT: MAX_JOBS}}, job_seconds=0.3)


@pytest.mark.timeout(120)
async def test_a2_sigkill_after_the_provider_accepted_adopts_the_job_by_reply_ref(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    daemon_processes,
    open_daemon,
    make_settings,
) -> None:
    timings = {"GENRELAY_JOB_TIMEOUT": "2", "GENRELAY_RECONCILE_GRACE": "0.5"}
    # The first worker syncs once at start (nothing runs yet), then not for a minute: whatever
    # happens to the job afterwards is the next worker's doing.
    first_env = process_env(
        tmp_path, redis_url, emulator.url, ACCOUNTS, GENRELAY_CAPACITY_SYNC_INTERVAL="60", **timings
    )
    next_env = {**first_env, "GENRELAY_CAPACITY_SYNC_INTERVAL": "0.2"}
    services: Services = await open_daemon(make_settings(emulator.url, ACCOUNTS, **timings))
    # The emulator creates the job at once and holds the create answer for 5 s.
    await emulator.fault(method="POST", path_prefix=CREATE, hold_seconds=5, count=1)
    first = await daemon_processes("worker", first_env, ready_line="worker started")
    await until(lambda: redis_client.hget(keys.provider_keys(P).capacity, ACCOUNT))  # its one sync is done
    job_id = await submit(services, "[seconds=8] accepted, then the worker dies")
    await until(lambda: _submitted(emulator, job_id))
    await first.stop(signal.SIGKILL)
    record = await redis_client.hgetall(keys.job_key(job_id))
    assert record["state"] == "submitting" and "provider_job_id" not in record, record
    # The killed worker held this interval's sync lock; it would expire in 54 s.
    await redis_client.delete(keys.capacity_lock_key(P))

    await daemon_processes("worker", next_env, ready_line="worker started")
    job = await until(lambda: _ended(redis_client, job_id), seconds=60)
    assert job["status"]["type"] == "completed", job
    assert (await submissions(emulator))[job_id] == 1
    adopted = [e for e in await events_of(redis_client) if e["job"] == job_id and e["source"] == "reconcile"]
    assert [e["state"] for e in adopted] == ["active"]
    assert await slot_index.lease_count(redis_client, P, ACCOUNT) == 0


async def _submitted(emulator: Emulator, job_id: str) -> bool:
    return (await submissions(emulator)).get(job_id) == 1


async def _ended(client: aioredis.Redis, job_id: str) -> dict[str, object] | None:
    job = await Client(client).get(job_id)
    return job if job is not None and job["status"]["type"] in ("completed", "failed", "canceled") else None
