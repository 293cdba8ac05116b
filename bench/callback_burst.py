"""Scenario F46 (docs/fault-scenarios.md): a callback burst at one web process, 30% duplicates,
with a leak check.

Run: ``.venv/bin/python -m bench burst`` (10 s; ``--seconds 30`` for the full scenario). This
process is the load generator (an aiohttp client, ``--connections`` 64 keep-alive connections;
wrk is not needed). Each connection owns a set of active LTX Studio jobs and walks through them
round-robin, posting each job's next progress callback with a valid token, and 30% of the time the
same callback again (a duplicate, as providers repeat them). Per job the callbacks of one
connection arrive in order, so every distinct callback must move the job exactly once.

Reported: requests/s, p50/p99 latency, non-2xx answers (must be 0), the transitions Redis recorded
(the jobs' ``seq``) against the distinct callbacks answered 2xx (duplicates applied once), and the
web process's RSS from the start to the end of the burst (target: under 10% drift; a warm-up runs
first, until the web's bounded repeat cache is full, so the drift is growth and not a cache
filling). The baseline, under the same load for the same time in the same run: the bare aiohttp
handler and the handler plus one EVALSHA of bench/callbacks.py (bench/baseline_server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from bench.callbacks import start
from bench.cluster import rss_mb
from bench.common import embedded_redis, percentile, quiet, stop_on_sigterm
from daemon import keys
from daemon.jobs import JobRequest, State, Update
from daemon.services import Services, open_services
from daemon.settings import Settings
from daemon.web.callbacks import REPEAT_CACHE_SIZE

DUPLICATES = 0.3
# Enough jobs that no connection runs out of progress values (99 per job) at ~100 requests/s per
# connection; one account holds at most 1,000 of them.
JOBS_PER_CONNECTION_SECOND = 2.5
ACCOUNT_JOBS = 1000
WARM_UP_S = 2.0
# genrelay's warm-up runs until its bounded caches are full (the web remembers the last
# REPEAT_CACHE_SIZE callbacks to answer repeats without Redis), so that the RSS drift measured
# afterwards is growth, not caches filling up; at most this long.
WARM_UP_MAX_S = 60.0
HEADERS = {"Content-Type": "application/json"}


@dataclass
class Job:
    job_id: str
    path: str
    progress: int = 0
    distinct_ok: int = 0  # distinct callbacks answered 2xx


@dataclass
class Burst:
    requests: int = 0
    duplicates: int = 0
    non_2xx: int = 0
    errors: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    exhausted: int = 0
    distinct: int = 0


async def burst(
    base: str,
    owned: list[list[Job]],
    seconds: float,
    rng: random.Random,
    *,
    wrap: bool = False,
    distinct_target: int = 0,
) -> Burst:
    """Every connection posts its jobs' next callbacks (30% twice) until ``seconds`` are over (or,
    with ``distinct_target``, that many distinct callbacks were sent); ``wrap``: start again at
    progress 1 after 99 (the baselines do not care about the order)."""
    result = Burst()
    deadline = time.monotonic() + seconds

    async def post(http: aiohttp.ClientSession, job: Job, body: bytes) -> bool:
        began = time.perf_counter()
        try:
            async with http.post(base + job.path, data=body, headers=HEADERS) as resp:
                answer = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            result.errors += 1
            return False
        result.latencies.append(time.perf_counter() - began)
        result.requests += 1
        if not 200 <= status < 300:
            result.non_2xx += 1
            return False
        outcome = str(orjson.loads(answer).get("outcome", "-")) if answer.startswith(b"{") else "-"
        result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1
        return True

    async def connection(http: aiohttp.ClientSession, jobs: list[Job]) -> None:
        turn = 0
        while time.monotonic() < deadline and not 0 < distinct_target <= result.distinct:
            job = jobs[turn % len(jobs)]
            turn += 1
            if job.progress >= 99 and wrap:
                job.progress = 0
            elif job.progress >= 99:
                result.exhausted += 1
                return
            job.progress += 1
            result.distinct += 1
            body = orjson.dumps(
                {
                    "status": {"type": "active", "progress": job.progress},
                    "jobId": f"p-{job.job_id}",
                    "replyRef": job.job_id,
                }
            )
            if await post(http, job, body):
                job.distinct_ok += 1
            if rng.random() < DUPLICATES:
                result.duplicates += 1
                await post(http, job, body)

    connector = aiohttp.TCPConnector(limit=len(owned))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        began = time.monotonic()
        await asyncio.gather(*(connection(http, jobs) for jobs in owned))
        result.elapsed = time.monotonic() - began
    return result


async def prepare(services: Services, count: int) -> list[Job]:
    """Active LTX Studio jobs (created, claimed, marked active as a submission would) and their
    callback paths."""
    tokens = services.callback_tokens()
    jobs = []
    for n in range(count):
        body = {"provider": "ltxstudio", "operation": "videos/ltx-create", "params": {"prompt": f"burst {n}"}}
        job_id = (await services.store.create(JobRequest.from_json(body))).job_id
        await services.store.claim_submit(job_id)
        await services.store.apply(
            job_id, Update(State.ACTIVE, provider_job_id=f"p-{job_id}"), source="bench"
        )
        jobs.append(Job(job_id, f"/callbacks/ltxstudio/{tokens.issue('ltxstudio', job_id)}"))
    return jobs


async def seqs(services: Services, jobs: list[Job]) -> list[int]:
    async with services.client.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.hget(keys.job_key(job.job_id), "seq")
        return [int(v or 0) for v in await pipe.execute()]


def split(jobs: list[Job], connections: int) -> list[list[Job]]:
    return [jobs[c::connections] for c in range(connections)]


def fresh(jobs: list[Job]) -> list[Job]:
    return [Job(job.job_id, job.path) for job in jobs]


async def run(args: argparse.Namespace, redis_url: str, workdir: Path) -> dict[str, object]:
    warm_up_jobs = REPEAT_CACHE_SIZE * 2 // 99
    count = warm_up_jobs + int(args.connections * (args.seconds + WARM_UP_S) * JOBS_PER_CONNECTION_SECOND)
    accounts = workdir / "accounts.toml"
    accounts.write_text(
        "\n".join(
            f'[[account]]\nprovider = "ltxstudio"\nname = "bench{n}@example.com"\nmax_jobs = {ACCOUNT_JOBS}\n'
            'api_key_env = "BENCH_USEAPI"\nbase_url = "http://127.0.0.1:9"\n'
            for n in range(-(-count // ACCOUNT_JOBS))
        )
    )
    env = {
        **os.environ,
        "GENRELAY_ACCOUNTS": str(accounts),
        "GENRELAY_REDIS_URL": redis_url,
        "GENRELAY_PORT": "0",
        "GENRELAY_LOG_LEVEL": "warning",
        "GENRELAY_LOG_FORMAT": "json",
        "BENCH_USEAPI": "bench-useapi-token",
        "GENRELAY_SECRET": "bench-secret-0123456789",
        "GENRELAY_POLL_INTERVAL": "3600",
    }
    services = await open_services(Settings.from_env(env), redis_url)
    try:
        jobs = await prepare(services, count)
        seq_before = await seqs(services, jobs)
        results: dict[str, object] = {}
        for name, command in (
            ("bare", ["bench.baseline_server", "bare", redis_url]),
            ("evalsha", ["bench.baseline_server", "evalsha", redis_url]),
        ):
            process, base = await start(command, env)
            try:
                owned = split(fresh(jobs), args.connections)
                await burst(base, owned, WARM_UP_S, random.Random(1), wrap=True)
                results[name] = await burst(base, owned, args.seconds, random.Random(2), wrap=True)
            finally:
                process.terminate()
                await process.wait()
        process, base = await start(["daemon", "web"], env)
        try:
            owned = split(jobs, args.connections)
            rss_cold = rss_mb(process.pid)
            warm_up = await burst(
                base, owned, WARM_UP_MAX_S, random.Random(1), distinct_target=int(REPEAT_CACHE_SIZE * 1.1)
            )
            rss_start = rss_mb(process.pid)
            sampled = [rss_start]

            async def sample() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    sampled.append(rss_mb(process.pid))

            sampler = asyncio.create_task(sample())
            results["genrelay"] = await burst(base, owned, args.seconds, random.Random(2))
            sampler.cancel()
            rss_end = rss_mb(process.pid)
        finally:
            process.terminate()
            await process.wait()
        seq_after = await seqs(services, jobs)
    finally:
        await services.close()
    applied = sum(after - before for before, after in zip(seq_before, seq_after, strict=True))
    results.update(
        applied=applied,
        distinct=sum(job.distinct_ok for job in jobs),
        wrong_jobs=sum(
            1
            for job, before, after in zip(jobs, seq_before, seq_after, strict=True)
            if after - before != job.distinct_ok
        ),
        rss_cold=rss_cold,
        warm_up_distinct=warm_up.distinct,
        rss_start=rss_start,
        rss_end=rss_end,
        rss_max=max([*sampled, rss_end]),
    )
    return results


def describe(name: str, b: Burst) -> str:
    rate = b.requests / b.elapsed
    return (
        f"{name} {rate:.0f}/s p50 {percentile(b.latencies, 0.5) * 1000:.1f} ms "
        f"p99 {percentile(b.latencies, 0.99) * 1000:.1f} ms"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="burst length (default: %(default)s; spec: 30)"
    )
    parser.add_argument(
        "--connections", type=int, default=64, help="concurrent connections (default: %(default)s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench burst", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    quiet()
    stop_on_sigterm()
    with embedded_redis() as url, tempfile.TemporaryDirectory(prefix="genrelay-burst-") as tmp:
        r = asyncio.run(run(args, url, Path(tmp)))
    ours, bare, evalsha = r["genrelay"], r["bare"], r["evalsha"]
    assert isinstance(ours, Burst) and isinstance(bare, Burst) and isinstance(evalsha, Burst)
    rss_cold, rss_start, rss_end, rss_max = (
        float(r[k])  # type: ignore[arg-type]
        for k in ("rss_cold", "rss_start", "rss_end", "rss_max")
    )
    drift = (rss_end - rss_start) / rss_start
    ok = ours.non_2xx == 0 and ours.errors == 0 and r["wrong_jobs"] == 0
    rate = ours.requests / ours.elapsed
    print(
        f"burst: {'PASS' if ok else 'FAIL'}: {args.connections} connections, {args.seconds:g} s, "
        f"{ours.requests} callbacks ({ours.duplicates} duplicates), non-2xx {ours.non_2xx}, "
        f"connection errors {ours.errors}; outcomes {ours.outcomes}"
    )
    print(
        f"  duplicates applied once: Redis recorded {r['applied']} transitions for {r['distinct']} distinct "
        f"callbacks answered 2xx ({r['wrong_jobs']} jobs differ)"
    )
    print(
        f"  {describe('genrelay', ours)} = {rate / (evalsha.requests / evalsha.elapsed):.2f} x "
        f"the one-round-trip handler ({describe('evalsha', evalsha)}), "
        f"{rate / (bare.requests / bare.elapsed):.2f} x the bare handler ({describe('bare', bare)})"
    )
    ran_out = f"; {ours.exhausted} connections ran out of callbacks" if ours.exhausted else ""
    print(
        f"  web RSS {rss_start:.1f} -> {rss_end:.1f} MiB (max {rss_max:.1f}) during the burst: drift "
        f"{drift * 100:+.1f}% (target < 10%); {rss_cold:.1f} MiB before a warm-up of {r['warm_up_distinct']} "
        f"callbacks that fills the web's repeat cache ({REPEAT_CACHE_SIZE} entries){ran_out}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
