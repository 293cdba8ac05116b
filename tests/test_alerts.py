"""Operator alerts (daemon/alerts.py, workers/alerts.py): a delivery that becomes a dead letter is
alerted, the alert is retried when the operator's endpoint fails, and every attempt carries the
same id, signed so that the standardwebhooks package verifies it with the delivery secret."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon import keys
from daemon.alerts import DEAD_LETTER
from daemon.client import Client
from daemon.deliveries import derive_secret
from emulator.config import EmulatorConfig
from tests.alert_receiver import AlertReceiver
from tests.archive_support import until
from tests.conftest import API_KEYS, Emulator, process_env
from tests.harness.invariants import TEST_SECRET
from tests.harness.processes import ProcessGroup

T2V = {"model": "ltx-2-3-fast", "duration": 4, "resolution": "1920x1080"}


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 2}, job_seconds=0.1)


async def test_a_dead_letter_is_alerted_and_a_failing_alert_endpoint_gets_it_again(
    emulator: Emulator,
    app_client: Client,
    daemon_processes: ProcessGroup,
    alert_receiver: AlertReceiver,
    tmp_path: Any,
    redis_url: str,
) -> None:
    app = web.Application()

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app.router.add_post("/hook", broken)
    failing_app = TestServer(app, host="127.0.0.1")
    await failing_app.start_server()
    alert_receiver.answers = [503]
    env = process_env(
        tmp_path,
        redis_url,
        emulator.url,
        {"a1": 2},
        GENRELAY_ALERT_URL=alert_receiver.url,
        GENRELAY_DELIVERY_MAX_TRIES="2",
        GENRELAY_DELIVERY_ALLOW_PRIVATE="1",
    )
    try:
        await daemon_processes.worker(env)
        async with asyncio.timeout(60):
            reply_url = str(failing_app.make_url("/hook?token=app-capability"))
            job_id = await app_client.submit(
                "ltx", "text-to-video", {"prompt": "[ok]", **T2V}, reply_url=reply_url
            )
            alert = await alert_receiver.wait_for(derive_secret(TEST_SECRET), DEAD_LETTER)

            async def forgotten() -> bool:
                return not await app_client.redis.exists(keys.ALERT_BODIES)

            await until(forgotten)
    finally:
        await failing_app.close()
    assert alert["jobId"] == job_id and alert["provider"] == "ltx" and alert["account"] == "a1"
    assert alert["status"] == 500 and "2 attempt" in alert["message"] and "127.0.0.1" in alert["message"]
    assert set(alert) >= {"type", "provider", "account", "message", "at"}
    # The first attempt got 503, the second 200: the same alert id both times.
    assert len(alert_receiver.requests) == 2
    assert len({headers["webhook-id"] for headers, _ in alert_receiver.requests}) == 1
    assert all(b"app-capability" not in body for _, body in alert_receiver.requests)
    assert await app_client.redis.zcard(keys.ALERTS) == 0
