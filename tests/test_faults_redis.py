"""Redis faults (docs/fault-scenarios.md, scenarios C22-C27) against real processes: ``genrelay web`` and
``genrelay worker`` as subprocesses, a throwaway redis-server of their own (tests/harness), the fault
proxy between them where a scenario needs it, the emulator in this process as the oracle.

Each scenario ends with :func:`check_invariants` (H6): every job has one terminal record, the lease
sets are empty, the emulator never ran more than ``maxJobs`` per account, no job was submitted twice
(the emulator's jobs, by prompt: each test job has its own), no 500, no secret in any process' log,
and every process is still up (none exited, so none crash-looped).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from daemon import keys
from daemon.client import Client
from daemon.redis_connection import connect
from daemon.scripts import script_source
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, Emulator, process_env
from tests.harness.invariants import check_invariants as harness_invariants
from tests.harness.invariants import no_secrets_logged
from tests.harness.oracle import Oracle
from tests.harness.processes import DaemonProcess
from tests.harness.proxy import FaultProxy
from tests.harness.redis_server import RedisServer

T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
ACCOUNTS = {"a1": 2, "a2": 2, "a3": 3}
WEB_READY = "genrelay web listening on"
WORKER_READY = "worker started"
TERMINAL = {"completed", "failed", "canceled"}
JOB = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "[ok] probe", **T2V}}
# Short arq timeouts: a task whose bookkeeping an outage cut short runs again once arq's in-progress
# key expires (the longest function timeout + 10 s), so keep that short; a submit waits out a Redis
# blip for half the job timeout, which must outlast the outages below.
FAST_ENV = {
    "GENRELAY_JOB_TIMEOUT": "8",
    "GENRELAY_DELIVERY_TIMEOUT": "1",
    "GENRELAY_SWEEP_INTERVAL": "1",
    "GENRELAY_PORT": "0",
}

Start = Callable[..., Awaitable[DaemonProcess]]


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS[n]: m for n, m in ACCOUNTS.items()}, job_seconds=0.3)


@dataclass
class Stack:
    """The processes of one scenario, the Redis they use and a client straight to that Redis."""

    tmp_path: Path
    server: RedisServer
    redis: aioredis.Redis
    emulator: Emulator
    start: Start
    env: dict[str, str] = field(default_factory=dict)
    processes: list[DaemonProcess] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    @property
    def app(self) -> Client:
        return Client(self.redis)

    async def spawn(self, command: str, redis_url: str, **extra: str) -> DaemonProcess:
        env = process_env(self.tmp_path, redis_url, self.emulator.url, ACCOUNTS, **{**FAST_ENV, **extra})
        ready = WEB_READY if command == "web" else WORKER_READY
        process = await self.start(command, env, ready_line=ready)
        self.processes.append(process)
        return process

    async def submit(self, count: int, tag: str) -> list[str]:
        ids = [
            await self.app.submit("ltx", "text-to-video", {"prompt": f"[ok] {tag} {n}", **T2V})
            for n in range(count)
        ]
        self.ids += ids
        return ids

    async def wait_events(self, state: str, count: int) -> None:
        """Block on the events stream until ``count`` jobs have reached ``state``."""
        seen: set[str] = set()
        last = "0-0"
        while len(seen) < count:
            for _, entries in await self.redis.xread({keys.events_key("ltx"): last}, block=1000, count=500):
                for entry_id, fields in entries:
                    last = entry_id
                    if fields["state"] == state:
                        seen.add(fields["job"])

    async def states(self, ids: list[str]) -> dict[str, str | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job_key(job_id), "state")
            return dict(zip(ids, await pipe.execute(), strict=True))

    async def wait_terminal(self, ids: list[str], within: float = 90) -> dict[str, str | None]:
        """Poll the records until every job is terminal (no event to await across a Redis restart:
        the stream may have lost its last entries)."""
        async with asyncio.timeout(within):
            while True:
                states = await self.states(ids)
                if all(state in TERMINAL for state in states.values()):
                    return states
                await asyncio.sleep(0.2)

    def log_lines(self, process: DaemonProcess, text: str) -> list[str]:
        return [line for line in process.lines if text in line]

    async def wait_log(self, process: DaemonProcess, text: str, within: float = 30) -> None:
        """Until ``process`` has logged ``text`` (its output is drained as it comes)."""
        async with asyncio.timeout(within):
            while True:
                if self.log_lines(process, text):
                    return
                await asyncio.sleep(0.05)


@pytest.fixture
async def stack(
    tmp_path: Path, emulator: Emulator, daemon_processes: Start
) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    made: list[Stack] = []

    async def make(appendonly: bool = True, config: dict[str, str] | None = None) -> Stack:
        server = RedisServer(tmp_path / "redis", appendonly=appendonly, config=config)
        await asyncio.to_thread(server.start)
        client = await connect(server.url)
        made.append(Stack(tmp_path, server, client, emulator, daemon_processes))
        return made[-1]

    try:
        yield make
    finally:
        for built in made:
            for process in built.processes:
                if process.process.returncode is None:
                    await process.stop()
            await built.redis.aclose()
            await asyncio.to_thread(built.server.stop)


async def check_invariants(stack: Stack, *, max_submissions: int = 1) -> collections.Counter[str]:
    """H6 after a scenario (tests/harness/invariants.py), and every process still up; returns the
    submissions per job for the scenario to look at.

    The web's logs go through the secret check and a no-500 check only: its 503s while Redis was
    away are what these scenarios require."""
    oracle = Oracle(stack.emulator.url, stack.emulator.session)
    logs = {f"{p.command}-{n}": "".join(p.lines) for n, p in enumerate(stack.processes, 1)}
    web_logs = {name: text for name, text in logs.items() if name.startswith("web")}
    other_logs = {name: text for name, text in logs.items() if name not in web_logs}
    await harness_invariants(
        stack.redis,
        oracle,
        stack.ids,
        logs=other_logs,
        secrets=API_KEYS.values(),
        max_submissions=max_submissions,
    )
    stored_secret = await stack.redis.get(keys.SECRET)
    no_secrets_logged(web_logs, [*API_KEYS.values(), *([stored_secret] if stored_secret else [])])
    for process in stack.processes:
        assert process.process.returncode is None, f"{process.command} exited"
        text = "".join(process.lines)
        assert not re.search(r'"status": ?500', text), f"{process.command} answered 500"
        assert "unhandled error" not in text
    return await oracle.submissions_by_prompt()


async def status_of(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json()


async def expect_unavailable(http: aiohttp.ClientSession, web: DaemonProcess, job_id: str) -> None:
    """While Redis is away: liveness 200, readiness 503, the routes that need Redis 503 (not 500)."""
    assert (await status_of(http, "GET", f"{web.address}/healthz"))[0] == 200
    status, body = await status_of(http, "GET", f"{web.address}/readyz")
    assert (status, body["code"]) == (503, 503)
    for method, path, extra in (
        ("POST", "/v1/jobs", {"json": JOB}),
        ("GET", f"/v1/jobs/{job_id}", {}),
        ("GET", "/v1/jobs", {}),
        ("GET", "/v1/scheduler/available", {}),
        ("DELETE", f"/v1/jobs/{job_id}", {}),
        ("GET", "/", {}),
    ):
        status, body = await status_of(http, method, f"{web.address}{path}", **extra)
        assert status == 503, (method, path, status, body)
        assert body["code"] == 503 and "Redis" in body["error"]
    # A scrape still succeeds, and says Redis did not answer.
    async with http.get(f"{web.address}/metrics") as resp:
        assert resp.status == 200
        assert "genrelay_redis_up 0" in await resp.text()


async def wait_ready(http: aiohttp.ClientSession, web: DaemonProcess, within: float = 30) -> None:
    async with asyncio.timeout(within):
        while True:
            if (await status_of(http, "GET", f"{web.address}/readyz"))[0] == 200:
                return
            await asyncio.sleep(0.1)


@pytest.mark.timeout(150)
async def test_22_graceful_redis_restart_under_load(stack: Callable[..., Awaitable[Stack]]) -> None:
    """C22: Redis stops and starts again while 30 jobs run: the web answers 503 meanwhile, both workers
    reconnect in the same process, and every job completes with one submission each."""
    s = await stack()
    web = await s.spawn("web", s.server.url)
    workers = [await s.spawn("worker", s.server.url) for _ in range(2)]
    ids = await s.submit(30, "restart")
    async with asyncio.timeout(30):
        await s.wait_events("active", 6)
    async with aiohttp.ClientSession() as http:
        await asyncio.to_thread(s.server.stop)
        await expect_unavailable(http, web, ids[0])
        for worker in workers:  # Redis stays away until every worker has noticed
            await s.wait_log(worker, "Redis is unreachable")
            await s.wait_log(worker, '"failures":3')  # an outage of a second or two
        await asyncio.to_thread(s.server.start)
        await wait_ready(http, web)
        # Recovered by itself: the web takes jobs again.
        status, body = await status_of(http, "POST", f"{web.address}/v1/jobs", json=JOB)
        assert status == 202, body
        s.ids.append(body["jobId"])
    states = await s.wait_terminal(s.ids)
    assert set(states.values()) == {"completed"}, collections.Counter(states.values())
    submissions = await check_invariants(s)
    assert len(submissions) == len(s.ids)  # every job reached the provider, once
    for worker in workers:
        # Each worker takes jobs again after the outage, in the same process (its backoff may still
        # be running when the other one has finished the jobs).
        await s.wait_log(worker, "Redis answers again")
        assert worker.process.returncode is None


@pytest.mark.timeout(150)
async def test_23_kill_9_of_redis_with_aof_everysec(stack: Callable[..., Awaitable[Stack]]) -> None:
    """C23: redis-server is SIGKILLed under ``appendfsync everysec``: every job enqueued 2 s before the
    crash ends, one whose record fell back is failed as ``submit_interrupted`` instead of being sent
    twice, and no worker crash-loops."""
    s = await stack(appendonly=True)
    workers = [await s.spawn("worker", s.server.url) for _ in range(2)]
    # Two waves of 1.5 s jobs on 7 slots: the crash falls among running jobs and fresh submissions.
    early = await s.submit(14, "[seconds=1.5] early")
    enqueued_at = time.monotonic()
    async with asyncio.timeout(30):
        await s.wait_events("active", 4)
    # The scenario's definition, not a synchronisation: jobs enqueued 2 s or more before the crash.
    await asyncio.sleep(max(0.0, 2.2 - (time.monotonic() - enqueued_at)))
    late = await s.submit(5, "late")
    await asyncio.to_thread(s.server.kill)
    await asyncio.to_thread(s.server.start)  # same port, same AOF: replays what reached the disk
    early_states = await s.wait_terminal(early)
    # Nothing enqueued 2 s before the crash is lost. A job whose record fell back into `submitting`
    # (its provider answer was in the lost second) ends `failed` as interrupted rather than being
    # submitted twice: no adoption by replyRef for the ltx provider.
    interrupted = [j for j, state in early_states.items() if state == "failed"]
    for job_id in interrupted:
        assert await s.redis.hget(keys.job_key(job_id), "error_type") == "submit_interrupted"
    late_states = await s.states(late)
    s.ids = early + [job_id for job_id, state in late_states.items() if state is not None]
    await s.wait_terminal(s.ids)
    lost_late = [job_id for job_id, state in late_states.items() if state is None]
    # A submission inside the lost second whose write-ahead record was lost too can happen again
    # (no provider sync adopts ltx jobs by reference): bounded by one more, and reported.
    submissions = await check_invariants(s, max_submissions=2)
    twice = [prompt for prompt, count in submissions.items() if count > 1]
    for worker in workers:
        restarts = len(s.log_lines(worker, "the worker stopped on a Redis error"))
        assert restarts <= 3, f"worker restarted {restarts} times"
    print(
        f"\nkill -9: {len(interrupted)} early job(s) interrupted, {len(lost_late)} late job(s) lost,"
        f" {len(twice)} job(s) submitted twice"
    )


@pytest.mark.timeout(150)
async def test_24_redis_blackholed_every_process_stays_up(stack: Callable[..., Awaitable[Stack]]) -> None:
    """A shorter blackhole than the catalogue's 30 s (6 s) keeps the suite's budget; what matters is that
    replies stop coming, which a reply timeout and the proxy closing the broken connections cover."""
    s = await stack()
    proxy = await FaultProxy("127.0.0.1", s.server.port, password=s.server.password).start()
    try:
        # A task blocked on Redis for the whole blackhole must not hit arq's timeout: arq ends a
        # timed-out task for good (not retried), which would strand its job until the lease expires.
        web = await s.spawn("web", proxy.url, GENRELAY_JOB_TIMEOUT="15")
        workers = [await s.spawn("worker", proxy.url, GENRELAY_JOB_TIMEOUT="15") for _ in range(2)]
        ids = await s.submit(20, "blackhole")
        async with asyncio.timeout(30):
            await s.wait_events("active", 4)
        proxy.blackhole()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            started = time.monotonic()
            while time.monotonic() - started < 6:
                assert (await status_of(http, "GET", f"{web.address}/healthz"))[0] == 200
                assert (await status_of(http, "GET", f"{web.address}/readyz"))[0] == 503
                for process in s.processes:
                    assert process.process.returncode is None
                await asyncio.sleep(0.5)
            proxy.pass_through()
            await wait_ready(http, web)
        states = await s.wait_terminal(ids)
        assert set(states.values()) == {"completed"}, collections.Counter(states.values())
        await check_invariants(s)
        assert proxy.stats.dropped_bytes > 0  # the blackhole did swallow traffic
        assert all(w.process.returncode is None for w in workers)
    finally:
        await proxy.close()


@pytest.mark.timeout(120)
async def test_25_connection_reset_in_the_middle_of_script_calls(
    stack: Callable[..., Awaitable[Stack]],
) -> None:
    """Scripts reach Redis and run, then the connection dies before the reply: the client retries
    them. Retried scripts are idempotent: no slot counted twice, no transition applied twice."""
    s = await stack(appendonly=False)
    proxy = await FaultProxy("127.0.0.1", s.server.port, password=s.server.password).start()
    try:
        await s.spawn("worker", proxy.url)
        proxy.cut_scripts(15)
        ids = await s.submit(20, "reset")
        states = await s.wait_terminal(ids)
        assert set(states.values()) == {"completed"}, collections.Counter(states.values())
        assert proxy.stats.scripts_cut > 0
        print(f"\nscripts cut after they ran: {proxy.stats.scripts_cut}")
        await check_invariants(s)
        # One transition per state per job in the events stream, in forward order.
        per_job: dict[str, list[str]] = collections.defaultdict(list)
        for _, fields in await s.redis.xrange(keys.events_key("ltx")):
            if fields.get("state"):
                per_job[fields["job"]].append(fields["state"])
        for job_id in ids:
            transitions = per_job[job_id]
            assert transitions.count("submitting") <= 1, (job_id, transitions)
            assert transitions.count("completed") == 1, (job_id, transitions)
    finally:
        await proxy.close()


@pytest.mark.timeout(120)
async def test_25_reset_after_the_submit_claim_ran_does_not_fail_the_job(
    stack: Callable[..., Awaitable[Stack]],
) -> None:
    """The write-ahead claim (``claim_submit``) runs, its reply is lost and redis-py sends it again:
    the retry is the same attempt, not a worker that died mid-call, so the job is submitted once and
    completes."""
    s = await stack(appendonly=False)
    proxy = await FaultProxy("127.0.0.1", s.server.port, password=s.server.password).start()
    try:
        await s.spawn("worker", proxy.url)
        claim_sha = hashlib.sha1(script_source("claim_submit").encode()).hexdigest()
        proxy.cut_scripts(4, only=claim_sha)
        ids = await s.submit(6, "claim")
        states = await s.wait_terminal(ids)
        assert proxy.stats.scripts_cut == 4
        assert set(states.values()) == {"completed"}, collections.Counter(states.values())
        await check_invariants(s)
    finally:
        await proxy.close()


@pytest.mark.timeout(120)
async def test_26_latency_on_the_redis_link_changes_nothing_but_speed(
    stack: Callable[..., Awaitable[Stack]],
) -> None:
    """C26: 200 ms on every Redis reply: every job still completes and the invariants hold."""
    s = await stack(appendonly=False)
    proxy = await FaultProxy("127.0.0.1", s.server.port, password=s.server.password).start()
    try:
        proxy.latency(200)
        await s.spawn("worker", proxy.url)
        ids = await s.submit(8, "latency")
        states = await s.wait_terminal(ids, within=100)
        assert set(states.values()) == {"completed"}, collections.Counter(states.values())
        await check_invariants(s)
    finally:
        await proxy.close()


@pytest.mark.timeout(90)
async def test_27_redis_out_of_memory_with_noeviction_is_a_503_and_evicts_nothing(
    stack: Callable[..., Awaitable[Stack]],
) -> None:
    """With maxmemory reached under noeviction, POST /v1/jobs answers a clear 503 and no key goes.
    (An evicting policy is refused at start: tests/test_startup_checks.py.)"""
    s = await stack(appendonly=False)
    web = await s.spawn("web", s.server.url)
    async with aiohttp.ClientSession() as http:
        status, body = await status_of(http, "POST", f"{web.address}/v1/jobs", json=JOB)
        assert status == 202, body
        kept = body["jobId"]
        used = int((await s.redis.info("memory"))["used_memory"])
        await asyncio.to_thread(s.server.config_set, "maxmemory", str(used // 2))
        keys_before = await s.redis.dbsize()
        status, body = await status_of(http, "POST", f"{web.address}/v1/jobs", json=JOB)
        assert status == 503, body
        assert body["code"] == 503 and "out of memory" in body["error"]
        # Readable routes still answer; the web process is still ready to serve them.
        status, body = await status_of(http, "GET", f"{web.address}/v1/jobs/{kept}")
        assert status == 200, body
    stats = await s.redis.info("stats")
    assert int(stats["evicted_keys"]) == 0
    assert await s.redis.dbsize() == keys_before
    assert web.process.returncode is None
    assert not [line for line in web.lines if "unhandled error" in line]
