"""The per-account breaker (daemon/breaker.py, lua/breaker.lua) over real worker processes and the
emulator: a run of 5xx submits pauses the account, and its waiting jobs complete on another one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daemon import keys
from daemon.alerts import BREAKER_OPEN
from daemon.breaker import FAILURES
from daemon.client import Client
from daemon.deliveries import derive_secret
from emulator.config import EmulatorConfig
from tests.alert_receiver import AlertReceiver
from tests.conftest import API_KEYS, Emulator, process_env
from tests.harness.invariants import TEST_SECRET
from tests.harness.processes import ProcessGroup

T2V = {"model": "ltx-2-3-fast", "duration": 4, "resolution": "1920x1080"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 3, API_KEYS["a2"]: 1}, job_seconds=0.1)


async def test_a_run_of_5xx_submits_opens_the_breaker_and_jobs_complete_on_another_account(
    emulator: Emulator,
    app_client: Client,
    daemon_processes: ProcessGroup,
    alert_receiver: AlertReceiver,
    tmp_path: Any,
    redis_url: str,
) -> None:
    """a1 has the most room, so the first job goes there and retries there through 503s; the fifth
    failure opens a1's breaker (a cooldown of GENRELAY_BREAKER_COOLDOWN, an account event and a
    signed alert) and the job moves to a2. Jobs submitted while a1 is paused all run on a2."""
    env = process_env(
        tmp_path,
        redis_url,
        emulator.url,
        {"a1": 3, "a2": 1},
        GENRELAY_BREAKER_COOLDOWN="600",
        GENRELAY_ALERT_URL=alert_receiver.url,
    )
    await emulator.fault(method="POST", path_prefix="/v2/text-to-video", status=503, count=FAILURES)
    await daemon_processes.worker(env)
    await daemon_processes.worker(env)
    async with asyncio.timeout(60):
        first = await app_client.wait(
            await app_client.submit("ltx", "text-to-video", {"prompt": "[ok]", **T2V})
        )
        assert first["status"]["type"] == "completed" and first["account"] == "a2", first
        assert first["submitTries"] == FAILURES + 1
        alert = await alert_receiver.wait_for(derive_secret(TEST_SECRET), BREAKER_OPEN, account="a1")
        assert alert["provider"] == "ltx" and "503" in alert["message"]
        ids = [
            await app_client.submit("ltx", "text-to-video", {"prompt": f"[ok] {n}", **T2V}) for n in range(4)
        ]
        jobs = [await app_client.wait(job_id) for job_id in ids]
    assert [(job["status"]["type"], job["account"]) for job in jobs] == [("completed", "a2")] * 4
    events = [f for _, f in await app_client.redis.xrange(keys.account_events_key("ltx"))]
    assert [(e["account"], e["event"]) for e in events] == [("a1", "breaker_open")]
    assert await app_client.redis.zscore(keys.provider_keys("ltx").cooldown, "a1") is not None
    stats = (await emulator.stats())["keys"]
    assert stats[API_KEYS["a1"]]["submitted"] == 0 and stats[API_KEYS["a2"]]["submitted"] == 5
    assert len([1 for _, b in alert_receiver.requests if b"breaker_open" in b]) == 1
