"""Scenario F47 (docs/fault-scenarios.md): many jobs through 2 web + 4 worker processes on 20
accounts with faults.

Run: ``.venv/bin/python -m bench load`` (10,000 jobs; ``--jobs 500`` for a quick run). A throwaway
Redis, the emulator in this process with 10 LTX and 10 LTX Studio (useapi) accounts of ``maxJobs``
1-5, random job durations (``--job-seconds`` +-50%), 1% of provider requests answered 500
(injected faults), 1% of jobs failing at the provider, and on the useapi side 2% of callbacks
dropped and 2% sent twice. The jobs are enqueued through the two web processes' HTTP API; the
workers' callback URLs point at both web processes (half each).

Reported once every job is terminal (hard timeout ``--timeout``):

* the invariants (bench/invariants.py): every job terminal (by state and by what ended it),
  zero over-allocation (emulator peak - maxJobs, and the emulator's 429s), leases empty, at most
  one submission per job, no 5xx answered by genrelay;
* throughput in jobs/s, and as a ratio to the baseline of the same run: the emulator's capacity,
  sum(maxJobs) / mean job duration (so the ratio is the slot utilisation);
* poll lateness p50/p99 as the provider saw it (LTX jobs: spacing of status reads minus the poll
  interval, bench/common.py ``ProviderTraffic``);
* Redis commands per job (INFO commandstats delta, commands run inside scripts included; the
  bench's own progress reads left out).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bench.cluster import Cluster, free_port, rss_mb, wait_ready
from bench.common import ProviderTraffic, embedded_redis, emulator, percentile, quiet, stop_on_sigterm
from bench.invariants import (
    TERMINAL,
    Report,
    allocation_checks,
    count_terminal,
    emulator_view,
    job_outcomes,
    leases_left,
)
from daemon.redis_connection import connect
from daemon.settings import Settings
from emulator.config import EmulatorConfig

USEAPI_TOKEN = "bench-useapi-token-0123456789"
SECRET = "bench-signing-secret-0123456789abcdef"
# LTX keys get this many slots more at the emulator than genrelay may use, so an over-allocation
# shows as a peak above maxJobs instead of being refused with a 429.
LTX_HEADROOM = 10
LTX_PARAMS = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
PROGRESS_EVERY_S = 5.0


@dataclass
class Fleet:
    """The accounts of a run: genrelay's accounts file, the emulator's config and the env."""

    ltx: dict[str, int]
    studio: dict[str, int]
    workdir: Path

    @classmethod
    def random(cls, workdir: Path, accounts: int, rng: random.Random) -> Fleet:
        half = accounts // 2
        return cls(
            ltx={f"ltx{n:02}": rng.randint(1, 5) for n in range(accounts - half)},
            studio={f"studio{n:02}@example.com": rng.randint(1, 5) for n in range(half)},
            workdir=workdir,
        )

    @property
    def ltx_keys(self) -> dict[str, str]:
        return {name: f"bench-ltx-key-{name}-0123456789" for name in self.ltx}

    @property
    def slots(self) -> int:
        return sum(self.ltx.values()) + sum(self.studio.values())

    def emulator_config(self, **knobs: Any) -> EmulatorConfig:
        return EmulatorConfig(
            keys={self.ltx_keys[name]: m + LTX_HEADROOM for name, m in self.ltx.items()},
            useapi_accounts={USEAPI_TOKEN: dict(self.studio)} if self.studio else {},
            **knobs,
        )

    def env(self, redis_url: str, base_url: str, **extra: str) -> dict[str, str]:
        tables = [
            f'[[account]]\nprovider = "ltx"\nname = "{name}"\nmax_jobs = {m}\n'
            f'api_key_env = "BENCH_LTX_{name.upper()}"\nbase_url = "{base_url}"\n'
            for name, m in self.ltx.items()
        ] + [
            f'[[account]]\nprovider = "ltxstudio"\nname = "{name}"\nmax_jobs = {m}\n'
            f'api_key_env = "BENCH_USEAPI"\nbase_url = "{base_url}"\n'
            for name, m in self.studio.items()
        ]
        accounts = self.workdir / "accounts.toml"
        accounts.write_text("\n".join(tables), encoding="utf-8")
        return {
            "GENRELAY_ACCOUNTS": str(accounts),
            "GENRELAY_REDIS_URL": redis_url,
            "GENRELAY_DATA_DIR": str(self.workdir / "var"),
            "GENRELAY_SECRET": SECRET,
            "GENRELAY_LOG_FORMAT": "json",
            "GENRELAY_LOG_LEVEL": "warning",
            "BENCH_USEAPI": USEAPI_TOKEN,
            **{f"BENCH_LTX_{name.upper()}": key for name, key in self.ltx_keys.items()},
            **extra,
        }

    def secrets(self) -> list[str]:
        return [USEAPI_TOKEN, SECRET, *self.ltx_keys.values()]


def job_body(n: int, tag: str) -> dict[str, Any]:
    """Even numbers go to LTX, odd ones to LTX Studio; the prompt names the job (submissions per
    prompt are the emulator's count of submissions per LTX job)."""
    prompt = f"{tag} job {n}"
    if n % 2 == 0:
        return {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": prompt, **LTX_PARAMS}}
    return {"provider": "ltxstudio", "operation": "videos/ltx-create", "params": {"prompt": prompt}}


@dataclass
class Enqueued:
    ids: list[str]
    answers: dict[int, int]  # HTTP status -> count, every attempt


async def enqueue(
    bases: list[str], numbers: range, tag: str, answers: dict[int, int], concurrency: int = 16
) -> list[str]:
    """POST the jobs to the web processes in turn; a refused attempt (a 503 while Redis restarts)
    is tried again with the same requestId, so a job is never enqueued twice."""
    ids: dict[int, str] = {}
    queue = list(numbers)
    timeout = aiohttp.ClientTimeout(total=30)

    async def sender(http: aiohttp.ClientSession) -> None:
        while queue:
            n = queue.pop()
            body = {**job_body(n, tag), "requestId": f"{tag}-{n}"}
            for attempt in range(600):
                base = bases[(n + attempt) % len(bases)]
                try:
                    async with http.post(f"{base}/v1/jobs", json=body) as resp:
                        answers[resp.status] = answers.get(resp.status, 0) + 1
                        if resp.status in (200, 202):
                            ids[n] = (await resp.json())["jobId"]
                            break
                except (aiohttp.ClientError, TimeoutError):
                    answers[0] = answers.get(0, 0) + 1
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"job {n} could not be enqueued: see the web logs")

    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(sender(http) for _ in range(concurrency)))
    return [ids[n] for n in sorted(ids)]


async def inject_5xx(base_url: str, traffic: ProviderTraffic, rate: float, stop: asyncio.Event) -> int:
    """Keep about ``rate`` of the provider requests answered 500: every 0.25 s, queue that share of
    the requests seen since the last look as one-shot faults. Returns how many were queued."""
    queued, seen, carry = 0, traffic.requests, 0.0
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass
            carry += (traffic.requests - seen) * rate
            seen = traffic.requests
            count = int(carry)
            if count:
                carry -= count
                fault = {"path_prefix": "/v", "status": 500, "count": count}
                async with http.post(f"{base_url}/_emulator/faults", json=fault) as resp:
                    resp.raise_for_status()
                queued += count
    return queued


async def commands(client: aioredis.Redis) -> dict[str, int]:
    """Calls so far per Redis command (INFO commandstats; commands run by scripts included)."""
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(e["calls"]) for name, e in stats.items() if isinstance(e, dict)
    }


def command_delta(
    before: dict[str, int], after: dict[str, int], own: dict[str, int] | None = None
) -> dict[str, int]:
    """Calls between the two readings, less ``own`` (the bench's own commands meanwhile)."""
    own = own or {}
    delta = {name: calls - before.get(name, 0) - own.get(name, 0) for name, calls in after.items()}
    return dict(sorted(((n, c) for n, c in delta.items() if c), key=lambda item: -item[1]))


async def wait_terminal(
    client: aioredis.Redis,
    providers: tuple[str, ...],
    total: int,
    started: float,
    deadline: float,
    say: Callable[[str], None] = print,
    marks: dict[float, float] | None = None,
    own: dict[str, int] | None = None,
) -> float:
    """Wait until ``total`` jobs are terminal, with a progress line every few seconds; returns the
    time they were (or the deadline). ``marks``: fraction -> filled with when it was reached;
    ``own``: counts the Redis commands these reads issue (not genrelay's), by command."""
    next_line = time.monotonic() + PROGRESS_EVERY_S
    while time.monotonic() < deadline:
        done = await count_terminal(client, providers)
        if own is not None:
            own["zcard"] = own.get("zcard", 0) + len(providers) * len(TERMINAL)
        now = time.monotonic()
        if marks is not None:
            for fraction, at in marks.items():
                if not at and done >= fraction * total:
                    marks[fraction] = now
        if done >= total:
            return now
        if now >= next_line:
            say(f"  {done}/{total} terminal, {done / (now - started):.1f} jobs/s")
            next_line = now + PROGRESS_EVERY_S
        await asyncio.sleep(0.2)
    return time.monotonic()


async def run(args: argparse.Namespace, redis_url: str, workdir: Path) -> bool:
    rng = random.Random(args.seed)
    fleet = Fleet.random(workdir, 20, rng)
    config = fleet.emulator_config(
        job_seconds=args.job_seconds,
        job_seconds_jitter=0.5,
        failure_rate=0.01,
        webhook_drop_rate=0.02,
        webhook_duplicate_rate=0.02,
        seed=args.seed,
    )
    traffic = ProviderTraffic()
    async with emulator(config, traffic) as base_url:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/_emulator/config", json={"public_base": base_url}) as resp:
                resp.raise_for_status()
        web_ports = [free_port(), free_port()]
        env = fleet.env(
            redis_url,
            base_url,
            GENRELAY_POLL_INTERVAL=str(args.poll_interval),
            # Dropped callbacks are found by the safety poll; 2 s keeps that from dominating the tail.
            GENRELAY_SAFETY_POLL_INTERVAL="2",
            GENRELAY_RETRY_BASE="0.2",
            GENRELAY_RETRY_MAX="2",
            # The emulator's artifact URLs are on loopback: the archive copies them as it would a
            # provider's public URLs, so its cost is part of every job's.
            GENRELAY_ARCHIVE_ALLOW_PRIVATE="1",
        )
        settings = Settings.from_env(env)
        cluster = Cluster(workdir, env)
        client = await connect(redis_url)
        stop_faults = asyncio.Event()
        try:
            webs = [cluster.start_web(f"web-{n + 1}", port) for n, port in enumerate(web_ports)]
            bases = [base for _, base in webs]
            for n in range(4):
                cluster.start("worker", f"worker-{n + 1}", GENRELAY_PUBLIC_URL=bases[n % 2])
            for child, base in webs:
                await wait_ready(base, child)
            print(
                f"load: {args.jobs} jobs, {len(fleet.ltx)} LTX + {len(fleet.studio)} LTX Studio accounts, "
                f"{fleet.slots} slots, jobs {args.job_seconds:g} s +-50%, poll every {args.poll_interval:g} s"
            )
            faults = asyncio.create_task(inject_5xx(base_url, traffic, 0.01, stop_faults))
            before = await commands(client)
            started = time.monotonic()
            answers: dict[int, int] = {}
            ids = await enqueue(bases, range(args.jobs), "load", answers)
            enqueued_s = time.monotonic() - started
            marks = {0.99: 0.0}
            own: dict[str, int] = {"info": 1}  # the bench's reads, left out of genrelay's count
            deadline = started + args.timeout
            finished = await wait_terminal(
                client, settings.providers(), len(ids), started, deadline, marks=marks, own=own
            )
            elapsed = finished - started
            after = await commands(client)
            stop_faults.set()
            injected = await faults
            rss = {c.name: rss_mb(c.pid) for c in cluster.children}
            outcomes = await job_outcomes(client, ids)
            leases = await leases_left(client, settings)
            stats, emulator_jobs = await emulator_view(base_url)
        finally:
            stop_faults.set()
            await client.aclose()
            cluster.stop_all()
    report = Report()
    report.add(
        "every job terminal",
        not outcomes.unfinished and len(ids) == args.jobs,
        outcomes.describe(args.jobs),
    )
    report.add("leases empty", leases == 0, f"{leases} left")
    allocation_checks(report, settings, fleet.ltx_keys, stats, emulator_jobs)
    server_errors = sum(n for status, n in answers.items() if status >= 500)
    callbacks = stats.get("callbacks", {})
    report.add(
        "no 5xx from genrelay",
        server_errors == 0 and callbacks.get("failed", 0) == 0,
        f"enqueue answers {answers}; callbacks sent {callbacks.get('sent', 0)}, "
        f"refused or failed {callbacks.get('failed', 0)} (dropped {callbacks.get('dropped', 0)}, "
        f"duplicated {callbacks.get('duplicated', 0)})",
    )
    capacity = fleet.slots / args.job_seconds
    throughput = len(ids) / elapsed
    late = traffic.lateness_ms(args.poll_interval)
    print(f"load: {'PASS' if report.ok else 'FAIL'}")
    print("\n".join(report.lines()))
    print(
        f"  throughput {throughput:.1f} jobs/s over {elapsed:.0f} s (enqueue took {enqueued_s:.0f} s) = "
        f"{throughput / capacity:.2f} x the emulator's capacity ({fleet.slots} slots / "
        f"{args.job_seconds:g} s mean = {capacity:.1f} jobs/s)"
    )
    if marks[0.99]:
        first = 0.99 * len(ids) / (marks[0.99] - started)
        print(
            f"  the first 99% of the jobs: {first:.1f} jobs/s = {first / capacity:.2f} x the capacity "
            "(a dropped callback leaves its job to the safety poll: every 2 s, doubling up to 32 s)"
        )
    print(
        f"  poll lateness at the provider p50 {percentile(late, 0.5):.0f} ms, "
        f"p99 {percentile(late, 0.99):.0f} ms "
        f"({len(late)} LTX status reads, interval {args.poll_interval:g} s)"
    )
    delta = command_delta(before, after, own)
    per_job = sum(delta.values()) / max(1, len(ids))
    top = ", ".join(f"{name} {calls / max(1, len(ids)):.1f}" for name, calls in list(delta.items())[:16])
    print(
        f"  Redis commands per job {per_job:.1f}, of them {delta.get('evalsha', 0) / max(1, len(ids)):.1f} "
        f"script calls (top: {top}, ...); provider requests "
        f"{traffic.requests}, 500s injected {injected} ({traffic.server_errors} answered)"
    )
    print("  RSS MiB at the end: " + ", ".join(f"{name} {mb:.0f}" for name, mb in rss.items()))
    return report.ok


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to run (default: %(default)s)")
    parser.add_argument(
        "--job-seconds",
        type=float,
        default=1.0,
        help="mean job duration at the provider (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=0.5, help="GENRELAY_POLL_INTERVAL (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=47, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="give up after this many seconds (default: %(default)s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    quiet()
    stop_on_sigterm()
    with embedded_redis() as url, tempfile.TemporaryDirectory(prefix="genrelay-load-") as tmp:
        ok = asyncio.run(run(args, url, Path(tmp)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
