"""Every window of vydra's request limits is budgeted, for the organisation: with a plan of 60
requests a minute and 100 an hour, two accounts of one organisation (found with vydra's
``GET /organization``, not told in the accounts file) keep together within the organisation's
hour while jobs wait, and vydra answers no 429. Real Redis, two worker processes, the emulator over
HTTP; the minute is time-scaled to 0.5 s (the hour to 30 s), and the run is shorter than an hour."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.client import Client
from daemon.providers.vydra import organization_holder
from daemon.settings import Settings
from emulator.config import EmulatorConfig
from tests.archive_support import until
from tests.conftest import VYDRA_KEYS, AccountSpec, Emulator, process_env

pytestmark = pytest.mark.timeout(180)

MINUTE_S = 0.5
PER_MINUTE, PER_HOUR = 60, 100
ORGANIZATION = "org_studio"
JOBS = 120


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    plan = {"rpm": PER_MINUTE, "rph": PER_HOUR, "concurrent": JOBS, "organization": ORGANIZATION}
    return EmulatorConfig(
        vydra_accounts={VYDRA_KEYS["v1"]: plan, VYDRA_KEYS["v2"]: plan},
        vydra_rate_window_seconds=MINUTE_S,
        job_seconds=0.2,
    )


async def vydra_stats(emulator: Emulator) -> dict[str, Any]:
    stats: dict[str, Any] = await emulator.stats()
    vydra: dict[str, Any] = stats["vydra"]
    return vydra


async def test_two_accounts_of_one_organisation_stay_within_its_hour(
    emulator: Emulator,
    spawn: Any,
    open_daemon: Any,
    redis_client: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    spec: AccountSpec = {"max_jobs": JOBS, "rate_window_seconds": MINUTE_S}
    env = process_env(tmp_path, redis_url, emulator.url, {"vydra/v1": spec, "vydra/v2": spec})
    client = Client(redis_client)
    job_ids = [await client.submit("vydra", "generate_image", {"model": "gemini-image"}) for _ in range(JOBS)]
    for _ in range(2):
        spawn("worker", env)

    async def hour_nearly_used() -> bool:
        organization = (await vydra_stats(emulator))["organizations"][ORGANIZATION]
        return bool(organization["max_requests_in_hour"] >= PER_HOUR - 5)

    async with asyncio.timeout(25):  # within the (scaled) hour of the first request
        await until(hour_nearly_used)
        # The budget holds: minutes go by with jobs waiting and the hour stays under its limit.
        limit_key = keys.request_limit_key("vydra", organization_holder(ORGANIZATION))
        assert await redis_client.hget(limit_key, "hour") == str(PER_HOUR)
        for _ in range(6):
            await asyncio.sleep(MINUTE_S)  # minutes of the run, not a wait for an event
        # Each account shows the organisation's budget, every window of it.
        services = await open_daemon(Settings.from_env(env))
        capacity = await services.slots.capacity("vydra")
        budgets = [entry["requestBudget"] for entry in capacity["available"]]
        assert len(budgets) == 2 and budgets[0] == budgets[1], budgets
        assert budgets[0]["hour"]["limit"] == PER_HOUR and budgets[0]["minute"]["limit"] == PER_MINUTE
        assert PER_HOUR - 10 <= budgets[0]["hour"]["used"] <= PER_HOUR
        assert budgets[0]["day"]["used"] >= budgets[0]["hour"]["used"]
    vydra = await vydra_stats(emulator)
    assert vydra["organizations"][ORGANIZATION]["max_requests_in_hour"] <= PER_HOUR
    assert vydra["organizations"][ORGANIZATION]["max_requests_in_minute"] <= PER_MINUTE
    for key in (VYDRA_KEYS["v1"], VYDRA_KEYS["v2"]):
        account = vydra["accounts"][key]
        assert account["organization"] == ORGANIZATION
        assert account["rejected_429_rate"] == account["rejected_429_rate_hour"] == 0, account
        assert account["requests"] > 0, "both accounts were used"
    jobs = [await client.get(job_id) for job_id in job_ids]
    assert any(job is not None and job["status"]["type"] == "queued" for job in jobs), "no job waited"
