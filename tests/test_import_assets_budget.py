"""``genrelay import-assets`` takes every provider request it makes from the account's request
budget in Redis, the one the workers take from: a listing cannot spend a vydra plan's minute
behind the workers' backs. Real Redis, the emulator over HTTP, the command as a process."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.providers.vydra import organization_holder
from emulator.config import EmulatorConfig
from tests.conftest import VYDRA_KEYS, Emulator, process_env

pytestmark = pytest.mark.timeout(120)

WAIT_S = 60


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(vydra_accounts={VYDRA_KEYS["v1"]: {"rpm": 30, "concurrent": 2}})


async def test_import_assets_requests_are_taken_from_the_request_budget(
    emulator: Emulator, redis_client: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    env = process_env(tmp_path, redis_url, emulator.url, {"vydra/v1": 2})
    # The emulator runs in this event loop: the command runs beside it, not blocking it.
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "daemon", "import-assets", "v1", "--provider", "vydra"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT_S):
        out, err = await command.communicate()
    assert command.returncode == 0, err.decode()
    assert "vydra account v1" in out.decode(), out.decode()
    stats: dict[str, Any] = await emulator.stats()
    served = stats["vydra"]["accounts"][VYDRA_KEYS["v1"]]["requests"]
    assert served >= 3  # the account's organisation, its plan's limits, the listing
    # vydra counts every request in the organisation's windows: so does the organisation's budget
    # (the question that found the organisation included).
    taken = await redis_client.zcard(keys.request_budget_key("vydra", organization_holder("org_1001")))
    assert taken == served
