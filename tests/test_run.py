"""``genrelay run`` on the embedded default: one command starts Redis, web and worker; SIGTERM stops
them all; a second run on the same data dir finds the first run's jobs."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import aiohttp

from daemon.client import Client
from daemon.embedded_redis import find_running
from tests.conftest import API_KEYS, Emulator, write_accounts

READY = "genrelay web listening on"
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_run_starts_everything_stops_cleanly_and_keeps_jobs(
    tmp_path: Path, emulator: Emulator, daemon_processes
) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "var"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "GENRELAY_REDIS_URL"},
        "GENRELAY_ACCOUNTS": str(write_accounts(tmp_path / "accounts.toml", emulator.url, {"a1": 2})),
        "GENRELAY_DATA_DIR": str(data_dir),
        "GENRELAY_PORT": str(port),
        "GENRELAY_POLL_INTERVAL": "0.1",
        "GENRELAY_LOG_FORMAT": "json",
        "LTX_KEY_A1": API_KEYS["a1"],
    }
    first = await daemon_processes("run", env, ready_line=READY)
    url = find_running(data_dir)
    assert url is not None
    body = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "[ok]", **T2V}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/v1/jobs", json=body) as resp:
            assert resp.status == 202
            job_id = (await resp.json())["jobId"]
    client = await Client.connect(url)
    try:
        async with asyncio.timeout(30):
            assert (await client.wait(job_id))["status"]["type"] == "completed"
    finally:
        await client.close()
    assert await first.stop() == 0
    assert find_running(data_dir) is None, "the embedded Redis outlived genrelay run"

    second = await daemon_processes("run", env, ready_line=READY)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/v1/jobs/{job_id}") as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["status"]["type"] == "completed"
    finally:
        assert await second.stop() == 0
