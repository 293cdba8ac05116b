"""The vydra plan a request budget runs on is the one vydra reports, learnt from the
``X-RateLimit-Limit`` header of its answers alone (here its ``/account/rate-limits`` fails), kept in
Redis for every process: two workers use a Starter plan's budget from the first window, draw no
rate 429 from vydra, and keep most of the plan's window in use while jobs wait. Real Redis, two
worker processes, the emulator over HTTP; the window is time-scaled (6 s for vydra's minute)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.client import Client
from daemon.providers.vydra import organization_holder
from emulator.config import EmulatorConfig
from tests.archive_support import until
from tests.conftest import VYDRA_KEYS, AccountSpec, Emulator, process_env

pytestmark = pytest.mark.timeout(180)

WINDOW_S = 6.0
STARTER_RPM = 30
JOBS = 150
MEASURED_WINDOWS = 3


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        vydra_accounts={VYDRA_KEYS["v1"]: {"plan": "starter", "concurrent": JOBS}},
        vydra_rate_window_seconds=WINDOW_S,
        job_seconds=0.2,
    )


async def served(emulator: Emulator) -> dict[str, Any]:
    stats: dict[str, Any] = await emulator.stats()
    account: dict[str, Any] = stats["vydra"]["accounts"][VYDRA_KEYS["v1"]]
    return account


async def test_a_plan_learnt_from_headers_is_every_workers_budget_from_the_first_window(
    emulator: Emulator, spawn: Any, redis_client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await emulator.fault(path_prefix="/api/v1/account/rate-limits", status=500, count=100_000)
    accounts: dict[str, AccountSpec] = {"vydra/v1": {"max_jobs": JOBS, "rate_window_seconds": WINDOW_S}}
    env = process_env(tmp_path, redis_url, emulator.url, accounts)
    client = Client(redis_client)
    job_ids = [await client.submit("vydra", "generate_image", {"model": "gemini-image"}) for _ in range(JOBS)]
    for _ in range(2):
        spawn("worker", env)

    async def plan_learnt() -> bool:
        reported = await redis_client.hget(keys.request_limit_key("vydra", "org:org_1001"), "minute")
        return bool(reported == str(STARTER_RPM))

    async with asyncio.timeout(60):
        await until(plan_learnt)
    # From the window after the first answer on: the plan's window stays mostly used.
    await asyncio.sleep(WINDOW_S)
    before = await served(emulator)
    await asyncio.sleep(MEASURED_WINDOWS * WINDOW_S)  # a measured span, not a wait for an event
    after = await served(emulator)
    jobs = [await client.get(job_id) for job_id in job_ids]
    waiting = [job for job in jobs if job is not None and job["status"]["type"] == "queued"]
    assert waiting, "every job started: the span measured was not one where jobs waited"
    used = (after["requests"] - before["requests"]) / (MEASURED_WINDOWS * STARTER_RPM)
    assert used >= 0.8, f"{used:.2f} of the Starter plan's requests used while jobs waited"
    assert after["rejected_429_rate"] == 0
    assert after["max_requests_in_window"] <= STARTER_RPM


async def test_requests_made_elsewhere_with_the_key_are_counted_from_vydras_remaining(
    emulator: Emulator, spawn: Any, redis_client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Another tool spent most of the window with the same key before genrelay started: vydra's
    ``X-RateLimit-Remaining`` corrects the budget, so genrelay draws (almost) none of the 429s the
    rest of the window would give."""
    elsewhere = STARTER_RPM - 6
    headers = {"Authorization": f"Bearer {VYDRA_KEYS['v1']}"}
    for _ in range(elsewhere):
        async with emulator.session.get(f"{emulator.url}/api/v1/jobs", headers=headers) as resp:
            assert resp.status == 200
    accounts: dict[str, AccountSpec] = {"vydra/v1": {"max_jobs": JOBS, "rate_window_seconds": WINDOW_S}}
    env = process_env(tmp_path, redis_url, emulator.url, accounts)
    client = Client(redis_client)
    for _ in range(40):
        await client.submit("vydra", "generate_image", {"model": "gemini-image"})
    spawn("worker", env)

    budget = keys.request_budget_key("vydra", organization_holder("org_1001"))

    async def window_counted() -> bool:  # by vydra's own count, or by the requests genrelay made
        return bool(await redis_client.zcard(budget) >= STARTER_RPM - 1)

    async def next_window_used() -> bool:
        return bool((await served(emulator))["requests"] >= elsewhere + STARTER_RPM)

    async with asyncio.timeout(60):
        await until(window_counted)
        await until(next_window_used)
    assert (await served(emulator))["rejected_429_rate"] <= 3
