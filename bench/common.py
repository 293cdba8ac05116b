"""What the benchmarks share: a throwaway embedded Redis, the emulator on a loopback port, and the
baseline every figure is divided by (one redis-py round trip, measured in the same run)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import web

from daemon.redis import EmbeddedRedis
from emulator.app import create_app
from emulator.config import EmulatorConfig


@contextmanager
def embedded_redis() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="genrelay-bench-") as data:
        server = EmbeddedRedis(Path(data), appendonly=False)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@asynccontextmanager
async def emulator(config: EmulatorConfig) -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def round_trip_us(client: aioredis.Redis, rounds: int = 2000) -> float:
    """Median microseconds of one EVALSHA of a trivial script: the unit every figure is divided by."""
    sha = await client.script_load("return 1")
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await client.evalsha(sha, 0)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def quiet() -> None:
    """Keep the benchmark's own output to its figures."""
    from daemon.logs import configure_logging

    configure_logging(level="warning", fmt="console")


def parse_iso_ms(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def write_accounts(path: Path, base_url: str, accounts: dict[str, int]) -> Path:
    tables = [
        f'[[account]]\nprovider = "ltx"\nname = "{name}"\nmax_jobs = {max_jobs}\n'
        f'api_key_env = "BENCH_KEY_{name.upper()}"\nbase_url = "{base_url}"\n'
        for name, max_jobs in accounts.items()
    ]
    path.write_text("\n".join(tables), encoding="utf-8")
    return path
