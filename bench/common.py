"""What the benchmarks share: a throwaway embedded Redis, the emulator on a loopback port, and the
baseline every figure is divided by (one redis-py round trip, measured in the same run)."""

from __future__ import annotations

import bisect
import itertools
import signal
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from daemon.embedded_redis import EmbeddedRedis
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
async def emulator(config: EmulatorConfig, traffic: ProviderTraffic | None = None) -> AsyncIterator[str]:
    """The emulator in this process on a free loopback port; ``traffic`` sees every answer it sends."""
    app = create_app(config)
    if traffic is not None:
        app.on_response_prepare.append(traffic.record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class ProviderTraffic:
    """What the emulator answered, as the provider sees it: request counts, and for LTX jobs the
    time of their submission and of every status read (for poll lateness measured at the provider).

    Lateness of a status read = its distance from the previous answer about the same job minus the
    poll interval: the worker schedules the next read one interval after it handled the previous
    answer, so this is the poll's lateness plus the (small) handling time, an upper bound.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.status_reads = 0
        self.server_errors = 0
        # job id -> times (monotonic s) of the 2xx answers about it: its submission, then each read
        self.answers: dict[str, list[float]] = {}
        self.read_times: list[float] = []

    async def record(self, request: web.Request, response: web.StreamResponse) -> None:
        path = request.path
        if path.startswith("/_emulator"):
            return
        self.requests += 1
        status = response.status
        if status >= 500:
            self.server_errors += 1
        if not path.startswith("/v2/"):
            return
        now = time.monotonic()
        parts = path.split("/")
        if request.method == "GET" and len(parts) == 4:
            self.status_reads += 1
            self.read_times.append(now)
            if status == 200:
                self.answers.setdefault(parts[3], []).append(now)
        elif request.method == "POST" and status == 202 and isinstance(response, web.Response):
            body = response.body
            if isinstance(body, bytes):
                self.answers.setdefault(orjson.loads(body)["id"], []).append(now)

    def reads_between(self, start: float, end: float) -> int:
        return bisect.bisect_left(self.read_times, end) - bisect.bisect_left(self.read_times, start)

    def lateness_ms(self, interval_s: float, start: float = 0.0, end: float = float("inf")) -> list[float]:
        """Lateness of every status read answered in [start, end) that followed a 2xx answer."""
        late = []
        for times in self.answers.values():
            for before, after in itertools.pairwise(times):
                if start <= after < end:
                    late.append(max(0.0, (after - before - interval_s) * 1000))
        return late


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


def stop_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, a CI runner) into KeyboardInterrupt, so the ``finally`` blocks
    still stop every process the benchmark started; the default action would orphan them."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


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
