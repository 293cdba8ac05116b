"""Scenario F48 (docs/fault-scenarios.md) in miniature: a steady job stream while workers are
SIGKILLed and Redis restarts.

Run: ``make soak MINUTES=N`` or ``.venv/bin/python -m bench soak --minutes 2 --kill-every 20
--redis-restart-every 60``. A Redis with AOF on a fixed port, the emulator in this process (4 LTX
and 4 LTX Studio accounts of ``maxJobs`` 1-5, jobs of 2 s +-50%, 1% failing at the provider, 2% of
callbacks dropped and 2% sent twice), one ``genrelay web`` and four ``genrelay worker`` processes.
Jobs are enqueued through the web's API at ``--rate`` per second (a refused attempt is retried with
the same requestId). Every ``--kill-every`` seconds a random worker gets SIGKILL and a new one
starts; every ``--redis-restart-every`` seconds Redis is restarted gracefully (SHUTDOWN, which
fsyncs the AOF, then a new server on the same port and data dir).

At the end the stream stops, the jobs drain (``--drain-timeout``) and the invariants are checked
(bench/invariants.py): every job terminal, leases empty, emulator peak <= maxJobs, at most one
submission per job, no 500 in the web's access log (a 503 while Redis is down is the documented
answer and is counted), no process exited by itself, no secret in any log. Prints PASS or FAIL
with the numbers; the exit status is 1 on FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

from bench.cluster import Cluster, RestartableRedis, free_port, wait_ready
from bench.common import ProviderTraffic, emulator, quiet, stop_on_sigterm
from bench.invariants import (
    Report,
    allocation_checks,
    emulator_view,
    job_outcomes,
    leases_left,
    secrets_in_logs,
)
from bench.load import SECRET, Fleet, enqueue, wait_terminal
from daemon.callback_tokens import CallbackTokens
from daemon.processes import Child
from daemon.redis_connection import connect
from daemon.settings import Settings

WORKERS = 4


class Soak:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, redis: RestartableRedis, web: str) -> None:
        self.args = args
        self.cluster = cluster
        self.redis = redis
        self.web = web
        self.rng = random.Random(args.seed)
        self.ids: list[str] = []
        self.answers: dict[int, int] = {}
        self.crashed: list[str] = []
        self.started_workers = 0
        self.redis_down_s: list[float] = []

    def start_worker(self) -> Child:
        self.started_workers += 1
        return self.cluster.start("worker", f"worker-{self.started_workers}")

    async def produce(self, until: float) -> None:
        """``--burst`` jobs at once every burst/rate seconds: the mean stays under the accounts'
        capacity (so the stream drains) while each burst fills every slot (so an over-allocation
        would show). Each job is enqueued, retried through outages, before the next burst."""
        n, size = 0, self.args.burst
        while time.monotonic() < until:
            began = time.monotonic()
            self.ids += await enqueue([self.web], range(n, n + size), "soak", self.answers, concurrency=8)
            n += size
            await asyncio.sleep(max(0.0, size / self.args.rate - (time.monotonic() - began)))

    async def kill_workers(self, until: float) -> None:
        while (wait := min(self.args.kill_every, until - time.monotonic())) > 0:
            await asyncio.sleep(wait)
            if time.monotonic() >= until:
                return
            victim = self.rng.choice(self.cluster.workers())
            self.cluster.kill(victim)
            self.start_worker()
            print(
                f"  SIGKILL {victim.name} (pid {victim.pid}); started worker-{self.started_workers}",
                flush=True,
            )

    async def restart_redis(self, until: float) -> None:
        while (wait := min(self.args.redis_restart_every, until - time.monotonic())) > 0:
            await asyncio.sleep(wait)
            if time.monotonic() >= until:
                return
            down = await asyncio.to_thread(self.redis.restart)
            self.redis_down_s.append(down)
            print(f"  Redis restarted (away {down:.1f} s)", flush=True)

    async def watch(self, until: float) -> None:
        """Processes must not exit by themselves; one that does is noted and replaced."""
        while time.monotonic() < until:
            await asyncio.sleep(1.0)
            for child in list(self.cluster.children):
                if not child.alive():
                    self.crashed.append(
                        f"{child.name} exited {child.process.returncode if child.process else '?'}"
                    )
                    self.cluster.children.remove(child)
                    if child.args[1] == "worker":
                        self.start_worker()


def access_log_statuses(path: Path) -> Counter[int]:
    statuses: Counter[int] = Counter()
    for line in path.read_bytes().splitlines():
        if b'"request"' not in line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "request" and "status" in entry:
            statuses[int(entry["status"])] += 1
    return statuses


async def run(args: argparse.Namespace, workdir: Path) -> bool:
    rng = random.Random(args.seed)
    fleet = Fleet.random(workdir, 8, rng)
    config = fleet.emulator_config(
        job_seconds=2.0,
        job_seconds_jitter=0.5,
        failure_rate=0.01,
        webhook_drop_rate=0.02,
        webhook_duplicate_rate=0.02,
        seed=args.seed,
    )
    redis = RestartableRedis(workdir / "redis")
    redis.start()
    traffic = ProviderTraffic()
    cluster: Cluster | None = None
    try:
        async with emulator(config, traffic) as base_url:
            port = free_port()
            env = fleet.env(
                redis.url,
                base_url,
                GENRELAY_POLL_INTERVAL="1",
                GENRELAY_SAFETY_POLL_INTERVAL="5",
                GENRELAY_RETRY_BASE="0.2",
                GENRELAY_RETRY_MAX="2",
                GENRELAY_JOB_TIMEOUT="10",
                GENRELAY_SHUTDOWN_GRACE="5",
                GENRELAY_LOG_LEVEL="info",
                GENRELAY_PUBLIC_URL=f"http://127.0.0.1:{port}",
            )
            settings = Settings.from_env(env)
            cluster = Cluster(workdir, env)
            web_child, web = cluster.start_web("web", port)
            soak = Soak(args, cluster, redis, web)
            for _ in range(WORKERS):
                soak.start_worker()
            await wait_ready(web, web_child)
            until = time.monotonic() + args.minutes * 60
            print(
                f"soak: {args.minutes:g} min, {args.rate:g} jobs/s in bursts of {args.burst} "
                f"on {fleet.slots} slots (jobs 2 s +-50%), "
                f"SIGKILL a worker every {args.kill_every:g} s, "
                f"restart Redis every {args.redis_restart_every:g} s",
                flush=True,
            )
            tasks = [
                asyncio.create_task(soak.kill_workers(until)),
                asyncio.create_task(soak.restart_redis(until)),
                asyncio.create_task(soak.watch(until + args.drain_timeout)),
            ]
            await soak.produce(until)
            await asyncio.gather(*tasks[:2])
            client = await connect(redis.url)
            try:
                drained = time.monotonic()
                await wait_terminal(
                    client,
                    settings.providers(),
                    len(soak.ids),
                    drained,
                    drained + args.drain_timeout,
                    say=lambda line: print(f"  drain: {line.strip()}", flush=True),
                )
                tasks[2].cancel()
                outcomes = await job_outcomes(client, soak.ids)
                leases = await leases_left(client, settings)
            finally:
                await client.aclose()
            stats, emulator_jobs = await emulator_view(base_url)
            cluster.stop_all()
    finally:
        if cluster is not None:
            cluster.stop_all()
        redis.stop()
    report = Report()
    report.add(
        "every job terminal",
        not outcomes.unfinished,
        outcomes.describe(len(soak.ids)),
    )
    report.add("leases empty", leases == 0, f"{leases} left")
    allocation_checks(report, settings, fleet.ltx_keys, stats, emulator_jobs)
    web_statuses = access_log_statuses(workdir / "web.log")
    errors = {s: n for s, n in web_statuses.items() if s >= 500 and s != 503}
    report.add(
        "no 5xx but the documented 503 during a Redis restart",
        not errors and not any(s >= 500 and s != 503 for s in soak.answers),
        f"web answered {dict(sorted(web_statuses.items()))}; "
        f"enqueue saw {dict(sorted(soak.answers.items()))}",
    )
    report.add("no process exited by itself", not soak.crashed, "; ".join(soak.crashed) or "none")
    tokens = CallbackTokens(SECRET)
    macs = [tokens.issue(job_id.split("-", 1)[0], job_id).rsplit(".", 1)[1] for job_id in soak.ids]
    leaked = secrets_in_logs(cluster.logs() if cluster else [], fleet.secrets(), macs)
    report.add("no secrets in logs", not leaked, str(leaked or "none found"))
    print(f"soak: {'PASS' if report.ok else 'FAIL'}")
    print("\n".join(report.lines()))
    print(
        f"  {len(soak.ids)} jobs; {cluster.killed if cluster else 0} workers SIGKILLed, Redis restarted "
        f"{redis.restarts} times (away {', '.join(f'{s:.1f}' for s in soak.redis_down_s) or '-'} s); "
        f"provider requests {traffic.requests}; callbacks {stats.get('callbacks', {}).get('sent', 0)} sent, "
        f"{stats.get('callbacks', {}).get('failed', 0)} not answered 2xx"
    )
    return report.ok


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--minutes",
        type=float,
        default=float(os.environ.get("MINUTES", 10)),
        help="length (default: MINUTES or 10)",
    )
    parser.add_argument(
        "--kill-every", type=float, default=60.0, help="seconds between SIGKILLs (default: 60)"
    )
    parser.add_argument(
        "--redis-restart-every",
        type=float,
        default=300.0,
        help="seconds between Redis restarts (default: 300)",
    )
    parser.add_argument("--rate", type=float, default=5.0, help="jobs enqueued per second (default: 5)")
    parser.add_argument("--burst", type=int, default=40, help="jobs enqueued at once (default: 40)")
    parser.add_argument(
        "--drain-timeout", type=float, default=180.0, help="seconds to let the jobs end (default: 180)"
    )
    parser.add_argument("--seed", type=int, default=48, help="random seed (default: 48)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the logs and Redis data (where is printed at the end)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    quiet()
    stop_on_sigterm()
    if args.keep:
        workdir = Path(tempfile.mkdtemp(prefix="genrelay-soak-"))
        ok = asyncio.run(run(args, workdir))
        print(f"  logs and data kept in {workdir}")
        return 0 if ok else 1
    with tempfile.TemporaryDirectory(prefix="genrelay-soak-") as tmp:
        ok = asyncio.run(run(args, Path(tmp)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
