"""Slot utilisation and dispatch latency with a backlog.

Run: ``make bench`` or ``.venv/bin/python -m bench.dispatch``. 300 jobs of about 1 s each (the
emulator's duration knob) wait on 3 accounts with 8 slots in all; one worker process runs them.
From the events stream (timestamps from the Redis clock) it reports:

* utilisation: mean jobs running at the provider (the emulator's own start times; every job takes
  exactly 1 s there) / total slots, while jobs were still waiting. The gap between two jobs on a
  slot is the poll lag (half the 0.05 s poll interval on average) plus the dispatch latency;
* dispatch latency: a slot released (and handed to the next job in the same script) until a worker
  claims that job to send it, p50 and p99, in ms and as a multiple of one Redis round trip.

How a freed slot reaches a worker fast: the releasing script enqueues the next submission at once,
and workers read the queue every ``GENRELAY_QUEUE_POLL_DELAY`` (0.01 s instead of arq's 0.5 s).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import (
    embedded_redis,
    emulator,
    parse_iso_ms,
    percentile,
    quiet,
    round_trip_us,
    write_accounts,
)
from daemon import keys
from daemon.jobs import JobRequest
from daemon.services import open_services
from daemon.settings import Settings
from emulator.config import EmulatorConfig

JOBS = 300
ACCOUNTS = {"a1": 2, "a2": 3, "a3": 3}
JOB_MS = 1000
PARAMS = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


async def run(redis_url: str, workdir: Path) -> dict[str, float]:
    config = EmulatorConfig(keys={f"k-{n}": m for n, m in ACCOUNTS.items()}, job_seconds=1.0)
    async with emulator(config) as base_url:
        env = {
            **os.environ,
            "GENRELAY_ACCOUNTS": str(write_accounts(workdir / "accounts.toml", base_url, ACCOUNTS)),
            "GENRELAY_REDIS_URL": redis_url,
            # LTX has no callbacks: a finished job is seen at its next poll. Polling every 50 ms keeps
            # that lag (25 ms on average) from hiding what this bench measures, the dispatch.
            "GENRELAY_POLL_INTERVAL": "0.05",
            "GENRELAY_LOG_LEVEL": "warning",
            "GENRELAY_LOG_FORMAT": "json",
            **{f"BENCH_KEY_{n.upper()}": f"k-{n}" for n in ACCOUNTS},
        }
        services = await open_services(Settings.from_env(env), redis_url)
        log = (workdir / "worker.log").open("wb")
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "worker", env=env, stdout=log, stderr=log
        )
        try:
            baseline = await round_trip_us(services.client)
            ids = []
            for n in range(JOBS):
                body = {
                    "provider": "ltx",
                    "operation": "text-to-video",
                    "params": {"prompt": f"[ok] {n}", **PARAMS},
                }
                ids.append((await services.store.create(JobRequest.from_json(body))).job_id)
            events = await follow_until_done(services.client, set(ids))
            async with aiohttp.ClientSession() as http, http.get(f"{base_url}/_emulator/jobs") as resp:
                started = [parse_iso_ms(job["created_at"]) for job in (await resp.json())["jobs"]]
        finally:
            worker.terminate()
            await worker.wait()
            log.close()
            await services.close()
    return analyse(events, started, baseline)


async def follow_until_done(client, ids: set[str]) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    events: list[dict[str, str]] = []
    left = set(ids)
    last = "0-0"
    deadline = time.monotonic() + 600
    while left and time.monotonic() < deadline:
        for _, entries in await client.xread({keys.events_key("ltx"): last}, block=1000, count=1000):
            for entry_id, fields in entries:
                last = entry_id
                events.append(fields)
                if fields["state"] in ("completed", "failed"):
                    left.discard(fields["job"])
    if left:
        raise RuntimeError(f"{len(left)} jobs did not finish")
    return events


def analyse(events: list[dict[str, str]], started: list[int], baseline_us: float) -> dict[str, float]:
    dispatched: dict[str, int] = {}
    submitting: dict[str, int] = {}
    ended: dict[str, int] = {}
    for e in events:
        ts, job = int(e["ts"]), e["job"]
        if e["state"] == "dispatched":
            dispatched.setdefault(job, ts)
        elif e["state"] == "submitting":
            submitting.setdefault(job, ts)
        elif e["state"] in ("completed", "failed"):
            ended[job] = ts
    # Jobs dispatched by a release (not at creation, when the slots were simply free).
    first_wave = sorted(dispatched.values())[: sum(ACCOUNTS.values())]
    release_dispatches = [j for j, ts in dispatched.items() if ts > max(first_wave)]
    latency = [float(submitting[j] - dispatched[j]) for j in release_dispatches if j in submitting]
    # While jobs waited: from the first provider start to the last one.
    window_start, window_end = min(started), max(started)
    busy = sum(max(0, min(s + JOB_MS, window_end) - max(s, window_start)) for s in started)
    total = sum(ACCOUNTS.values()) * max(1, window_end - window_start)
    p50, p99 = percentile(latency, 0.5), percentile(latency, 0.99)
    return {
        "utilisation": busy / total,
        "p50_ms": p50,
        "p99_ms": p99,
        "p50_rtt": p50 * 1000 / baseline_us,
        "p99_rtt": p99 * 1000 / baseline_us,
        "rtt_us": baseline_us,
        "samples": len(latency),
    }


def main() -> None:
    quiet()
    with embedded_redis() as url, tempfile.TemporaryDirectory() as tmp:
        f = asyncio.run(run(url, Path(tmp)))
    print(
        f"dispatch: provider-side utilisation {f['utilisation']:.3f} of {sum(ACCOUNTS.values())} slots "
        "while jobs waited; "
        f"release -> claimed by a worker p50 {f['p50_ms']:.0f} ms ({f['p50_rtt']:.0f} round trips), "
        f"p99 {f['p99_ms']:.0f} ms ({f['p99_rtt']:.0f} round trips); one round trip {f['rtt_us']:.0f} us; "
        f"{f['samples']:.0f} hand-offs"
    )


if __name__ == "__main__":
    main()
