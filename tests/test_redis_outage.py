"""Redis goes away and comes back: the web answers 503 (never 500) meanwhile, and recovers by itself."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from daemon.redis import EmbeddedRedis
from daemon.settings import Settings
from daemon.web.app import create_app
from tests.conftest import process_env

JOB = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "x"}}


async def test_readyz_goes_503_while_redis_is_down_and_back_to_200(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    url = server.start()
    settings = Settings.from_env(process_env(tmp_path, url, "http://127.0.0.1:9", {"a1": 1}))
    client = TestClient(TestServer(create_app(settings, url), host="127.0.0.1"))
    await client.start_server()
    port = server.port
    restarted = EmbeddedRedis(tmp_path / "redis", port=port, appendonly=True)
    try:
        assert (await client.get("/readyz")).status == 200
        server.stop()
        down = await client.get("/readyz")
        assert down.status == 503
        assert "Redis" in (await down.json())["error"]
        refused = await client.post("/v1/jobs", json=JOB)
        assert refused.status == 503
        assert (await refused.json())["code"] == 503
        # Same port, same AOF: the data (accounts included) is back, and so is the web.
        restarted.start()
        assert (await client.get("/readyz")).status == 200
        assert (await client.post("/v1/jobs", json=JOB)).status == 202
    finally:
        await client.close()
        restarted.stop()
        server.stop()
