"""Callback throughput against two ceilings measured in the same run.

Run: ``make bench`` or ``.venv/bin/python -m bench.callbacks``. Three servers, each its own process
on loopback, get the same load for the same time from this process (an aiohttp client, a fixed
number of connections), taking turns for several rounds: the genrelay web process (valid
tokens, 30% duplicate callbacks, each one a real transition script), a bare aiohttp handler that
parses the JSON, and that handler plus one trivial EVALSHA. Reported: callbacks/s as a ratio of
each ceiling, and p99 latency.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from bench.common import embedded_redis, percentile, quiet
from daemon.jobs import JobRequest, State, Update
from daemon.services import open_services
from daemon.settings import Settings

SECONDS = 4.0
# The machine's speed drifts; the servers take turns, and each keeps its best round.
ROUNDS = 3
CONNECTIONS = 32
JOBS = 500
DUPLICATES = 0.3


async def start(args: list[str], env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stream = process.stderr if args[0] == "daemon" else process.stdout
    assert stream is not None
    async with asyncio.timeout(30):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise RuntimeError(f"{args} exited before listening")
            if "listening on " in line:
                asyncio.create_task(drain(process))
                return process, line.rsplit(" ", 1)[-1].strip()


async def drain(process: asyncio.subprocess.Process) -> None:
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            asyncio.create_task(stream.read())


async def load(base: str, requests: list[tuple[str, bytes]]) -> tuple[float, float, int]:
    """Requests/s, p99 ms and non-2xx count for SECONDS of load over CONNECTIONS connections."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + SECONDS
    headers = {"Content-Type": "application/json"}

    async def connection(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal errors
        n = offset
        while time.monotonic() < deadline:
            path, body = requests[n % len(requests)]
            n += CONNECTIONS
            start = time.perf_counter()
            async with session.post(base + path, data=body, headers=headers) as resp:
                await resp.read()
                errors += resp.status >= 300
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.monotonic()
        await asyncio.gather(*(connection(session, i) for i in range(CONNECTIONS)))
        elapsed = time.monotonic() - began
    return len(latencies) / elapsed, percentile(latencies, 0.99) * 1000, errors


async def prepare(settings: Settings, redis_url: str) -> list[tuple[str, bytes]]:
    """Active jobs and a shuffled stream of their callbacks: rising progress, 30% repeated."""
    services = await open_services(settings, redis_url)
    requests: list[tuple[str, bytes]] = []
    try:
        tokens = services.callback_tokens()
        for n in range(JOBS):
            body = {"provider": "ltxstudio", "operation": "videos/ltx-create", "params": {"prompt": f"b{n}"}}
            job_id = (await services.store.create(JobRequest.from_json(body))).job_id
            await services.store.claim_submit(job_id)
            await services.store.apply(job_id, Update(State.ACTIVE, provider_job_id=f"p{n}"), source="bench")
            path = f"/callbacks/ltxstudio/{tokens.issue('ltxstudio', job_id)}"
            for progress in range(1, 100):
                callback = {
                    "status": {"type": "active", "progress": progress},
                    "jobId": f"p{n}",
                    "replyRef": job_id,
                }
                payload = orjson.dumps(callback)
                requests.append((path, payload))
                if random.random() < DUPLICATES:
                    requests.append((path, payload))
    finally:
        await services.close()
    return requests


async def run(redis_url: str, workdir: Path) -> dict[str, float]:
    accounts = workdir / "accounts.toml"
    accounts.write_text(
        '[[account]]\nprovider = "ltxstudio"\nname = "bench@example.com"\nmax_jobs = 1000\n'
        'api_key_env = "BENCH_USEAPI"\nbase_url = "http://127.0.0.1:9"\n'
    )
    env = {
        **os.environ,
        "GENRELAY_ACCOUNTS": str(accounts),
        "GENRELAY_REDIS_URL": redis_url,
        "GENRELAY_PORT": "0",
        "GENRELAY_LOG_LEVEL": "warning",
        "GENRELAY_LOG_FORMAT": "json",
        "BENCH_USEAPI": "t",
        "GENRELAY_SECRET": "bench-secret",
        "GENRELAY_POLL_INTERVAL": "3600",
    }
    requests = await prepare(Settings.from_env(env), redis_url)
    results: dict[str, float] = {}
    servers = (
        ("bare", ["bench.baseline_server", "bare", redis_url]),
        ("evalsha", ["bench.baseline_server", "evalsha", redis_url]),
        ("genrelay", ["daemon", "web"]),
    )
    for _ in range(ROUNDS):
        for name, args in servers:
            process, base = await start(args, env)
            try:
                await load(base, requests[:2000])  # warm up
                rate, p99, errors = await load(base, requests)
            finally:
                process.terminate()
                await process.wait()
            if errors:
                raise RuntimeError(f"{name}: {errors} non-2xx answers")
            if rate > results.get(f"{name}_rps", 0.0):
                results[f"{name}_rps"], results[f"{name}_p99"] = rate, p99
    return results


def main() -> None:
    quiet()
    with embedded_redis() as url, tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(run(url, Path(tmp)))
    print(
        f"callbacks: genrelay {r['genrelay_rps']:.0f}/s (p99 {r['genrelay_p99']:.1f} ms) = "
        f"{r['genrelay_rps'] / r['evalsha_rps']:.2f} x the one-round-trip ceiling "
        f"({r['evalsha_rps']:.0f}/s, p99 {r['evalsha_p99']:.1f} ms), "
        f"{r['genrelay_rps'] / r['bare_rps']:.2f} x the bare handler ({r['bare_rps']:.0f}/s, "
        f"p99 {r['bare_p99']:.1f} ms); {CONNECTIONS} connections, best of {ROUNDS} rounds of {SECONDS:g} s, "
        "30% duplicates"
    )


if __name__ == "__main__":
    main()
