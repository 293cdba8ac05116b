"""Provider requests per completed job: ``python -m bench requests``.

A throwaway Redis, the provider emulator (in this process: it counts every request each provider's
API receives, ``provider_requests``) and one ``genrelay web`` plus one ``genrelay worker`` as
processes, with webhooks on (the web's public URL is given to the providers). ``--jobs`` jobs per
provider (ltx, LTX Studio through useapi, vydra on the Starter plan) are enqueued at once and run
to the end; reported per provider: the requests its API received divided by the jobs that
completed, and the run's length (the capacity sync and the safety polls cost per second, not per
job). ``--python`` runs the genrelay processes with another checkout's interpreter (its virtualenv),
against the same emulator: a before/after comparison of genrelay alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from bench.cluster import free_port
from bench.common import embedded_redis, quiet, stop_on_sigterm
from daemon.client import Client
from emulator.app import create_app
from emulator.config import EmulatorConfig

LTX_KEY = "bench-requests-ltx-key"
USEAPI_TOKEN = "user:1-bench-requests-token"
STUDIO_EMAIL = "bench@example.com"
VYDRA_KEY = "vydra_live_user_4242_benchrequests"
WORK: dict[str, tuple[str, dict[str, Any]]] = {
    "ltx": (
        "text-to-video",
        {"prompt": "[ok] a lighthouse", "model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"},
    ),
    "ltxstudio": ("images/create", {"prompt": "[ok] a lighthouse"}),
    "vydra": ("generate_image", {"prompt": "[ok] a lighthouse", "model": "gemini-image"}),
}
ACCOUNTS = """[[account]]
provider = "ltx"
name = "a1"
max_jobs = 2
api_key_env = "BENCH_LTX_KEY"
base_url = "{base}"

[[account]]
provider = "ltxstudio"
name = "{email}"
max_jobs = 3
api_key_env = "BENCH_USEAPI_TOKEN"
base_url = "{base}"

[[account]]
provider = "vydra"
name = "v1"
max_jobs = 5
api_key_env = "BENCH_VYDRA_KEY"
base_url = "{base}"
"""


async def _ready(http: aiohttp.ClientSession, url: str, child: asyncio.subprocess.Process, log: Path) -> None:
    for _ in range(400):
        if child.returncode is not None:
            raise RuntimeError(f"a genrelay process exited; see {log}")
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer; see {log}")


async def run(args: argparse.Namespace, redis_url: str, workdir: Path) -> dict[str, Any]:
    config = EmulatorConfig(
        keys={LTX_KEY: 2},
        useapi_accounts={USEAPI_TOKEN: {STUDIO_EMAIL: 3}},
        vydra_accounts={VYDRA_KEY: {"plan": "starter"}},
        job_seconds=args.job_seconds,
        seed=7,
    )
    emulator = web.AppRunner(create_app(config))
    await emulator.setup()
    port = free_port()
    await web.TCPSite(emulator, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    web_port = free_port()
    accounts = workdir / "accounts.toml"
    accounts.write_text(ACCOUNTS.format(base=base, email=STUDIO_EMAIL), encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "GENRELAY_REDIS_URL": redis_url,
        "GENRELAY_ACCOUNTS": str(accounts),
        "GENRELAY_DATA_DIR": str(workdir / "var"),
        "GENRELAY_PORT": str(web_port),
        "GENRELAY_PUBLIC_URL": f"http://127.0.0.1:{web_port}",
        "GENRELAY_SECRET": "bench-requests-secret-0123456789abcdef",
        "GENRELAY_LOG_FORMAT": "json",
        "BENCH_LTX_KEY": LTX_KEY,
        "BENCH_USEAPI_TOKEN": USEAPI_TOKEN,
        "BENCH_VYDRA_KEY": VYDRA_KEY,
    }
    children: list[asyncio.subprocess.Process] = []
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        async with aiohttp.ClientSession() as http:
            for name in ("web", "worker"):
                with (workdir / f"{name}.log").open("wb") as out:
                    children.append(
                        await asyncio.create_subprocess_exec(
                            args.python, "-m", "daemon", name, env=env, cwd=args.root, stdout=out, stderr=out
                        )
                    )
            await _ready(http, f"http://127.0.0.1:{web_port}/healthz", children[0], workdir / "web.log")
            app = Client(client)
            began = time.monotonic()
            jobs = {
                provider: [await app.submit(provider, operation, params) for _ in range(args.jobs)]
                for provider, (operation, params) in WORK.items()
            }
            ended: dict[str, list[str]] = {}
            async with asyncio.timeout(args.timeout):
                for provider, ids in jobs.items():
                    ended[provider] = [(await app.wait(job_id))["status"]["type"] for job_id in ids]
            seconds = time.monotonic() - began
            async with http.get(f"{base}/_emulator/stats") as resp:
                requests: dict[str, int] = (await resp.json())["provider_requests"]
    finally:
        for child in children:
            if child.returncode is None:
                child.terminate()
        for child in children:
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
        await client.aclose()
        await emulator.cleanup()
    return {
        "seconds": seconds,
        "per_provider": {
            provider: (requests.get(provider, 0), ended[provider].count("completed")) for provider in WORK
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench requests", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30, help="jobs per provider (default: %(default)s)")
    parser.add_argument(
        "--job-seconds", type=float, default=3.0, help="how long a job runs (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds the run may take (default: %(default)s)"
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter of the genrelay processes (default: this one)",
    )
    parser.add_argument(
        "--root", default=str(Path(__file__).resolve().parent.parent), help="their working directory"
    )
    args = parser.parse_args(argv)
    quiet()
    stop_on_sigterm()
    with embedded_redis() as url, tempfile.TemporaryDirectory(prefix="genrelay-requests-") as tmp:
        found = asyncio.run(run(args, url, Path(tmp)))
    seconds = found["seconds"]
    print(f"{args.jobs} jobs per provider of {args.job_seconds:g} s, webhooks on, {seconds:.0f} s in all:")
    for provider, (requests, completed) in found["per_provider"].items():
        per_job = requests / completed if completed else float("nan")
        print(
            f"  {provider}: {requests} provider requests, {completed} jobs completed: {per_job:.2f} per job"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
