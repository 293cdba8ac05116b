"""Log lines are JSON (or console text) and never carry a secret, through structlog or stdlib logging."""

from __future__ import annotations

import subprocess
import sys

import orjson

from daemon.logs import REDACTED, SecretRedactor

KEY = "ltxv-secret-key-abcdef0123"

SCRIPT = f"""
import logging, structlog
from daemon.logs import configure_logging
configure_logging(level="info", fmt="json", secrets=[{KEY!r}])
log = structlog.get_logger("t")
log.info("job submitted", job_id="ltx-1", provider="ltx", account="a1", url="https://x/?key={KEY}")
log.info("headers", authorization="Bearer abc.def", api_key="plain")
log.debug("hidden at info")
logging.getLogger("aiohttp.access").info("POST /callbacks/ltx/tok3n-value HTTP/1.1 key={KEY}")
try:
    raise RuntimeError("failed with {KEY}")
except RuntimeError:
    log.exception("crash")
"""


def run_script() -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30, check=True
    )
    return [orjson.loads(line) for line in done.stderr.splitlines() if line.strip()]


def test_json_lines_carry_the_job_fields_and_no_secret() -> None:
    lines = run_script()
    assert [line["event"] for line in lines][:2] == ["job submitted", "headers"]
    first = lines[0]
    assert (first["job_id"], first["provider"], first["account"], first["level"]) == (
        "ltx-1",
        "ltx",
        "a1",
        "info",
    )
    text = "\n".join(orjson.dumps(line).decode() for line in lines)
    assert KEY not in text
    assert "abc.def" not in text and "plain" not in text
    assert "tok3n-value" not in text
    assert "hidden at info" not in text
    assert any("RuntimeError" in str(line.get("exception", "")) for line in lines)


def test_redactor_masks_nested_values() -> None:
    redactor = SecretRedactor([KEY])
    event = redactor(None, "info", {"event": "x", "nested": {"list": [f"a {KEY} b"]}, "n": 3})
    assert event["nested"] == {"list": [f"a {REDACTED} b"]}
    assert event["n"] == 3
