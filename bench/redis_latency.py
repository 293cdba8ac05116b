"""Throughput with 200 ms of latency on the Redis link (scenario C26 of
docs/fault-scenarios.md; correctness is tested in tests/test_faults_redis.py, speed is measured here only).

Run: ``make bench`` or ``.venv/bin/python -m bench.redis_latency``. The same 40 jobs of 0.2 s (the
emulator's duration knob) on 8 slots go through one ``genrelay worker`` process twice: straight to
Redis, then through the fault proxy adding 200 ms to every reply. It reports jobs per second of
each run (first event to last, on the Redis clock) and their ratio.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from bench.common import embedded_redis, emulator, quiet, write_accounts
from daemon import keys
from daemon.jobs import JobRequest
from daemon.services import open_services
from daemon.settings import Settings
from emulator.config import EmulatorConfig
from tests.harness.proxy import FaultProxy

JOBS = 40
ACCOUNTS = {"a1": 2, "a2": 3, "a3": 3}
LATENCY_MS = 200
PARAMS = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


async def jobs_per_second(redis_url: str, latency_ms: float, workdir: Path) -> float:
    config = EmulatorConfig(keys={f"k-{n}": m for n, m in ACCOUNTS.items()}, job_seconds=0.2)
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    proxy = await FaultProxy(host, int(port)).start()
    if latency_ms:
        proxy.latency(latency_ms)
    async with emulator(config) as base_url:
        env = {
            **os.environ,
            "GENRELAY_ACCOUNTS": str(write_accounts(workdir / "accounts.toml", base_url, ACCOUNTS)),
            "GENRELAY_REDIS_URL": proxy.url,
            "GENRELAY_POLL_INTERVAL": "0.05",
            "GENRELAY_LOG_LEVEL": "warning",
            "GENRELAY_LOG_FORMAT": "json",
            **{f"BENCH_KEY_{n.upper()}": f"k-{n}" for n in ACCOUNTS},
        }
        services = await open_services(Settings.from_env(env), redis_url)
        await services.client.flushdb()
        await services.slots.sync_accounts()
        log = (workdir / f"worker-{latency_ms:g}.log").open("wb")
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "worker", env=env, stdout=log, stderr=log
        )
        try:
            for n in range(JOBS):
                body = {
                    "provider": "ltx",
                    "operation": "text-to-video",
                    "params": {"prompt": f"[ok] {n}", **PARAMS},
                }
                await services.store.create(JobRequest.from_json(body))
            first, last, done = None, 0, 0
            last_id = "0-0"
            async with asyncio.timeout(600):
                while done < JOBS:
                    for _, entries in await services.client.xread(
                        {keys.events_key("ltx"): last_id}, block=1000, count=1000
                    ):
                        for entry_id, fields in entries:
                            last_id = entry_id
                            ts = int(fields["ts"])
                            first = ts if first is None else first
                            if fields["state"] in ("completed", "failed"):
                                done, last = done + 1, ts
        finally:
            worker.terminate()
            await worker.wait()
            log.close()
            await services.close()
            await proxy.close()
    assert first is not None
    return JOBS / max(0.001, (last - first) / 1000)


async def run(redis_url: str, workdir: Path) -> tuple[float, float]:
    direct = await jobs_per_second(redis_url, 0, workdir)
    slowed = await jobs_per_second(redis_url, LATENCY_MS, workdir)
    return direct, slowed


def main() -> None:
    quiet()
    with embedded_redis() as url, tempfile.TemporaryDirectory() as tmp:
        direct, slowed = asyncio.run(run(url, Path(tmp)))
    print(
        f"redis latency: {JOBS} jobs of 0.2 s on {sum(ACCOUNTS.values())} slots, {direct:.1f} jobs/s "
        f"straight to Redis, {slowed:.1f} jobs/s with {LATENCY_MS} ms on every Redis reply: "
        f"ratio {slowed / direct:.2f}"
    )


if __name__ == "__main__":
    main()
