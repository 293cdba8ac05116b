"""The archive's copy speed and memory: ``python -m bench archive``.

A throwaway Redis, the provider emulator and ONE ``genrelay worker`` as processes on loopback.
Artifacts are generated on the fly by the emulator. 1 MB: rounds of ``--waves`` times
GENRELAY_ARCHIVE_CONCURRENCY files, downloaded as many at once as the archive copies at once;
200 MB: one file at a time. Each round is first a plain aiohttp download of the files streamed to
disk from this process (the baseline), then archive copies of as many new files by the worker
(guarded connection, SHA-256, partial file flushed to disk, rename into the archive, the record in
Redis), interleaved so that a drift of the machine hits both alike. A round of copies runs from
the emulator seeing its first request to the archive's event saying the last one is archived (the
claim's wait before it is not the copy's speed; it is reported apart). Reported: the median over
rounds of the throughput ratio to the baseline (goal >= 0.8x) and the worker's peak RSS during the
200 MB copies against its idle RSS (goal: within 30 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.cluster import Cluster, free_port, rss_mb
from bench.common import embedded_redis, quiet, stop_on_sigterm, write_accounts
from daemon import archive_state
from daemon.assets import AssetStore
from daemon.processes import Child, child_env
from daemon.services import open_services
from daemon.settings import Settings

KEY = "bench-archive-key"
MB = 1_000_000


async def _emulator_ready(base: str, child: Child) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if not child.alive():
                raise RuntimeError(f"the emulator exited; see {child.log_path}")
            try:
                async with http.get(f"{base}/_emulator/stats") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("the emulator did not start")


async def plain_downloads(
    http: aiohttp.ClientSession, urls: list[str], workdir: Path, parallel: int
) -> float:
    """Seconds to download every URL to disk, ``parallel`` at a time, as a plain client would."""
    gate = asyncio.Semaphore(parallel)

    async def one(n: int, url: str) -> None:
        async with gate, http.get(url) as resp:
            resp.raise_for_status()
            with (workdir / f"plain-{n}.bin").open("wb") as handle:
                async for chunk in resp.content.iter_chunked(1024 * 1024):
                    handle.write(chunk)

    began = time.perf_counter()
    await asyncio.gather(*(one(n, url) for n, url in enumerate(urls)))
    return time.perf_counter() - began


async def peak_rss(pid: int, done: asyncio.Event) -> float:
    peak = rss_mb(pid)
    while not done.is_set():
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.02)
    return peak


class Run:
    def __init__(self, base: str, store: AssetStore, http: aiohttp.ClientSession) -> None:
        self.base, self.store, self.http = base, store, http
        self.count = 0
        self.last_event = "$"

    async def configure(self, **knobs: Any) -> None:
        async with self.http.post(f"{self.base}/_emulator/config", json=knobs) as resp:
            resp.raise_for_status()

    def names(self, size: int, count: int) -> list[str]:
        first = self.count
        self.count += count
        return [f"bench-{size}-{n}.mp4" for n in range(first, self.count)]

    async def copies(self, size: int, count: int) -> tuple[float, float]:
        """Archive ``count`` new artifacts of ``size`` bytes recorded at once: (seconds from the
        emulator seeing the first download to the last archived event, median claim wait)."""
        names = self.names(size, count)
        client = self.store.client
        stream = archive_state.events_key("ltx")
        if self.last_event == "$":
            found = await client.xrevrange(stream, count=1)
            self.last_event = found[0][0] if found else "0-0"
        queued = time.time()
        waiting: set[str] = set()
        for name in names:
            fields = {
                "provider": "ltx",
                "account": "bench",
                "type": "videos",
                "url": f"{self.base}/files/{name}",
                "mime": "video/mp4",
                "provider_asset_id": name,
                "created_ms": str(int(queued * 1000)),
                "source": "import",
            }
            waiting.add((await self.store.record_import(fields)).asset_id)
        while waiting:
            for _, entries in await client.xread({stream: self.last_event}, block=5000):
                for entry_id, entry in entries:
                    self.last_event = entry_id
                    if entry["asset"] in waiting:
                        if entry["state"] != "archived":
                            raise RuntimeError(f"the copy ended {entry['state']}")
                        waiting.discard(entry["asset"])
        done = time.time()
        async with self.http.get(f"{self.base}/_emulator/artifacts") as resp:
            log = (await resp.json())["requests"]
        wanted = set(names)
        started = sorted(e["t"] for e in log if e["path"].rpartition("/")[2] in wanted)
        print(
            "DBG",
            [round((t - started[0]) * 1000) for t in started],
            round((done - started[0]) * 1000),
            file=sys.stderr,
        )
        return done - started[0], statistics.median(t - queued for t in started)


async def run(args: argparse.Namespace, redis_url: str, workdir: Path) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    emulator = Child(
        "emulator",
        ["daemon", "emulator", "--port", str(port), "--key", f"{KEY}=4"],
        child_env({}),
        workdir / "emulator.log",
    ).start()
    accounts = write_accounts(workdir / "accounts.toml", base, {"bench": 4})
    env = {
        "GENRELAY_REDIS_URL": redis_url,
        "GENRELAY_ACCOUNTS": str(accounts),
        "GENRELAY_DATA_DIR": str(workdir / "var"),
        "GENRELAY_ARCHIVE_ALLOW_PRIVATE": "1",
        "GENRELAY_LOG_FORMAT": "json",
        "BENCH_KEY_BENCH": KEY,
    }
    cluster = Cluster(workdir, env)
    services = await open_services(Settings.from_env(env), redis_url)
    parallel = services.settings.archive.concurrency
    results: dict[str, float] = {"parallel": parallel}
    try:
        await _emulator_ready(base, emulator)
        worker = cluster.start("worker", "worker-1")
        async with aiohttp.ClientSession() as http:
            bench = Run(base, AssetStore(services.client, services.scripts, services.settings), http)
            await bench.configure(public_base=base)
            # 1 MB: waves of copies at the archive's concurrency; 200 MB: one copy at a time.
            for size, batch, rounds, width in (
                (MB, args.waves * parallel, args.rounds, parallel),
                (200 * MB, 1, args.rounds, 1),
            ):
                await bench.configure(artifact_bytes=size)
                await bench.copies(size, 1)  # warm-up: connections, the worker's first claim
                ratios, plain_rates, copy_rates, claims = [], [], [], []
                idle = rss_mb(worker.pid)
                done = asyncio.Event()
                sampler = asyncio.create_task(peak_rss(worker.pid, done))
                for _ in range(rounds):  # interleaved, so a drift of the machine hits both alike
                    urls = [f"{base}/files/plain-{name}" for name in bench.names(size, batch)]
                    plain = await plain_downloads(http, urls, workdir, width)
                    copy, claim = await bench.copies(size, batch)
                    ratios.append(plain / copy)
                    plain_rates.append(batch * size / MB / plain)
                    copy_rates.append(batch * size / MB / copy)
                    claims.append(claim)
                done.set()
                peak = await sampler
                label = f"{size // MB}mb"
                results[f"{label}_ratio"] = statistics.median(ratios)
                results[f"{label}_plain_mb_s"] = statistics.median(plain_rates)
                results[f"{label}_archive_mb_s"] = statistics.median(copy_rates)
                results[f"{label}_claim_ms"] = 1000 * statistics.median(claims)
                results[f"{label}_width"] = width
                results[f"{label}_batch"] = batch
                results[f"{label}_rss_idle"] = idle
                results[f"{label}_rss_peak"] = peak
    finally:
        await services.close()
        cluster.stop_all()
        emulator.stop(5)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench archive", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--waves",
        type=int,
        default=4,
        help="1 MB copies per round, in GENRELAY_ARCHIVE_CONCURRENCY's (default: %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each size (default: %(default)s)")
    args = parser.parse_args(argv)
    quiet()
    stop_on_sigterm()
    with embedded_redis() as url, tempfile.TemporaryDirectory(prefix="genrelay-archive-") as tmp:
        f = asyncio.run(run(args, url, Path(tmp)))
    for label in ("1mb", "200mb"):
        idle, peak = f[f"{label}_rss_idle"], f[f"{label}_rss_peak"]
        copy, plain, ratio = f[f"{label}_archive_mb_s"], f[f"{label}_plain_mb_s"], f[f"{label}_ratio"]
        print(
            f"archive {label} x{f[f'{label}_batch']:.0f}, {f[f'{label}_width']:.0f} at once: "
            f"{copy:.0f} MB/s = {ratio:.2f} x a plain aiohttp download ({plain:.0f} MB/s; goal >= 0.8x); "
            f"claim wait {f[f'{label}_claim_ms']:.0f} ms; worker RSS idle {idle:.0f} MiB, "
            f"peak {peak:.0f} MiB (+{peak - idle:.0f}; 200 MB goal: <= +30)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
