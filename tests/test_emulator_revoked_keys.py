"""The emulator's revoked keys (``POST /_emulator/revoked-keys``): a key or token of any provider
answers 401 while revoked, as that provider answers an invalid key, and works again once restored;
vydra reports the credits it has left."""

from __future__ import annotations

from typing import Any

import pytest

from emulator.config import EmulatorConfig
from tests.conftest import USEAPI_TOKEN, VYDRA_KEYS, Emulator

LTX_KEY = "ltxv-revocable-key"
VYDRA_KEY = VYDRA_KEYS["v1"]
EMAIL = "me@example.com"
KLING_EMAIL = "kling@example.com"


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        keys={LTX_KEY: 2},
        useapi_accounts={USEAPI_TOKEN: {EMAIL: 2}},
        useapi_services={"kling": {USEAPI_TOKEN: {KLING_EMAIL: 2}}},
        vydra_accounts={VYDRA_KEY: {"plan": "starter", "credits": 1234}},
        job_seconds=0.0,
    )


async def status_of(emulator: Emulator, path: str, key: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with emulator.session.get(f"{emulator.url}{path}", headers=headers) as resp:
        return resp.status, await resp.json()


# The credit-free reads genrelay's account probe makes, per provider.
PROBES = [
    ("/v2/text-to-video/probe-unknown-id", LTX_KEY, 404),
    ("/v1/ltxstudio/scheduler/available", USEAPI_TOKEN, 200),
    ("/v1/kling/scheduler/available", USEAPI_TOKEN, 200),
    ("/api/v1/account/rate-limits", VYDRA_KEY, 200),
]


@pytest.mark.parametrize(("path", "key", "valid_status"), PROBES)
async def test_a_revoked_key_is_401_until_restored(
    emulator: Emulator, path: str, key: str, valid_status: int
) -> None:
    assert (await status_of(emulator, path, key))[0] == valid_status
    revoked = await emulator.control("POST", "revoked-keys", {"key": key})
    assert revoked == {"revoked": [key]}
    assert (await emulator.control("GET", "revoked-keys"))["revoked"] == [key]
    assert (await emulator.stats())["revoked_keys"] == [key]
    status, body = await status_of(emulator, path, key)
    assert status == 401
    assert "error" in body
    restored = await emulator.control("POST", "revoked-keys", {"key": key, "revoked": False})
    assert restored == {"revoked": []}
    assert (await status_of(emulator, path, key))[0] == valid_status


async def test_a_revoked_ltx_key_refuses_submits_and_keeps_its_jobs(emulator: Emulator) -> None:
    headers = {"Authorization": f"Bearer {LTX_KEY}"}
    body = {"prompt": "a fox", "model": "ltx-2-3-fast", "duration": 4, "resolution": "1920x1080"}
    async with emulator.session.post(f"{emulator.url}/v2/text-to-video", json=body, headers=headers) as resp:
        assert resp.status == 202
        job_id = (await resp.json())["id"]
    await emulator.control("POST", "revoked-keys", {"key": LTX_KEY})
    async with emulator.session.post(f"{emulator.url}/v2/text-to-video", json=body, headers=headers) as resp:
        assert resp.status == 401
    await emulator.control("POST", "revoked-keys", {"key": LTX_KEY, "revoked": False})
    assert (await status_of(emulator, f"/v2/text-to-video/{job_id}", LTX_KEY))[0] == 200


async def test_reset_restores_every_key(emulator: Emulator) -> None:
    await emulator.control("POST", "revoked-keys", {"key": VYDRA_KEY})
    await emulator.control("POST", "reset")
    assert (await emulator.control("GET", "revoked-keys"))["revoked"] == []


async def test_malformed_revocations_are_400(emulator: Emulator) -> None:
    for body in ({}, {"key": ""}, {"key": LTX_KEY, "revoked": "yes"}):
        async with emulator.session.post(f"{emulator.url}/_emulator/revoked-keys", json=body) as resp:
            assert resp.status == 400


async def test_vydra_reports_its_credit_balance(emulator: Emulator) -> None:
    status, body = await status_of(emulator, "/api/v1/organization", VYDRA_KEY)
    assert status == 200 and body["creditsRemaining"] == 1234
    assert (await emulator.stats())["vydra"]["accounts"][VYDRA_KEY]["credits_remaining"] == 1234
