"""``genrelay demo`` (``make demo``): the whole job path on the embedded default.

Starts an embedded Redis, the provider emulator, one web and one worker process (each a real
process, as in production), pushes jobs through ``POST /v1/jobs``, shows live progress from the
events stream, prints a summary and stops everything it started.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from daemon import keys
from daemon.processes import Child, child_env, stop_all
from daemon.redis import EmbeddedRedis, connect

ACCOUNTS = {"studio-a": 3, "studio-b": 2}
OPERATIONS: list[tuple[str, dict[str, Any]]] = [
    ("text-to-video", {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}),
    (
        "image-to-video",
        {
            "model": "ltx-2-pro",
            "duration": 6,
            "resolution": "1920x1080",
            "image_uri": "https://example.com/still.png",
        },
    ),
    ("extend", {"video_uri": "https://example.com/clip.mp4", "duration": 2}),
    ("video-to-video-hdr", {"video_uri": "https://example.com/clip.mp4"}),
]
PROMPTS = ["a lighthouse at dawn", "a red fox in snow", "city lights from a train", "waves on black sand"]
READY_TIMEOUT_S = 30.0
DEMO_TIMEOUT_S = 600.0
STATES = ("queued", "submitting", "active", "completed", "failed")


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


def run_demo(*, jobs: int = 32, failure_rate: float = 0.15, job_seconds: float = 2.0) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="genrelay-demo-"))
    redis = EmbeddedRedis(workdir / "redis")
    children: list[Child] = []
    try:
        print(f"demo: files under {workdir}", flush=True)
        url = redis.start()
        print(f"demo: embedded Redis {redis_version()} on {url} (AOF on)", flush=True)
        emulator_url, emulator = start_emulator(workdir, failure_rate, job_seconds)
        children.append(emulator)
        print(f"demo: provider emulator on {emulator_url} (failure rate {failure_rate:.0%})", flush=True)
        port = free_port()
        env = child_env(
            {
                "GENRELAY_REDIS_URL": url,
                "GENRELAY_ACCOUNTS": str(write_accounts(workdir, emulator_url)),
                "GENRELAY_DATA_DIR": str(workdir),
                "GENRELAY_PORT": str(port),
                "GENRELAY_HOST": "127.0.0.1",
                "GENRELAY_POLL_INTERVAL": "0.5",
                "GENRELAY_LOG_FORMAT": "json",
                **{f"DEMO_KEY_{i}": key for i, key in enumerate(demo_keys())},
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


def demo_keys() -> list[str]:
    return [f"demo-key-{name}" for name in ACCOUNTS]


def write_accounts(workdir: Path, emulator_url: str) -> Path:
    path = workdir / "accounts.toml"
    tables = [
        f'[[account]]\nprovider = "ltx"\nname = "{name}"\nmax_jobs = {max_jobs}\n'
        f'api_key_env = "DEMO_KEY_{i}"\nbase_url = "{emulator_url}"\n'
        for i, (name, max_jobs) in enumerate(ACCOUNTS.items())
    ]
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


def start_emulator(workdir: Path, failure_rate: float, job_seconds: float) -> tuple[str, Child]:
    key_args = [
        f"--key={key}={max_jobs}" for key, max_jobs in zip(demo_keys(), ACCOUNTS.values(), strict=True)
    ]
    args = [
        "emulator",
        "--port",
        "0",
        "--job-seconds",
        str(job_seconds),
        "--jitter",
        "0.5",
        "--failure-rate",
        str(failure_rate),
        # The same failures every run, so the demo always shows some.
        "--seed",
        "7",
        *key_args,
    ]
    child = Child("emulator", args, child_env({}))
    child.process = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert child.process.stdout is not None
    line = child.process.stdout.readline().decode().strip()
    if "listening on " not in line:
        child.stop()
        raise RuntimeError(f"the emulator did not start: {line or 'no output'}")
    return line.split("listening on ", 1)[1], child


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_version() -> str:
    from daemon.redis import embedded_server_binary

    out = subprocess.run(
        [str(embedded_server_binary()), "--version"], capture_output=True, text=True, check=False
    )
    return next((w.split("=")[1] for w in out.stdout.split() if w.startswith("v=")), "?")


async def drive(web_url: str, redis_url: str, emulator_url: str, count: int, children: list[Child]) -> int:
    async with aiohttp.ClientSession() as http:
        await wait_ready(http, web_url, children)
        print(f"demo: genrelay web on {web_url}, 1 worker; submitting {count} jobs", flush=True)
        redis = await connect(redis_url)
        try:
            last_id = "$"
            newest = await redis.xrevrange(keys.events_key("ltx"), count=1)
            if newest:
                last_id = newest[0][0]
            progress = Progress()
            for n in range(count):
                operation, params = OPERATIONS[n % len(OPERATIONS)]
                body = {
                    "provider": "ltx",
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
            await follow(redis, last_id, progress)
            return await summarize(http, web_url, emulator_url, progress)
        finally:
            await redis.aclose()


async def wait_ready(http: aiohttp.ClientSession, web_url: str, children: list[Child]) -> None:
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


async def follow(redis: Any, last_id: str, progress: Progress) -> None:
    """Render progress from the events stream until every job has ended."""
    tty = sys.stdout.isatty()
    start = time.monotonic()
    printed = 0.0
    while not progress.done():
        if time.monotonic() - start > DEMO_TIMEOUT_S:
            raise RuntimeError("jobs did not finish in time; see the worker log")
        reply = await redis.xread({keys.events_key("ltx"): last_id}, block=500, count=1000)
        for _, entries in reply:
            for entry_id, fields in entries:
                last_id = entry_id
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
    reasons: dict[str, int] = {}
    for job in failed:
        reason = job["status"].get("message", "?")
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda item: -item[1]):
        print(f"  failed x{n}: {reason}")
    over = False
    for key, max_jobs in zip(demo_keys(), ACCOUNTS.values(), strict=True):
        peak = stats["keys"][key]["peak"]
        over |= peak > max_jobs
        name = list(ACCOUNTS)[demo_keys().index(key)]
        print(f"  account {name}: peak {peak} concurrent jobs at the provider (maxJobs {max_jobs})")
    unfinished = len(jobs) - len(completed) - len(failed)
    if unfinished or over:
        print("demo: FAILED: " + ("jobs left unfinished" if unfinished else "an account ran over maxJobs"))
        return 1
    print("demo: every job reached a terminal state; no account ran over its maxJobs")
    return 0


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
