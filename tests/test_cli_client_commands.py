"""The client commands (``submit``, ``status``, ``cancel``, ``accounts``, ``deliveries``) as real
processes against a real Redis: they run with an accounts file whose key variables are unset,
``--wait`` shows the job's state and progress on stderr while stdout stays the final JSON record,
and the tables have ``--json``."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson

from daemon.settings import Settings
from tests.conftest import API_KEYS, Emulator, process_env

T2V = {"model": "ltx-2-3-fast", "duration": 4, "resolution": "1920x1080"}


def keyless_env(tmp_path: Path, redis_url: str, base_url: str) -> dict[str, str]:
    """The environment of an app host: Redis and the accounts file, no provider key anywhere."""
    env = process_env(tmp_path, redis_url, base_url, {"a1": 2, "a2": 1})
    keyless = {k: v for k, v in env.items() if not k.startswith(("LTX_KEY_", "USEAPI_", "VYDRA_KEY_"))}
    keyless["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    return keyless


async def genrelay(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_settings_without_keys_keep_the_accounts_and_leave_their_keys_empty(
    tmp_path: Path, redis_url: str
) -> None:
    env = keyless_env(tmp_path, redis_url, "http://127.0.0.1:9")
    settings = Settings.from_env(env, require_keys=False)
    assert [(a.name, a.api_key_env, a.api_key) for a in settings.accounts] == [
        ("a1", "LTX_KEY_A1", ""),
        ("a2", "LTX_KEY_A2", ""),
    ]
    # Only the daemon's own secret is left to redact: no provider key is held.
    assert settings.secrets() == (env["GENRELAY_SECRET"],)


async def test_web_still_refuses_to_start_without_the_keys(tmp_path: Path, redis_url: str) -> None:
    code, _, err = await genrelay(keyless_env(tmp_path, redis_url, "http://127.0.0.1:9"), "web")
    assert code == 2
    assert "LTX_KEY_A1 is not set" in err


async def test_submit_wait_and_status_run_without_provider_keys_and_show_progress(
    tmp_path: Path, redis_url: str, emulator: Emulator, make_settings, open_daemon, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """The worker (in this process) holds the keys; the commands' environment has none."""
    settings = make_settings(emulator.url, accounts={"a1": 2, "a2": 1})
    await open_daemon(settings)
    await start_worker(settings)
    env = keyless_env(tmp_path, redis_url, emulator.url)
    params = orjson.dumps({"prompt": "a heron [seconds=1] [ok]", **T2V}).decode()

    code, out, err = await genrelay(env, "submit", "ltx", "text-to-video", params, "--wait")
    assert code == 0, err
    job = orjson.loads(out)
    assert job["status"]["type"] == "completed" and job["providerJobId"], job
    lines = [line for line in err.splitlines() if line.startswith(job["jobId"])]
    states = [line.split(": ", 1)[1].split()[0] for line in lines]
    assert states[0] == "enqueued" and states[-1] == "completed", err
    assert "active" in states, err
    assert len(lines) == len(set(lines)), "a line repeats although nothing changed"

    code, out, err = await genrelay(env, "status", job["jobId"])
    assert (code, orjson.loads(out)) == (0, job), err
    code, out, err = await genrelay(env, "status", job["jobId"], "--wait")
    assert code == 0 and orjson.loads(out) == job
    assert err.splitlines() == [f"{job['jobId']}: completed 100% (account {job['account']})"]
    stats = (await emulator.stats())["keys"]
    assert sum(stats[API_KEYS[name]]["submitted"] for name in ("a1", "a2")) == 1  # type: ignore[index]


async def test_cancel_without_provider_keys(
    tmp_path: Path, redis_url: str, make_settings, open_daemon
) -> None:  # type: ignore[no-untyped-def]
    """No worker runs, so the job is created here directly (queued, waiting for a submit)."""
    from daemon.jobs import JobRequest

    services = await open_daemon(make_settings(accounts={"a1": 2, "a2": 1}))
    created = await services.store.create(JobRequest("ltx", "text-to-video", {"prompt": "x", **T2V}))
    env = keyless_env(tmp_path, redis_url, "http://127.0.0.1:9")
    code, out, err = await genrelay(env, "cancel", created.job_id)
    assert code == 0, err
    assert orjson.loads(out)["status"]["type"] == "canceled"


async def test_accounts_and_deliveries_without_keys_as_tables_and_json(
    tmp_path: Path, redis_url: str, make_settings, open_daemon
) -> None:  # type: ignore[no-untyped-def]
    await open_daemon(make_settings(accounts={"a1": 2, "a2": 1}))
    env = keyless_env(tmp_path, redis_url, "http://127.0.0.1:9")

    code, out, err = await genrelay(env, "accounts")
    assert code == 0, err
    assert out.splitlines()[0].split() == [
        "provider",
        "account",
        "maxJobs",
        "effectiveMaxJobs",
        "executing",
        "available",
        "state",
        "requests",
    ]
    code, out, err = await genrelay(env, "accounts", "--json")
    assert code == 0, err
    shown = orjson.loads(out)
    rows = [
        (a["account"], a["maxJobs"], a["effectiveMaxJobs"], a["available"], a["state"])
        for a in shown["accounts"]
    ]
    assert rows == [("a1", 2, 2, 2, "ok"), ("a2", 1, 1, 1, "ok")]
    assert shown["waiting"] == {"ltx": 0}
    code, out, err = await genrelay(env, "accounts", "disable", "a2", "--json")
    assert code == 0, err
    assert [a["enabled"] for a in orjson.loads(out)["accounts"]] == [True, False]

    for args in (
        ["deliveries", "--json"],
        ["deliveries", "list", "--json"],
        ["deliveries", "--json", "list"],
    ):
        code, out, err = await genrelay(env, *args)
        assert (code, orjson.loads(out)) == (0, []), (args, err)
