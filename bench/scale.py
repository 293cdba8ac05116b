"""How the slot scripts' cost grows with the account pool and the backlog (docs/slots.md).

Run: ``.venv/bin/python -m bench scale`` (about 10 minutes; ``--quick`` for a smaller run). Four
parts, each reported as a ratio to its own baseline measured in the same run:

* **Script cost.** One provider with 3, 30 or 300 accounts (``maxJobs`` 2 each), jobs created and
  ended one after the other over one connection. Two shapes: *free* (a slot is free: the create
  takes a lease, the end releases it) and *queued* (every slot is held: the create waits in line,
  the end of the oldest lease hands its slot to the head of the line), the latter with a backlog of
  0 or 100,000 waiting jobs, a fifth of them pinned to a disabled account (jobs the hand-off must
  skip). Figures: Redis time per script call (INFO commandstats, EVALSHA usec / calls, the
  commands inside the scripts included) and wall time per create + end, each the median of five
  blocks of calls; ratios to 3 accounts and to the empty backlog.
* **Polling, one worker.** 10,000 active jobs polled every 5 s over 300 accounts (bench/polling.py):
  status reads per second as a ratio to the schedule, lateness p99.
* **Polling, four workers.** 50,000 active jobs over 300 accounts; poll interval 25 s, so the
  schedule (2,000 reads/s) is the one-worker run's: a 2-core machine and an emulator in one
  Python process do not answer 10,000 reads/s, and the figure is about the schedule's size.
* **Memory per finished job.** 5,000 LTX jobs through the emulator and one worker (created, submitted,
  polled, completed with an artifact, their arq submit entries included): Redis ``used_memory``
  after minus before, per job, with the share of each kind of key.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import polling
from bench.cluster import Cluster
from bench.common import embedded_redis, emulator, quiet, stop_on_sigterm
from bench.load import LTX_PARAMS, Fleet
from daemon import keys
from daemon.jobs import JobRequest, State, Update
from daemon.services import Services, open_services
from daemon.settings import Settings

PROVIDER = "ltx"
MAX_JOBS = 2
PINNED_SHARE = 5  # one backlog job in five is pinned to the disabled account
CREATE_CONCURRENCY = 64
PROGRESS_EVERY_S = 5.0
BLOCKS = 5  # script cost: blocks of cycles measured apart, the median reported
MEMORY_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ScriptCost:
    accounts: int
    shape: str  # "free" or "queued"
    backlog: int
    redis_us: float  # Redis time per script call
    wall_us: float  # wall time per create + end
    calls: int


def say(line: str) -> None:
    print(line, flush=True)


def accounts_file(path: Path, names: list[str], base_url: str) -> Path:
    tables = [
        f'[[account]]\nprovider = "{PROVIDER}"\nname = "{name}"\nmax_jobs = {MAX_JOBS}\n'
        f'api_key_env = "BENCH_KEY"\nbase_url = "{base_url}"\n'
        for name in names
    ]
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


def request(n: int, account: str | None = None) -> JobRequest:
    body: dict[str, Any] = {"provider": PROVIDER, "operation": "text-to-video", "params": {"n": n}}
    if account:
        body["account"] = account
    return JobRequest.from_json(body)


async def create_many(services: Services, count: int, make: Callable[[int], JobRequest], label: str) -> None:
    """Create ``count`` jobs, CREATE_CONCURRENCY at a time, with a progress line."""
    started = time.monotonic()
    next_line = started + PROGRESS_EVERY_S
    done = 0

    async def batch(numbers: range) -> None:
        await asyncio.gather(*(services.store.create(make(n)) for n in numbers))

    for first in range(0, count, CREATE_CONCURRENCY):
        await batch(range(first, min(count, first + CREATE_CONCURRENCY)))
        done = min(count, first + CREATE_CONCURRENCY)
        if time.monotonic() >= next_line and done < count:
            say(f"  {label}: {done}/{count} created ({done / (time.monotonic() - started):.0f}/s)")
            next_line = time.monotonic() + PROGRESS_EVERY_S


async def evalsha_stats(client: aioredis.Redis) -> tuple[int, float]:
    stats = await client.info("commandstats")
    entry = stats.get("cmdstat_evalsha") or {}
    return int(entry.get("calls", 0)), float(entry.get("usec", 0))


async def script_cost(
    redis_url: str, workdir: Path, accounts: int, shape: str, backlog: int, cycles: int
) -> ScriptCost:
    names = [f"acct{n:03}" for n in range(accounts)]
    # The disabled account holds the pinned part of the backlog: jobs no hand-off may pick.
    stuck = "stuck"
    path = accounts_file(workdir / f"accounts-{accounts}.toml", [*names, stuck], "http://127.0.0.1:9")
    env = {
        "GENRELAY_ACCOUNTS": str(path),
        "GENRELAY_REDIS_URL": redis_url,
        "BENCH_KEY": "bench-key-0123456789",
    }
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    services = await open_services(Settings.from_env(env), redis_url)
    try:
        await services.slots.set_enabled(
            PROVIDER, stuck, enabled=False, reason="bench: pinned jobs wait here"
        )
        pk = keys.provider_keys(PROVIDER)
        if shape == "queued":
            await create_many(services, accounts * MAX_JOBS, request, "holding every slot")
            pinned = backlog // PINNED_SHARE

            def backlog_job(n: int) -> JobRequest:
                return request(n, stuck if n < pinned else None)

            if backlog:
                await create_many(services, backlog, backlog_job, f"backlog of {backlog}")
        done = Update(State.FAILED, message="bench")
        # Blocks of cycles, the median block reported: a burst of other work on the machine
        # spoils one block, not the figure.
        blocks: list[tuple[float, float]] = []
        calls = 0
        for block in range(BLOCKS):
            calls_before, usec_before = await evalsha_stats(services.client)
            wall = 0.0
            for n in range(block * cycles // BLOCKS, (block + 1) * cycles // BLOCKS):
                if shape == "queued":
                    # End the oldest lease: its slot goes to the head of the line.
                    oldest = str((await services.client.zrange(pk.leases, 0, 0))[0])
                    started = time.perf_counter()
                    await services.store.create(request(n))
                    await services.store.apply(oldest, done, source="bench")
                else:
                    started = time.perf_counter()
                    created = await services.store.create(request(n))
                    await services.store.apply(created.job_id, done, source="bench")
                wall += time.perf_counter() - started
            calls_after, usec_after = await evalsha_stats(services.client)
            calls += calls_after - calls_before
            per_call = (usec_after - usec_before) / max(1, calls_after - calls_before)
            blocks.append((per_call, wall / max(1, cycles // BLOCKS) * 1e6))
        waiting = await services.client.zcard(pk.waiting)
        if shape == "queued" and backlog and waiting < backlog - backlog // PINNED_SHARE:
            raise RuntimeError(f"the backlog shrank to {waiting}: the measurement is not what it says")
    finally:
        await services.close()
    redis_us = statistics.median(b[0] for b in blocks)
    wall_us = statistics.median(b[1] for b in blocks)
    return ScriptCost(accounts, shape, backlog, redis_us, wall_us, calls)


async def script_costs(redis_url: str, workdir: Path, args: argparse.Namespace) -> list[ScriptCost]:
    plan = [(n, "free", 0) for n in args.accounts] + [
        (n, "queued", backlog) for n in (args.accounts[0], args.accounts[-1]) for backlog in (0, args.backlog)
    ]
    results = []
    for accounts, shape, backlog in plan:
        cost = await script_cost(redis_url, workdir, accounts, shape, backlog, args.cycles)
        say(
            f"  {accounts:>3} accounts, {shape:<6} backlog {backlog:>6}: {cost.redis_us:6.1f} us Redis "
            f"per script, {cost.wall_us:6.0f} us wall per create + end"
        )
        results.append(cost)
    return results


def cost_lines(results: list[ScriptCost]) -> list[str]:
    by = {(r.accounts, r.shape, r.backlog): r for r in results}
    fewest = min(r.accounts for r in results)
    lines = []
    for r in results:
        base = by[(fewest, r.shape, 0)]
        empty = by[(r.accounts, r.shape, 0)]
        ratio = f"{r.redis_us / base.redis_us:.2f} x {fewest} accounts"
        if r.backlog:
            ratio += f", {r.redis_us / empty.redis_us:.2f} x the empty backlog"
        lines.append(
            f"  {r.accounts:>3} accounts, {r.shape:<6} backlog {r.backlog:>6}: Redis {r.redis_us:6.1f} us "
            f"per script ({ratio}); wall {r.wall_us:6.0f} us per create + end "
            f"({r.wall_us / base.wall_us:.2f} x)"
        )
    return lines


async def polling_run(
    redis_url: str, workdir: Path, jobs: int, accounts: int, workers: int, interval: float, seconds: float
) -> dict[str, float]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    args = argparse.Namespace(
        jobs=jobs, accounts=accounts, workers=workers, interval=interval, seconds=seconds
    )
    run_dir = workdir / f"polling-{jobs}-{workers}"
    run_dir.mkdir()
    return await polling.run(args, redis_url, run_dir)


def polling_line(label: str, f: dict[str, float]) -> str:
    return (
        f"  {label}: {f['reads_per_s']:.0f} status reads/s = {f['reads_per_s'] / f['schedule_per_s']:.2f} x "
        f"the schedule ({f['schedule_per_s']:.0f}/s); lateness p50 {f['p50_ms']:.0f} ms, p99 "
        f"{f['p99_ms']:.0f} ms; worker CPU {f['cores']:.2f} cores"
    )


KEY_KINDS = (
    ("job records", ":job:"),
    ("assets", ":asset"),
    ("arq", "arq:"),
    ("events", ":events"),
)


async def memory_per_job(redis_url: str, workdir: Path, jobs: int) -> dict[str, float]:
    """Bytes of Redis memory per finished job, through the real path (one worker, the emulator)."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    fleet = Fleet(ltx={f"ltx{n:02}": 20 for n in range(10)}, studio={}, workdir=workdir / "memory")
    fleet.workdir.mkdir()
    async with emulator(fleet.emulator_config(job_seconds=0.2, seed=3)) as base_url:
        env = fleet.env(redis_url, base_url, GENRELAY_POLL_INTERVAL="0.2")
        services = await open_services(Settings.from_env(env), redis_url)
        cluster = Cluster(fleet.workdir, env)
        try:
            await client.memory_purge()
            before = int((await client.info("memory"))["used_memory"])
            completed = keys.provider_keys(PROVIDER).state("completed")

            def job(n: int) -> JobRequest:
                return JobRequest.from_json(
                    {
                        "provider": PROVIDER,
                        "operation": "text-to-video",
                        "params": {"prompt": f"m {n}", **LTX_PARAMS},
                    }
                )

            await create_many(services, jobs, job, "memory run")
            worker = cluster.start("worker", "worker-1")
            deadline = time.monotonic() + MEMORY_TIMEOUT_S
            next_line = time.monotonic() + PROGRESS_EVERY_S
            while (done := await client.zcard(completed)) < jobs:
                if time.monotonic() > deadline or not worker.alive():
                    raise RuntimeError(f"{done}/{jobs} jobs completed; see {worker.log_path}")
                if time.monotonic() >= next_line:
                    say(f"  memory run: {done}/{jobs} completed")
                    next_line = time.monotonic() + PROGRESS_EVERY_S
                await asyncio.sleep(0.5)
            cluster.stop_all()
            await client.memory_purge()
            after = int((await client.info("memory"))["used_memory"])
            shares = {name: 0 for name, _ in KEY_KINDS} | {"indexes and the rest": 0}
            async for key in client.scan_iter(count=1000):
                name = key.decode()
                size = int(await client.memory_usage(key, samples=0) or 0)
                kind = next((label for label, part in KEY_KINDS if part in name), "indexes and the rest")
                shares[kind] += size
        finally:
            cluster.stop_all()
            await services.close()
            await client.aclose()
    return {"per_job": (after - before) / jobs} | {k: v / jobs for k, v in shares.items()}


async def run(args: argparse.Namespace, redis_url: str, workdir: Path) -> None:
    steps: list[tuple[str, Callable[[], Awaitable[list[str]]]]] = []

    async def costs() -> list[str]:
        return cost_lines(await script_costs(redis_url, workdir, args))

    async def one_worker() -> list[str]:
        f = await polling_run(redis_url, workdir, args.poll_jobs, args.accounts[-1], 1, 5.0, args.seconds)
        return [
            polling_line(
                f"{args.poll_jobs} active jobs, {args.accounts[-1]} accounts, 1 worker, every 5 s", f
            )
        ]

    async def four_workers() -> list[str]:
        interval = 5.0 * args.many_jobs / args.poll_jobs
        f = await polling_run(
            redis_url, workdir, args.many_jobs, args.accounts[-1], 4, interval, args.seconds
        )
        label = f"{args.many_jobs} active jobs, {args.accounts[-1]} accounts, 4 workers, every {interval:g} s"
        return [polling_line(label, f)]

    async def memory() -> list[str]:
        m = await memory_per_job(redis_url, workdir, args.memory_jobs)
        parts = ", ".join(f"{name} {size:.0f}" for name, size in m.items() if name != "per_job")
        return [
            f"  {m['per_job']:.0f} bytes of Redis memory per finished job with its asset (by key: {parts})"
        ]

    steps = [
        ("script cost by accounts and backlog", costs),
        ("polling over many accounts, one worker", one_worker),
        ("polling over many accounts, four workers", four_workers),
        (f"memory per finished job ({args.memory_jobs} jobs)", memory),
    ]
    report: list[str] = []
    for title, step in steps:
        if title.split()[0] not in args.only and args.only:
            continue
        say(f"scale: {title} ...")
        lines = await step()
        report += [f"{title}:", *lines]
    say("scale: results")
    say("\n".join(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        choices=["script", "polling", "memory"],
        help="run only these parts (default: all)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="polling window (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.accounts, args.backlog, args.cycles = [3, 30], 2_000, 300
        args.poll_jobs, args.many_jobs, args.memory_jobs, args.seconds = 500, 1_000, 300, 10.0
    else:
        args.accounts, args.backlog, args.cycles = [3, 30, 300], 100_000, 2_000
        args.poll_jobs, args.many_jobs, args.memory_jobs = 10_000, 50_000, 5_000
    quiet()
    stop_on_sigterm()
    with embedded_redis() as url, tempfile.TemporaryDirectory(prefix="genrelay-scale-") as tmp:
        asyncio.run(run(args, url, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
