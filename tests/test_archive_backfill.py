"""``genrelay archive backfill`` copies assets recorded before the archive existed, with progress;
an imported asset (``genrelay import-assets``) is queued for the archive by its record itself."""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from daemon import archive_state
from daemon.assets import AssetStore
from daemon.cli.archive_backfill import run_backfill
from daemon.services import Services
from daemon.settings import Settings
from emulator.artifacts import sha256_of
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, Emulator

pytestmark = pytest.mark.timeout(120)

SIZE = 100_000


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 2}, artifact_bytes=SIZE)


def imported(base: str, name: str) -> dict[str, str]:
    return {
        "provider": "ltx",
        "account": "a1",
        "type": "videos",
        "url": f"{base}/files/{name}",
        "mime": "video/mp4",
        "provider_asset_id": name,
        "created_ms": str(int(time.time() * 1000)),
        "source": "import",
    }


async def test_backfill_copies_earlier_assets(
    redis_client: aioredis.Redis,
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    open_daemon: Callable[..., object],
    redis_url: str,
) -> None:
    await emulator.configure(public_base=emulator.url)
    settings = make_settings(emulator.url, GENRELAY_ARCHIVE_ALLOW_PRIVATE="1")
    services: Services = await open_daemon(settings)  # type: ignore[assignment]
    store = AssetStore(services.client, services.scripts, settings)
    names = [f"earlier-{n}.mp4" for n in range(3)]
    ids = [(await store.record_import(imported(emulator.url, name))).asset_id for name in names]
    # Recorded through the import: queued for the archive by the record itself.
    queue = archive_state.queue_key("ltx")
    assert await redis_client.zcard(queue) == 3
    await redis_client.delete(queue)  # as if recorded before the archive existed
    err = io.StringIO()
    code = await run_backfill(settings, redis_url, argparse.Namespace(no_wait=False), err)
    assert code == 0, err.getvalue()
    assert "3 assets queued" in err.getvalue() and "3/3 (3 archived)" in err.getvalue()
    for asset_id, name in zip(ids, names, strict=True):
        asset = await store.get(asset_id)
        assert asset is not None
        assert asset["archive"]["state"] == "archived"
        assert asset["archive"]["sha256"] == sha256_of(name, SIZE)
    # Nothing left to do the second time.
    err = io.StringIO()
    assert await run_backfill(settings, redis_url, argparse.Namespace(no_wait=False), err) == 0
    assert "0 assets queued" in err.getvalue()
