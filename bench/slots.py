"""Acquire + release throughput of the slot scripts, against a plain EVALSHA of a trivial script.

Run: ``make bench`` or ``.venv/bin/python -m bench.slots``. Each cycle creates a job (the
``create_job`` script: store it, choose an account, take a lease, enqueue its submission) and ends
it (the ``transition`` script: terminal state, release, hand-off). Both loops run sequentially
over one connection, so the ratio shows what the scripts cost beyond a round trip.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.common import embedded_redis, quiet, round_trip_us, write_accounts
from daemon.jobs import JobRequest, State, Update
from daemon.services import open_services
from daemon.settings import Settings

CYCLES = 3000
ACCOUNTS = {"a1": 1, "a2": 2, "a3": 5}


async def measure(redis_url: str, accounts_path: Path) -> dict[str, float]:
    env = {
        **os.environ,
        "GENRELAY_ACCOUNTS": str(accounts_path),
        "GENRELAY_REDIS_URL": redis_url,
        **{f"BENCH_KEY_{n.upper()}": f"k-{n}" for n in ACCOUNTS},
    }
    services = await open_services(Settings.from_env(env), redis_url)
    try:
        baseline = await round_trip_us(services.client)
        request = JobRequest.from_json({"provider": "ltx", "operation": "text-to-video", "params": {"p": 1}})
        done = Update(State.FAILED, message="bench")
        start = time.perf_counter()
        for _ in range(CYCLES):
            created = await services.store.create(request)
            await services.store.apply(created.job_id, done, source="bench")
        elapsed = time.perf_counter() - start
    finally:
        await services.close()
    per_script_us = elapsed / (CYCLES * 2) * 1e6
    return {
        "cycles_per_s": CYCLES / elapsed,
        "script_us": per_script_us,
        "evalsha_us": baseline,
        "ratio": per_script_us / baseline,
    }


def main() -> None:
    quiet()
    with embedded_redis() as url, tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(
            measure(url, write_accounts(Path(tmp) / "accounts.toml", "http://127.0.0.1:9", ACCOUNTS))
        )
    print(
        f"slots: {figures['cycles_per_s']:.0f} acquire+release cycles/s; one slot script "
        f"{figures['script_us']:.0f} us = {figures['ratio']:.2f} x a trivial EVALSHA "
        f"({figures['evalsha_us']:.0f} us)"
    )


if __name__ == "__main__":
    main()
