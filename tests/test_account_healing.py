"""Accounts that heal (workers/account_probe.py): a disabled account is probed with a request that
costs no credits and enabled again once its key works, over real worker processes and the emulator
over HTTP; the operator's alert URL gets the signed events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.alerts import ACCOUNT_DISABLED, ACCOUNT_ENABLED, CREDITS_LOW
from daemon.client import Client
from daemon.deliveries import derive_secret
from daemon.slots import OPERATOR_REASON
from emulator.config import EmulatorConfig
from tests.alert_receiver import AlertReceiver
from tests.archive_support import until
from tests.conftest import API_KEYS, VYDRA_KEYS, Emulator, process_env
from tests.harness.invariants import TEST_SECRET
from tests.harness.processes import ProcessGroup

T2V = {"model": "ltx-2-3-fast", "duration": 4, "resolution": "1920x1080"}
SECRET = derive_secret(TEST_SECRET)
VYDRA_KEY = VYDRA_KEYS["v1"]


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        keys={API_KEYS["a1"]: 3, API_KEYS["a2"]: 1},
        vydra_accounts={VYDRA_KEY: {"plan": "creator", "rpm": 600, "credits": 0}},
        job_seconds=0.1,
    )


async def disabled(redis: aioredis.Redis, provider: str) -> dict[str, str]:
    found: dict[str, str] = await redis.hgetall(keys.provider_keys(provider).disabled)
    return found


async def account_events(redis: aioredis.Redis, provider: str) -> list[dict[str, Any]]:
    return [fields for _, fields in await redis.xrange(keys.account_events_key(provider))]


async def test_a_disabled_ltx_account_is_enabled_by_the_probe_once_its_key_works(
    emulator: Emulator,
    app_client: Client,
    daemon_processes: ProcessGroup,
    alert_receiver: AlertReceiver,
    tmp_path: Any,
    redis_url: str,
) -> None:
    """a1's key is revoked: its first submit gets 401, a1 is disabled (alert) and the job completes
    on a2; the probes that follow are refused and a1 stays disabled; once the key is restored, the
    next probe enables a1 (event, alert) and a1 takes jobs again."""
    env = process_env(
        tmp_path,
        redis_url,
        emulator.url,
        {"a1": 3, "a2": 1},
        GENRELAY_ACCOUNT_PROBE_INTERVAL="0.2",
        GENRELAY_ALERT_URL=alert_receiver.url,
    )
    await emulator.control("POST", "revoked-keys", {"key": API_KEYS["a1"]})
    workers = [await daemon_processes.worker(env) for _ in range(2)]
    async with asyncio.timeout(60):
        job = await app_client.wait(
            await app_client.submit("ltx", "text-to-video", {"prompt": "[ok]", **T2V})
        )
        assert job["status"]["type"] == "completed" and job["account"] == "a2", job
        reason = (await disabled(app_client.redis, "ltx"))["a1"]
        assert "401" in reason
        refused = await alert_receiver.wait_for(SECRET, ACCOUNT_DISABLED, account="a1")
        assert refused["provider"] == "ltx" and refused["status"] == 401 and "401" in refused["message"]

        # Probes while the key is still revoked: refused, and a1 stays disabled.
        async def probed_twice() -> bool:
            return sum(w.text().count("account probe: still refused") for w in workers) >= 2

        await until(probed_twice)
        assert "a1" in await disabled(app_client.redis, "ltx")

        await emulator.control("POST", "revoked-keys", {"key": API_KEYS["a1"], "revoked": False})

        async def healed() -> bool:
            return "a1" not in await disabled(app_client.redis, "ltx")

        await until(healed)
        enabled = await alert_receiver.wait_for(SECRET, ACCOUNT_ENABLED, account="a1")
        assert enabled["provider"] == "ltx" and "401" in enabled["message"]
        events = await account_events(app_client.redis, "ltx")
        assert [(e["account"], e["event"]) for e in events] == [("a1", "account_enabled")]
        # a1 (3 slots) has the most room again: the next job runs there.
        job = await app_client.wait(
            await app_client.submit("ltx", "text-to-video", {"prompt": "[ok]", **T2V})
        )
        assert job["status"]["type"] == "completed" and job["account"] == "a1", job
    assert sum(w.text().count("account enabled again") for w in workers) == 1
    for _, body in alert_receiver.requests:
        assert API_KEYS["a1"].encode() not in body and TEST_SECRET.encode() not in body


async def test_a_vydra_account_out_of_credits_alerts_and_heals_by_its_rate_limits_read(
    emulator: Emulator,
    app_client: Client,
    daemon_processes: ProcessGroup,
    alert_receiver: AlertReceiver,
    tmp_path: Any,
    redis_url: str,
) -> None:
    """A vydra submit refused with 402 disables the account and alerts account.disabled and
    account.credits_low, signed with GENRELAY_ALERT_SECRET; the probe (``/account/rate-limits``,
    from the request budget) enables it again, and once credits are bought the job completes."""
    alert_secret = "whsec_" + "QUxFUlRTRUNSRVRBTEVSVFNFQ1JFVEFMRVJUU0VDUkVU"
    env = process_env(
        tmp_path,
        redis_url,
        emulator.url,
        {"vydra/v1": {"max_jobs": 2, "requests_per_minute": 600}},
        GENRELAY_ACCOUNT_PROBE_INTERVAL="0.3",
        GENRELAY_ALERT_URL=alert_receiver.url,
        GENRELAY_ALERT_SECRET=alert_secret,
    )
    await daemon_processes.worker(env)
    async with asyncio.timeout(60):
        job_id = await app_client.submit("vydra", "generate_image", {"prompt": "a fox"})
        job = await app_client.wait(job_id)
        # The only account is disabled: the job has no account left.
        assert job["status"]["type"] == "failed", job
        low = await alert_receiver.wait_for(alert_secret, CREDITS_LOW, account="v1")
        assert low["provider"] == "vydra" and low["status"] == 402
        assert (await alert_receiver.wait_for(alert_secret, ACCOUNT_DISABLED, account="v1"))["status"] == 402
        await alert_receiver.wait_for(alert_secret, ACCOUNT_ENABLED, account="v1")
        await emulator.control("POST", "vydra-accounts", {"key": VYDRA_KEY, "credits": 1000})
        job = await app_client.wait(await app_client.submit("vydra", "generate_image", {"prompt": "a fox"}))
        assert job["status"]["type"] == "completed", job
    with pytest.raises(Exception):  # noqa: B017 (signed with the alert secret, not the delivery one)
        alert_receiver.verified(SECRET)


async def test_the_probe_leaves_operator_disabled_accounts_and_takes_one_lock_per_account(
    emulator: Emulator, make_settings: Any, open_daemon: Any
) -> None:
    """In one worker runtime: an account an operator disabled is never probed; a probe lock held by
    another worker this interval skips the account; a working key is enabled through set_account."""
    from workers.account_probe import probe_once
    from workers.runtime import WorkerRuntime, provider_session

    settings = make_settings(emulator.url, accounts={"a1": 3, "a2": 1})
    services = await open_daemon(settings)
    runtime = WorkerRuntime(services, provider_session(4))
    try:
        await services.slots.set_enabled("ltx", "a1", enabled=False)
        await services.slots.set_enabled("ltx", "a2", enabled=False, reason="LTX 401 authentication_error")
        await services.client.set(keys.probe_lock_key("ltx", "a2"), "1", px=60_000)
        assert await probe_once(runtime) == []
        await services.client.delete(keys.probe_lock_key("ltx", "a2"))
        assert await probe_once(runtime) == [("ltx", "a2")]
        assert await disabled(services.client, "ltx") == {"a1": OPERATOR_REASON}
        before = (await emulator.stats())["keys"]
        assert await probe_once(runtime) == []  # a1 is the operator's: not even probed
        assert (await emulator.stats())["keys"] == before
    finally:
        await runtime.session.close()
