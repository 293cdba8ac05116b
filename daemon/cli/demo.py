"""``genrelay demo`` (``make demo``): the whole job path on the embedded default.

Starts an embedded Redis, the provider emulator (every provider on one port), one web and one
worker process (each a real process, as in production), pushes jobs for ``ltx``, ``ltxstudio``,
``vydra``, ``kling`` and ``minimax`` accounts through ``POST /v1/jobs``, shows live progress from
the events streams, prints a summary per provider and account (jobs done, peak concurrency
against ``maxJobs``, how each job ended) and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import keys
from daemon.cli.demo_setup import (
    ACCOUNTS,
    OPERATIONS,
    PROMPTS,
    PROVIDERS,
    USEAPI_SERVICES,
    WEBHOOK_DROP_RATE,
    DemoAccount,
    free_port,
    key_env,
    redis_version,
    start_emulator,
    write_accounts,
)
from daemon.processes import Child, child_env, stop_all

if TYPE_CHECKING:
    import aiohttp

# How a job ended (its ``endedBy``), as the summary names it.
ENDINGS = {"callback": "webhook", "poll": "poll", "safety_poll": "safety poll"}
READY_TIMEOUT_S = 30.0
DEMO_TIMEOUT_S = 600.0
STATES = ("queued", "submitting", "active", "completed", "failed")


def add_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="run jobs end to end on embedded Redis and the emulator",
        description="Start an embedded Redis, the provider emulator (LTX Video API, useapi.net LTX "
        "Studio, vydra.ai), one web and one worker process in a temporary directory; push --jobs jobs "
        "through POST /v1/jobs, show their progress, print a summary per account (peak concurrency "
        "against maxJobs, how each job ended) and stop everything. Needs no account or key. Exit 0 "
        "when every job ended and no account ran over its maxJobs.",
    )
    demo.add_argument("--jobs", type=int, default=36, help="jobs to push through (default: %(default)s)")
    demo.add_argument(
        "--failure-rate", type=float, default=0.15, help="emulator failure knob (default: %(default)s)"
    )
    demo.add_argument(
        "--job-seconds", type=float, default=2.0, help="emulated job duration (default: %(default)s)"
    )
    demo.set_defaults(command=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(jobs=args.jobs, failure_rate=args.failure_rate, job_seconds=args.job_seconds)


@dataclass
class Progress:
    """Job states as the events stream reports them."""

    state: dict[str, str] = field(default_factory=dict)
    progress: dict[str, int] = field(default_factory=dict)

    def apply(self, fields: dict[str, str]) -> None:
        job = fields.get("job", "")
        if job not in self.state:
            return
        state = fields.get("state", "")
        if state in STATES and self.state[job] not in ("completed", "failed"):
            self.state[job] = state
            self.progress[job] = int(fields.get("progress") or 0)

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for v in self.state.values() if v == s) for s in STATES}

    def done(self) -> bool:
        return all(v in ("completed", "failed") for v in self.state.values())

    def line(self, elapsed: float) -> str:
        counts = self.counts()
        total = len(self.state) or 1
        finished = counts["completed"] + counts["failed"]
        width = 30
        filled = int(width * finished / total)
        bar = "#" * filled + "-" * (width - filled)
        parts = " ".join(f"{s} {counts[s]}" for s in STATES)
        return f"[{bar}] {finished}/{total}  {parts}  {elapsed:5.1f}s"


def run_demo(*, jobs: int = 36, failure_rate: float = 0.15, job_seconds: float = 2.0) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="genrelay-demo-"))
    from daemon.embedded_redis import EmbeddedRedis

    redis = EmbeddedRedis(workdir / "redis")
    children: list[Child] = []
    try:
        print(f"demo: files under {workdir}", flush=True)
        url = redis.start()
        print(f"demo: embedded Redis {redis_version()} on {url} (AOF on)", flush=True)
        emulator_url, emulator = start_emulator(failure_rate, job_seconds)
        children.append(emulator)
        print(
            f"demo: provider emulator (ltx, ltxstudio, vydra, kling, minimax) on {emulator_url}: "
            f"failure rate {failure_rate:.0%}, {WEBHOOK_DROP_RATE:.0%} of webhooks dropped",
            flush=True,
        )
        port = free_port()
        env = child_env(
            {
                "GENRELAY_REDIS_URL": url,
                "GENRELAY_ACCOUNTS": str(write_accounts(workdir, emulator_url)),
                "GENRELAY_DATA_DIR": str(workdir),
                "GENRELAY_PORT": str(port),
                "GENRELAY_HOST": "127.0.0.1",
                # The providers with webhooks call back here (loopback: nothing leaves the machine).
                "GENRELAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "GENRELAY_POLL_INTERVAL": "0.5",
                "GENRELAY_SAFETY_POLL_INTERVAL": "3",
                "GENRELAY_CAPACITY_SYNC_INTERVAL": "5",
                "GENRELAY_LOG_FORMAT": "json",
                **{key_env(account): account.key for account in ACCOUNTS},
            }
        )
        children.append(Child("worker", ["daemon", "worker"], env, workdir / "worker.log").start())
        children.append(Child("web", ["daemon", "web"], env, workdir / "web.log").start())
        return asyncio.run(drive(f"http://127.0.0.1:{port}", url, emulator_url, jobs, children))
    finally:
        stop_all(children)
        redis.stop()
        stopped = all(not c.alive() for c in children) and not redis.running
        print(
            f"demo: stopped {len(children)} processes and Redis"
            + ("" if stopped else " (some did not stop!)")
        )
        shutil.rmtree(workdir, ignore_errors=True)


async def drive(web_url: str, redis_url: str, emulator_url: str, count: int, children: list[Child]) -> int:
    import aiohttp

    from daemon.redis_connection import connect

    async with aiohttp.ClientSession() as http:
        await wait_ready(http, web_url, children)
        print(f"demo: genrelay web on {web_url}, 1 worker; submitting {count} jobs", flush=True)
        redis = await connect(redis_url)
        try:
            streams: dict[str, str] = {}
            for provider in PROVIDERS:
                newest = await redis.xrevrange(keys.events_key(provider), count=1)
                streams[keys.events_key(provider)] = newest[0][0] if newest else "0-0"
            progress = Progress()
            for n in range(count):
                provider = PROVIDERS[n % len(PROVIDERS)]
                work = OPERATIONS[provider]
                operation, params = work[(n // len(PROVIDERS)) % len(work)]
                body = {
                    "provider": provider,
                    "operation": operation,
                    "priority": 5,
                    "params": {**params, "prompt": f"{PROMPTS[n % len(PROMPTS)]} #{n + 1}"},
                }
                async with http.post(f"{web_url}/v1/jobs", json=body) as resp:
                    answer = await resp.json()
                    if resp.status != 202:
                        print(f"demo: submit refused: {resp.status} {answer}", file=sys.stderr)
                        return 1
                progress.state[answer["jobId"]] = "queued"
            await follow(redis, streams, progress)
            return await summarize(http, web_url, emulator_url, progress)
        finally:
            await redis.aclose()


async def wait_ready(http: aiohttp.ClientSession, web_url: str, children: list[Child]) -> None:
    import aiohttp

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited at start; see {child.log_path}")
        try:
            async with http.get(f"{web_url}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)  # the web process is starting: nothing to await but its port
    raise RuntimeError(f"genrelay web did not become ready within {READY_TIMEOUT_S:g}s")


async def follow(redis: Any, streams: dict[str, str], progress: Progress) -> None:
    """Render progress from the providers' events streams until every job has ended."""
    tty = sys.stdout.isatty()
    start = time.monotonic()
    printed = 0.0
    while not progress.done():
        if time.monotonic() - start > DEMO_TIMEOUT_S:
            raise RuntimeError("jobs did not finish in time; see the worker log")
        reply = await redis.xread(streams, block=500, count=1000)
        for stream, entries in reply:
            for entry_id, fields in entries:
                streams[stream] = entry_id
                progress.apply(fields)
        elapsed = time.monotonic() - start
        if tty:
            sys.stdout.write("\r" + progress.line(elapsed))
            sys.stdout.flush()
        elif elapsed - printed >= 2 or progress.done():
            print(progress.line(elapsed), flush=True)
            printed = elapsed
    if tty:
        sys.stdout.write("\n")


async def summarize(http: aiohttp.ClientSession, web_url: str, emulator_url: str, progress: Progress) -> int:
    jobs = []
    for job_id in progress.state:
        async with http.get(f"{web_url}/v1/jobs/{job_id}") as resp:
            jobs.append(await resp.json())
    async with http.get(f"{emulator_url}/_emulator/stats") as resp:
        stats = await resp.json()
    async with http.get(f"{web_url}/v1/assets", params={"limit": 1}) as resp:
        assets = (await resp.json())["meta"]["totalItems"]
    completed = [j for j in jobs if j["status"]["type"] == "completed"]
    failed = [j for j in jobs if j["status"]["type"] == "failed"]
    queue_s = [(j["submittedAt"] - j["createdAt"]) / 1000 for j in jobs if j["submittedAt"]]
    provider_s = [
        (j["finishedAt"] - j["submittedAt"]) / 1000 for j in jobs if j["submittedAt"] and j["finishedAt"]
    ]
    print("\ndemo summary")
    print(f"  jobs        {len(jobs)}: completed {len(completed)}, failed {len(failed)}")
    print(f"  in queue    mean {mean(queue_s):.2f}s  max {max(queue_s, default=0):.2f}s")
    print(f"  at provider mean {mean(provider_s):.2f}s  max {max(provider_s, default=0):.2f}s")
    print(f"  assets      {assets} listed by GET /v1/assets (one per completed job)")
    reasons: dict[str, int] = {}
    for job in failed:
        reason = job["status"].get("message", "?")
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda item: -item[1]):
        print(f"  failed x{n}: {reason}")
    rows = [("provider", "account", "done", "completed", "failed", "peak/maxJobs", "ended by")]
    over = False
    for account in ACCOUNTS:
        mine = [j for j in jobs if j["provider"] == account.provider and j["account"] == account.name]
        peak = emulator_peak(stats, account)
        over |= peak > account.max_jobs
        rows.append(
            (
                account.provider,
                account.name,
                str(len(mine)),
                str(sum(j["status"]["type"] == "completed" for j in mine)),
                str(sum(j["status"]["type"] == "failed" for j in mine)),
                f"{peak}/{account.max_jobs}",
                endings(mine),
            )
        )
    print()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print("  (peak: the most jobs the provider ran at once on the account, as the emulator counted them)")
    unfinished = len(jobs) - len(completed) - len(failed)
    if unfinished or over or assets != len(completed):
        problem = "jobs left unfinished" if unfinished else "an account ran over maxJobs" if over else ""
        print(f"demo: FAILED: {problem or 'the asset listing does not match the completed jobs'}")
        return 1
    print("demo: every job reached a terminal state; no account ran over its maxJobs")
    return 0


def emulator_peak(stats: dict[str, Any], account: DemoAccount) -> int:
    """The emulator's own count of the most jobs it ran at once on the account."""
    if account.provider == "ltx":
        return int(stats["keys"][account.key]["peak"])
    if account.provider == "ltxstudio":
        return int(stats["useapi_accounts"][account.name]["peak"])
    if account.provider in USEAPI_SERVICES:
        return int(stats["useapi_services"][account.provider]["accounts"][account.name]["peak"])
    return int(stats["vydra"]["accounts"][account.key]["peak"])


def endings(jobs: list[dict[str, Any]]) -> str:
    """How the jobs ended: webhook, poll, safety poll (and anything else by its own name)."""
    counts: dict[str, int] = {}
    for job in jobs:
        name = ENDINGS.get(job.get("endedBy") or "", job.get("endedBy") or "?")
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda item: -item[1]))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
