"""`python -m bench requests` runs end to end: every provider's jobs complete and its requests per
completed job are reported (the figures themselves are measured, never asserted)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def test_bench_requests_reports_provider_requests_per_completed_job() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bench", "requests", "--jobs", "2", "--job-seconds", "0.2", "--timeout", "120"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(180):
        out, _ = await process.communicate()
    text = out.decode()
    assert process.returncode == 0, text[-3000:]
    for provider in ("ltx", "ltxstudio", "vydra"):
        line = re.search(
            rf"^  {provider}: (\d+) provider requests, 2 jobs completed: [\d.]+ per job$", text, re.M
        )
        assert line is not None and int(line.group(1)) >= 2, text  # a submit and a status read at least
