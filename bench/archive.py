"""The archive's copy speed and memory: ``python -m bench archive``.

A throwaway Redis, the provider emulator and ONE ``genrelay worker`` as processes on loopback. For
1 MB and 200 MB artifacts (generated on the fly by the emulator), each size first as a plain aiohttp
download of the same file streamed to disk from this process (the baseline), then as an archive
copy by the worker (guarded connection, SHA-256, partial file, rename into the archive, the
record in Redis). A copy's time runs from the emulator seeing its request to the archive's event
saying it is archived (the claim's wait before it is not the copy's speed; it is reported apart).
Reported: throughput of each as a ratio to the baseline (goal >= 0.8x) and the worker's peak RSS
during the 200 MB copy against its idle RSS (goal: within 30 MB).
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


async def plain_download(http: aiohttp.ClientSession, url: str, path: Path) -> float:
    began = time.perf_counter()
    async with http.get(url) as resp:
        resp.raise_for_status()
        with path.open("wb") as handle:
            async for chunk in resp.content.iter_chunked(1024 * 1024):
                handle.write(chunk)
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

    async def copy(self, size: int) -> tuple[float, float]:
        """Archive one new artifact of ``size`` bytes: (copy seconds, claim wait seconds)."""
        self.count += 1
        name = f"bench-{size}-{self.count}.mp4"
        client = self.store.client
        stream = archive_state.events_key("ltx")
        if self.last_event == "$":
            found = await client.xrevrange(stream, count=1)
            self.last_event = found[0][0] if found else "0-0"
        queued = time.time()
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
        recorded = await self.store.record_import(fields)
        while True:
            for _, entries in await client.xread({stream: self.last_event}, block=5000):
                for entry_id, entry in entries:
                    self.last_event = entry_id
                    if entry["asset"] == recorded.asset_id:
                        if entry["state"] != "archived":
                            raise RuntimeError(f"the copy ended {entry['state']}")
                        done = time.time()
                        async with self.http.get(f"{self.base}/_emulator/artifacts") as resp:
                            log = (await resp.json())["requests"]
                        started = next(e["t"] for e in log if e["path"].endswith(name))
                        return done - started, started - queued


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
    results: dict[str, float] = {}
    try:
        await _emulator_ready(base, emulator)
        services = await open_services(Settings.from_env(env), redis_url)
        worker = cluster.start("worker", "worker-1")
        async with aiohttp.ClientSession() as http:
            bench = Run(base, AssetStore(services.client, services.scripts, services.settings), http)
            await bench.configure(public_base=base)
            for size, reps in ((MB, args.small_reps), (200 * MB, args.large_reps)):
                await bench.configure(artifact_bytes=size)
                await bench.copy(size)  # warm-up: connections, the worker's first claim
                plain = [
                    await plain_download(http, f"{base}/files/plain-{size}-{n}.mp4", workdir / "plain.bin")
                    for n in range(reps)
                ]
                idle = rss_mb(worker.pid)
                done = asyncio.Event()
                sampler = asyncio.create_task(peak_rss(worker.pid, done))
                copies = [await bench.copy(size) for _ in range(reps)]
                done.set()
                peak = await sampler
                label = f"{size // MB}mb"
                results[f"{label}_plain_mb_s"] = size / MB / statistics.median(plain)
                results[f"{label}_archive_mb_s"] = size / MB / statistics.median(c[0] for c in copies)
                results[f"{label}_claim_ms"] = 1000 * statistics.median(c[1] for c in copies)
                results[f"{label}_rss_idle"] = idle
                results[f"{label}_rss_peak"] = peak
        await services.close()
    finally:
        cluster.stop_all()
        emulator.stop(5)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench archive", description=__doc__.splitlines()[0])
    parser.add_argument("--small-reps", type=int, default=10, help="1 MB copies (default: %(default)s)")
    parser.add_argument("--large-reps", type=int, default=2, help="200 MB copies (default: %(default)s)")
    args = parser.parse_args(argv)
    quiet()
    stop_on_sigterm()
    with embedded_redis() as url, tempfile.TemporaryDirectory(prefix="genrelay-archive-") as tmp:
        f = asyncio.run(run(args, url, Path(tmp)))
    for label in ("1mb", "200mb"):
        copy, plain = f[f"{label}_archive_mb_s"], f[f"{label}_plain_mb_s"]
        idle, peak = f[f"{label}_rss_idle"], f[f"{label}_rss_peak"]
        print(
            f"archive {label}: {copy:.0f} MB/s = {copy / plain:.2f} x a plain aiohttp download "
            f"({plain:.0f} MB/s; goal >= 0.8x); claim wait {f[f'{label}_claim_ms']:.0f} ms; "
            f"worker RSS idle {idle:.0f} MiB, peak {peak:.0f} MiB (+{peak - idle:.0f}; 200 MB goal: <= +30)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
