"""`python -m bench scale --quick` runs end to end and reports each figure the README names (the
figures themselves are measured, never asserted)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def test_bench_scale_quick_reports_script_cost_and_memory_per_job() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench",
        "scale",
        "--quick",
        "--only",
        "script",
        "memory",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(600):
        out, _ = await process.communicate()
    text = out.decode()
    assert process.returncode == 0, text[-3000:]
    report = text[text.index("scale: results") :]
    # Every account count and shape of the quick plan, each with its ratio to the baseline.
    for accounts, shape, backlog in [
        (3, "free", 0),
        (30, "free", 0),
        (3, "queued", 2000),
        (30, "queued", 2000),
    ]:
        line = re.search(rf"^\s+{accounts} accounts, {shape}\s+backlog\s+{backlog}: Redis .*$", report, re.M)
        assert line, report
        assert "x 3 accounts" in line.group(0)
    assert re.search(r"x the empty backlog", report)
    assert re.search(r"^\s+\d+ bytes of Redis memory per finished job with its asset", report, re.M), report
