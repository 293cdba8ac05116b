"""Helpers of the archive tests: a worker and the web API over the emulator, a real S3 HTTP server
(moto's server mode) on loopback, and waiting on the archive's events stream instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from daemon import archive_state
from daemon.settings import Settings
from daemon.web.app import create_app
from tests.conftest import Emulator

API = TestClient[web.Request, web.Application]

BUCKET = "genrelay-archive"


class S3Server:
    """moto's S3 in server mode on 127.0.0.1 (a thread of this process), with one bucket."""

    def __init__(self) -> None:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def start(self) -> str:
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self.endpoint

    async def create_bucket(self) -> None:
        async with aiohttp.ClientSession() as session, session.put(f"{self.endpoint}/{BUCKET}") as resp:
            assert resp.status == 200, await resp.text()

    def env(self) -> dict[str, str]:
        return {
            "GENRELAY_ARCHIVE_URL": f"s3://{BUCKET}/archive",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_REGION": "us-east-1",
        }

    def stop(self) -> None:
        self.server.stop()


async def start_archive(
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    start_worker: Any,
    aiohttp_client: AiohttpClient,
    redis_url: str,
    accounts: dict[str, Any],
    **env: str,
) -> tuple[Settings, API]:
    """A worker (copy claims live 2 s) and the web API for ``accounts``; the emulator's artifact URLs
    on its own (loopback) address."""
    await emulator.configure(public_base=emulator.url)
    settings = make_settings(emulator.url, accounts=accounts, GENRELAY_ARCHIVE_CLAIM_TTL="2", **env)
    await start_worker(settings)
    return settings, await aiohttp_client(create_app(settings, redis_url))


def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def archive_settled(
    client: aioredis.Redis, provider: str, asset_id: str, state: str | None = None
) -> str:
    """Wait for the settled outcome of ``asset_id``'s copy (that ``state`` when given; bound it with
    ``asyncio.timeout``)."""
    stream = archive_state.events_key(provider)
    last = "0-0"
    while True:
        for _, entries in await client.xread({stream: last}, block=1000, count=1000):
            for entry_id, fields in entries:
                last = entry_id
                if fields["asset"] == asset_id and state in (None, fields["state"]):
                    return str(fields["state"])


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` holds (bound it with ``asyncio.timeout``)."""
    while not await check():  # noqa: ASYNC110 (another process's file or HTTP log: nothing to subscribe to)
        await asyncio.sleep(0.05)
