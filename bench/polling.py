"""The polling ceiling: how many status reads one worker process keeps up with.

Run: ``.venv/bin/python -m bench polling`` (10,000 jobs polled every 5 s for 60 s; ``--jobs`` and
``--seconds`` to shrink it; ``--accounts`` and ``--workers`` to spread it, 10 and 1 by default). A
throwaway Redis, the emulator in this process (LTX keys, jobs that outlast the run, so every job
stays active and is only ever polled), and ``genrelay worker`` processes.
The workers submit the jobs; once all of them are active, the measurement window starts.

Reported for the window, from what the emulator answered (bench/common.py ``ProviderTraffic``):

* status reads per second against the schedule (jobs / poll interval, 2,000/s for 10,000 jobs
  every 5 s), as a ratio: the baseline is the schedule itself;
* poll lateness p50/p99 (spacing of two reads of the same job minus the interval);
* the workers' RSS (start and end of the window, summed) and CPU (cores used during the window).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path

from bench.cluster import Cluster, cpu_seconds, rss_mb
from bench.common import ProviderTraffic, embedded_redis, emulator, percentile, quiet, stop_on_sigterm
from bench.load import LTX_PARAMS, Fleet
from daemon import keys
from daemon.accounts_file import MAX_ACCOUNT_JOBS
from daemon.jobs import JobRequest
from daemon.processes import Child
from daemon.services import open_services
from daemon.settings import Settings

WARM_UP_TIMEOUT_S = 900.0


def rss_sum(workers: list[Child]) -> float:
    return sum(rss_mb(w.pid) for w in workers)


def cpu_sum(workers: list[Child]) -> float:
    return sum(cpu_seconds(w.pid) for w in workers)


async def run(args: argparse.Namespace, redis_url: str, workdir: Path) -> dict[str, float]:
    per_account = min(MAX_ACCOUNT_JOBS, math.ceil(args.jobs / args.accounts))
    fleet = Fleet(ltx={f"ltx{n:03}": per_account for n in range(args.accounts)}, studio={}, workdir=workdir)
    traffic = ProviderTraffic()
    async with emulator(fleet.emulator_config(job_seconds=3600.0, seed=1), traffic) as base_url:
        env = fleet.env(redis_url, base_url, GENRELAY_POLL_INTERVAL=str(args.interval))
        services = await open_services(Settings.from_env(env), redis_url)
        cluster = Cluster(workdir, env)
        try:
            for n in range(args.jobs):
                body = {
                    "provider": "ltx",
                    "operation": "text-to-video",
                    "params": {"prompt": f"[seconds=3600] poll {n}", **LTX_PARAMS},
                }
                await services.store.create(JobRequest.from_json(body))
            workers = [cluster.start("worker", f"worker-{n + 1}") for n in range(args.workers)]
            active_key = keys.provider_keys("ltx").state("active")
            deadline = time.monotonic() + WARM_UP_TIMEOUT_S
            while await services.client.zcard(active_key) < args.jobs:
                dead = [w for w in workers if not w.alive()]
                if time.monotonic() > deadline or dead:
                    log = (dead or workers)[0].log_path
                    raise RuntimeError(f"the jobs did not all become active; see {log}")
                await asyncio.sleep(0.5)
            # One interval for the submissions' first polls to spread out, then the window.
            await asyncio.sleep(args.interval)
            start, rss_start, cpu_start = time.monotonic(), rss_sum(workers), cpu_sum(workers)
            rss_peak = rss_start
            while time.monotonic() < start + args.seconds:
                await asyncio.sleep(1.0)
                rss_peak = max(rss_peak, rss_sum(workers))
            end = time.monotonic()
            rss_end, cpu_end = rss_sum(workers), cpu_sum(workers)
            for worker in workers:
                if not worker.alive():
                    raise RuntimeError(f"a worker died during the window; see {worker.log_path}")
        finally:
            cluster.stop_all()
            await services.close()
    late = traffic.lateness_ms(args.interval, start, end)
    return {
        "reads_per_s": traffic.reads_between(start, end) / (end - start),
        "schedule_per_s": args.jobs / args.interval,
        "p50_ms": percentile(late, 0.5),
        "p99_ms": percentile(late, 0.99),
        "samples": len(late),
        "rss_start": rss_start,
        "rss_end": rss_end,
        "rss_peak": rss_peak,
        "cores": (cpu_end - cpu_start) / (end - start),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=10_000, help="active jobs to poll (default: %(default)s)")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="measurement window (default: %(default)s)"
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="GENRELAY_POLL_INTERVAL (default: %(default)s)"
    )
    parser.add_argument(
        "--accounts", type=int, default=10, help="LTX accounts the jobs spread over (default: %(default)s)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default: %(default)s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench polling", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    quiet()
    stop_on_sigterm()
    with embedded_redis() as url, tempfile.TemporaryDirectory(prefix="genrelay-polling-") as tmp:
        f = asyncio.run(run(args, url, Path(tmp)))
    print(
        f"polling: {args.workers} worker(s), {args.accounts} accounts, {args.jobs} active jobs "
        f"every {args.interval:g} s: "
        f"{f['reads_per_s']:.0f} status reads/s = "
        f"{f['reads_per_s'] / f['schedule_per_s']:.2f} x the schedule "
        f"({f['schedule_per_s']:.0f}/s); lateness at the provider p50 {f['p50_ms']:.0f} ms, "
        f"p99 {f['p99_ms']:.0f} ms ({f['samples']:.0f} reads); workers' RSS {f['rss_start']:.0f} -> "
        f"{f['rss_end']:.0f} MiB (peak {f['rss_peak']:.0f}), CPU {f['cores']:.2f} cores; "
        f"window {args.seconds:g} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
