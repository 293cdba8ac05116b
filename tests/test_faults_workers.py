"""Scenarios A1-A11 of docs/fault-scenarios.md (worker and job faults), with real worker processes
signalled by pid, the emulator as the oracle and the H6 invariant check at the end of each.

Where a scenario is covered elsewhere:

- A2 (SIGKILL after the provider accepted, adoption by replyRef): tests of the capacity mirror.
- A3 (SIGKILL while active): tests/test_worker_crash.py kills a worker with jobs active; a new
  worker's poller takes over their claims, every one completes, none is sent twice.
- A4 (SIGTERM, in-flight work shorter than the grace): tests/test_rolling_restart.py stops every
  web and worker process with SIGTERM in turn; each exits 0 and no submit try is spent.

Here: A1+A6 (killed in ``submitting``, and the poison job that kills its worker), A5 (SIGTERM
with a task longer than the grace), A7 (hung provider call), A8 (stopped event loop), A9 (a task
whose arq key expires before a worker takes it), A10 (one request id from 4 processes), A11
(status reads failing half the time).

A provider that never answers is a local socket that accepts connections and reads nothing: the
call is stuck before the provider has seen a byte of it.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon import keys
from daemon.client import Client
from daemon.jobs import JobRequest
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, USEAPI_TOKEN, Emulator, process_env
from tests.harness.events import EventLog
from tests.harness.invariants import check_invariants
from tests.harness.oracle import Oracle
from tests.harness.processes import ProcessGroup

T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
SECRETS = [*API_KEYS.values(), USEAPI_TOKEN]
# Short timings (H5): leases of 2 s, the sweep every 0.2 s, health records every 0.5 s.
FAST = {
    "GENRELAY_LEASE_TTL": "2",
    "GENRELAY_SWEEP_INTERVAL": "0.2",
    "GENRELAY_HEALTH_INTERVAL": "0.5",
    "GENRELAY_DELIVERY_TIMEOUT": "1",
}

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 3, API_KEYS["a2"]: 1}, job_seconds=0.1)


class SilentProvider:
    """A TCP port that accepts connections and never reads or answers them."""

    def __init__(self) -> None:
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._writers.append(writer)

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def silent_provider() -> AsyncIterator[SilentProvider]:
    provider = SilentProvider()
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


@pytest.fixture
async def oracle(emulator: Emulator) -> Oracle:
    return Oracle(emulator.url, emulator.session)


def worker_env(
    tmp_path: Path, redis_url: str, accounts: dict[str, tuple[int, str]], **extra: str
) -> dict[str, str]:
    """The env of the scenario's processes: ltx accounts ``name -> (maxJobs, base_url)``."""
    env = process_env(tmp_path, redis_url, "http://127.0.0.1:9", {}, **{**FAST, **extra})
    tables = [
        f'[[account]]\nprovider = "ltx"\nname = "{name}"\nmax_jobs = {max_jobs}\n'
        f'api_key_env = "LTX_KEY_{name.upper()}"\nbase_url = "{base_url}"\n'
        for name, (max_jobs, base_url) in accounts.items()
    ]
    Path(env["GENRELAY_ACCOUNTS"]).write_text("\n".join(tables), encoding="utf-8")
    return env


async def test_a1_a6_a_job_that_kills_its_worker_ends_failed_once_while_20_others_complete(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    oracle: Oracle,
    silent_provider: SilentProvider,
    daemon_processes: ProcessGroup,
) -> None:
    """A1/A6: the poison job's submission never gets an answer, and the worker that holds it is
    SIGKILLed. The job is not submitted again blind (LTX cannot be asked whether it started it):
    it ends ``failed`` with its reason after one try, and 20 jobs on another account complete."""
    silent_url = silent_provider.server.sockets[0].getsockname()
    env = worker_env(
        tmp_path,
        redis_url,
        {"a1": (3, emulator.url), "a3": (1, f"http://{silent_url[0]}:{silent_url[1]}")},
        GENRELAY_JOB_TIMEOUT="30",
    )
    events = EventLog(redis_client)
    app = Client(redis_client)
    # One task at a time: while it is stuck on the poison job this worker takes nothing else.
    holder = await daemon_processes.worker({**env, "GENRELAY_WORKER_CONCURRENCY": "1"})
    poison = await app.submit("ltx", "text-to-video", {"prompt": "[ok] poison", **T2V}, account="a3")
    async with asyncio.timeout(30):
        await events.reached(poison, "submitting")
    others = [
        await app.submit("ltx", "text-to-video", {"prompt": f"[ok] other {n}", **T2V}, account="a1")
        for n in range(20)
    ]
    await daemon_processes.worker(env)
    holder.kill()
    assert await holder.wait() < 0
    async with asyncio.timeout(60):
        jobs = {job_id: await app.wait(job_id) for job_id in [poison, *others]}
    ended = jobs.pop(poison)
    assert ended["status"]["type"] == "failed", ended
    assert ended["errorType"] in ("timeout", "submit_interrupted") and ended["status"]["message"], ended
    assert ended["submitTries"] == 1, ended
    assert [job["status"]["type"] for job in jobs.values()] == ["completed"] * 20
    assert silent_provider.connections == 1  # the poison job reached the provider's port once
    await check_invariants(
        redis_client, oracle, [poison, *others], logs=daemon_processes.logs(), secrets=SECRETS
    )


async def test_a7_a_provider_call_that_hangs_ends_the_job_failed_and_frees_its_slot(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    oracle: Oracle,
    silent_provider: SilentProvider,
    daemon_processes: ProcessGroup,
) -> None:
    """A7: a submit that never gets an answer is cut off by the task timeout. The job is not
    resubmitted blind: it fails with its reason once its lease runs out, and its slot goes to the
    next job (which hangs and ends the same way): two jobs, two connections, no slot left held."""
    silent_url = silent_provider.server.sockets[0].getsockname()
    env = worker_env(
        tmp_path,
        redis_url,
        {"a3": (1, f"http://{silent_url[0]}:{silent_url[1]}")},
        GENRELAY_JOB_TIMEOUT="1",
    )
    app = Client(redis_client)
    await daemon_processes.worker(env)
    hung = [await app.submit("ltx", "text-to-video", {"prompt": f"[ok] hung {n}", **T2V}) for n in range(2)]
    async with asyncio.timeout(60):
        jobs = [await app.wait(job_id) for job_id in hung]
    for job in jobs:
        assert job["status"]["type"] == "failed" and job["errorType"] == "timeout", job
        assert "lease expired" in job["status"]["message"], job
        assert job["submitTries"] == 1, job
    assert silent_provider.connections == 2
    await check_invariants(redis_client, oracle, hung, logs=daemon_processes.logs(), secrets=SECRETS)


async def test_a5_sigterm_cuts_off_a_task_longer_than_the_grace_and_another_worker_runs_it(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    oracle: Oracle,
    daemon_processes: ProcessGroup,
) -> None:
    """A5: the app's replyUrl holds the first delivery longer than the worker's shutdown grace.
    SIGTERM: the worker exits 0, the cut-off delivery goes back on the queue (not dead-lettered),
    and the next worker delivers it with the same webhook-id."""
    held = asyncio.Event()
    release = asyncio.Event()
    again = asyncio.Event()
    received: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(request.headers["webhook-id"])
        if len(received) > 1:
            again.set()
        if len(received) == 1:
            held.set()
            await release.wait()
        return web.json_response({"ok": True})

    receiver = web.Application()
    receiver.router.add_post("/done", receive)
    server = TestServer(receiver, host="127.0.0.1")
    await server.start_server()
    try:
        env = worker_env(
            tmp_path,
            redis_url,
            {"a1": (3, emulator.url)},
            GENRELAY_SHUTDOWN_GRACE="1",
            GENRELAY_DELIVERY_TIMEOUT="30",
            GENRELAY_DELIVERY_ALLOW_PRIVATE="1",
        )
        app = Client(redis_client)
        first = await daemon_processes.worker(env)
        job_id = await app.submit(
            "ltx", "text-to-video", {"prompt": "[ok] told", **T2V}, reply_url=str(server.make_url("/done"))
        )
        async with asyncio.timeout(30):
            await held.wait()
        assert await first.stop() == 0, first.text()[-2000:]
        await daemon_processes.worker(env)
        async with asyncio.timeout(30):
            await again.wait()
    finally:
        release.set()
        await server.close()
    assert received[0] == received[1], received
    assert await redis_client.hlen(keys.DELIVERIES_DEAD) == 0
    await check_invariants(redis_client, oracle, [job_id], logs=daemon_processes.logs(), secrets=SECRETS)


async def check_command(env: dict[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        "worker",
        "--check",
        env={**env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_a8_a_stopped_worker_goes_unhealthy_and_its_job_is_finished_once_by_another(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    oracle: Oracle,
    daemon_processes: ProcessGroup,
) -> None:
    """A8: a worker whose event loop stops (SIGSTOP) while it follows a job: its own health record
    runs out and ``genrelay worker --check`` for it fails while the other worker's passes; the
    other takes the job's poll claim over and finishes it; after SIGCONT the stopped one is healthy
    again, changed nothing and exits 0 on SIGTERM. The provider saw one submission."""
    # The lease outlives the stop: the job's poll claim (JOB_TIMEOUT) comes back to the other worker first.
    env = worker_env(
        tmp_path, redis_url, {"a1": (3, emulator.url)}, GENRELAY_JOB_TIMEOUT="1", GENRELAY_LEASE_TTL="15"
    )
    env = {**os.environ, **env}  # the check runs as its own process
    stalled_env = {**env, "GENRELAY_WORKER_NAME": "stalled"}
    live_env = {**env, "GENRELAY_WORKER_NAME": "live"}
    events = EventLog(redis_client)
    app = Client(redis_client)
    stalled = await daemon_processes.worker(stalled_env)
    job_id = await app.submit("ltx", "text-to-video", {"prompt": "[seconds=3] [ok] long", **T2V})
    async with asyncio.timeout(30):
        await events.reached(job_id, "active")
    stalled.pause()
    await daemon_processes.worker(live_env)
    stalled_key = f"{keys.ARQ_QUEUE}:health-check:stalled"
    async with asyncio.timeout(30):
        while await redis_client.exists(stalled_key):
            await events.read(block_ms=200)
    assert await check_command(stalled_env) == 1
    assert await check_command(live_env) == 0
    async with asyncio.timeout(60):
        job = await app.wait(job_id)
    assert job["status"]["type"] == "completed", job
    stalled.resume()
    async with asyncio.timeout(30):
        while not await redis_client.exists(stalled_key):
            await events.read(block_ms=200)
    assert await check_command(stalled_env) == 0
    assert await stalled.stop() == 0, stalled.text()[-2000:]
    assert (await oracle.submissions_by_prompt())["[seconds=3] [ok] long"] == 1
    await check_invariants(redis_client, oracle, [job_id], logs=daemon_processes.logs(), secrets=SECRETS)


async def test_a9_a_submit_task_lost_before_a_worker_takes_it_fails_the_job_with_a_reason(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    oracle: Oracle,
    daemon_processes: ProcessGroup,
    open_daemon,  # type: ignore[no-untyped-def]
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    """A9: a job holds its slot but its submit task is gone from the queue before any worker took it
    (an operator cleared arq's queue, a restore lost it). The job does not vanish: its lease runs
    out and it ends ``failed`` with the reason and an event, and its slot is free again."""
    services = await open_daemon(make_settings(emulator.url, {"a1": 3}, **FAST))
    env = worker_env(tmp_path, redis_url, {"a1": (3, emulator.url)})
    request = JobRequest.from_json(
        {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "[ok] x", **T2V}}
    )
    job_id = (await services.store.create(request)).job_id
    tasks = [t for t in await redis_client.zrange(keys.ARQ_QUEUE, 0, -1) if t.startswith(f"submit:{job_id}:")]
    assert len(tasks) == 1
    assert await redis_client.zrem(keys.ARQ_QUEUE, tasks[0]) == 1
    await daemon_processes.worker(env)
    events = EventLog(redis_client)
    async with asyncio.timeout(30):
        failed = await events.reached(job_id, "failed")
    job = await Client(redis_client).get(job_id)
    assert job is not None and job["errorType"] == "timeout" and "lease expired" in job["status"]["message"]
    assert failed["source"] == "sweep"
    assert (await oracle.submissions_by_prompt())["[ok] x"] == 0
    await check_invariants(redis_client, oracle, [job_id], logs=daemon_processes.logs(), secrets=SECRETS)


SUBMITTER = """
import asyncio, sys
import aiohttp
from daemon.client import Client

async def main(redis_url: str, how: str, web: str) -> None:
    client = await Client.connect(redis_url)
    await client.redis.blpop(["start"], timeout=30)
    params = {"prompt": "[ok] once", "model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
    if how == "redis":
        job_id = await client.submit("ltx", "text-to-video", params, request_id="order-17")
    else:
        body = {"provider": "ltx", "operation": "text-to-video", "params": params, "requestId": "order-17"}
        async with aiohttp.ClientSession() as http, http.post(web + "/v1/jobs", json=body) as resp:
            assert resp.status in (200, 202), resp.status
            job_id = (await resp.json())["jobId"]
    print(job_id)
    await client.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a10_one_request_id_from_4_processes_at_once_is_one_job(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    oracle: Oracle,
    daemon_processes: ProcessGroup,
) -> None:
    """A10: two processes enqueue through Redis and two through the HTTP API, released together:
    every one gets the same job id, Redis holds one job and the provider sees one submission."""
    env = worker_env(tmp_path, redis_url, {"a1": (3, emulator.url)})
    web_process = await daemon_processes.web(env)
    await daemon_processes.worker(env)
    submitters = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SUBMITTER,
            redis_url,
            how,
            web_process.address or "",
            stdout=asyncio.subprocess.PIPE,
            env={**env, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        for how in ("redis", "http", "redis", "http")
    ]
    await redis_client.rpush("start", *["go"] * len(submitters))
    async with asyncio.timeout(60):
        outputs = [(await p.communicate())[0].decode().strip() for p in submitters]
    assert [p.returncode for p in submitters] == [0] * 4
    assert len(set(outputs)) == 1, outputs
    job_id = outputs[0]
    async with asyncio.timeout(30):
        job = await Client(redis_client).wait(job_id)
    assert job["status"]["type"] == "completed", job
    assert await redis_client.zrange(keys.provider_keys("ltx").index, 0, -1) == [job_id]
    assert (await oracle.submissions_by_prompt())["[ok] once"] == 1
    await check_invariants(redis_client, oracle, [job_id], logs=daemon_processes.logs(), secrets=SECRETS)


FAULTS = 6
RETRY_BASE_S = 0.05
POLL_INTERVAL_S = 0.05
JOB_SECONDS = 0.5


async def test_a11_status_reads_failing_half_the_time_still_complete_within_the_schedule(
    tmp_path: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    emulator: Emulator,
    oracle: Oracle,
    start_worker,  # type: ignore[no-untyped-def]
    open_daemon,  # type: ignore[no-untyped-def]
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    """A11: status reads alternate between a 503, a dropped connection and a good answer. The job
    completes, and the emulator's count of status reads stays within what the schedule allows:
    one read per poll interval over the job's run, plus the failed ones (each followed by a
    backoff of at least the base, so failures add no reads of their own)."""
    settings = make_settings(emulator.url, {"a1": 3}, GENRELAY_POLL_INTERVAL=str(POLL_INTERVAL_S))
    await open_daemon(settings)
    path = "/v2/text-to-video/"
    for n in range(FAULTS):
        if n % 2:
            await emulator.fault(method="GET", path_prefix=path, status=500, count=1, drop_connection=True)
        else:
            await emulator.fault(method="GET", path_prefix=path, status=503, count=1)
    await start_worker(settings)
    app = Client(redis_client)
    job_id = await app.submit(
        "ltx", "text-to-video", {"prompt": f"[seconds={JOB_SECONDS}] [ok] flaky", **T2V}
    )
    async with asyncio.timeout(60):
        job = await app.wait(job_id)
    assert job["status"]["type"] == "completed", job
    stats = await emulator.stats()
    assert stats["injected_remaining"] == 0  # every fault was met by a status read
    good_reads = stats["keys"][API_KEYS["a1"]]["polls"]
    # Good reads: at most one per poll interval while the job ran, plus the one that saw it end.
    assert 1 <= good_reads <= math.ceil(JOB_SECONDS / POLL_INTERVAL_S) + 2, good_reads
    await check_invariants(redis_client, oracle, [job_id], secrets=SECRETS)
