"""``genrelay run``: on the embedded default one command starts Redis, web and worker, SIGTERM stops
them all and a second run on the same data dir finds the first run's jobs; as a supervisor it
restarts a child that dies (each worker with its own health name), gives up after repeated crashes,
and a Ctrl-C lets a submission in flight finish."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from daemon import keys
from daemon.client import Client
from daemon.embedded_redis import find_running
from daemon.processes import Child, Supervisor, child_env
from tests.conftest import API_KEYS, Emulator, config_set, process_env, write_accounts
from tests.test_reconcile import until
from workers.worker import health_check_key

READY = "genrelay web listening on"
T2V = {"model": "ltx-2-3-fast", "duration": 4, "resolution": "1920x1080"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_run_starts_everything_stops_cleanly_and_keeps_jobs(
    tmp_path: Path, emulator: Emulator, daemon_processes
) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "var"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "GENRELAY_REDIS_URL"},
        "GENRELAY_ACCOUNTS": str(write_accounts(tmp_path / "accounts.toml", emulator.url, {"a1": 2})),
        "GENRELAY_DATA_DIR": str(data_dir),
        "GENRELAY_PORT": str(port),
        "GENRELAY_POLL_INTERVAL": "0.1",
        "GENRELAY_LOG_FORMAT": "json",
        "LTX_KEY_A1": API_KEYS["a1"],
    }
    first = await daemon_processes("run", env, ready_line=READY)
    url = find_running(data_dir)
    assert url is not None
    body = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "[ok]", **T2V}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/v1/jobs", json=body) as resp:
            assert resp.status == 202
            job_id = (await resp.json())["jobId"]
    client = await Client.connect(url)
    try:
        async with asyncio.timeout(30):
            assert (await client.wait(job_id))["status"]["type"] == "completed"
    finally:
        await client.close()
    assert await first.stop() == 0
    assert find_running(data_dir) is None, "the embedded Redis outlived genrelay run"

    second = await daemon_processes("run", env, ready_line=READY)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/v1/jobs/{job_id}") as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["status"]["type"] == "completed"
    finally:
        assert await second.stop() == 0


def run_env(tmp_path: Path, redis_url: str, emulator: Emulator, **extra: str) -> dict[str, str]:
    """``genrelay run`` on the test's Redis (no embedded one), the host name as the worker name."""
    env = process_env(tmp_path, redis_url, emulator.url, {"a1": 2}, GENRELAY_PORT=str(free_port()), **extra)
    env.pop("GENRELAY_WORKER_NAME", None)
    return env


def started_pid(lines: list[str], child: str, after: int = 0) -> tuple[int, int]:
    """The pid in the supervisor's last ``<child> started (pid N)`` line from index ``after``, and
    that line's index."""
    for index in range(len(lines) - 1, after - 1, -1):
        found = re.search(rf"{child} started \(pid (\d+)\)", lines[index])
        if found:
            return int(found.group(1)), index
    raise AssertionError(f"no start of {child} logged:\n{''.join(lines)}")


async def keyspace_events(pubsub: aioredis.client.PubSub, wanted: set[tuple[str, str]]) -> None:
    """Read keyspace notifications until every (key, event) of ``wanted`` has arrived."""
    async with asyncio.timeout(30):
        while wanted:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                key = message["channel"].split(":", 1)[1]
                wanted.discard((key, message["data"]))


async def test_run_restarts_a_killed_worker_and_each_worker_has_its_own_health_name(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, emulator: Emulator, daemon_processes
) -> None:  # type: ignore[no-untyped-def]
    host = socket.gethostname()
    first, second = health_check_key(f"{host}-1"), health_check_key(f"{host}-2")
    await config_set(redis_client, redis_url, "notify-keyspace-events", "Kg$")
    pubsub = redis_client.pubsub()
    try:
        await pubsub.psubscribe(f"__keyspace@*__:{health_check_key(host)}-*")
        env = run_env(tmp_path, redis_url, emulator, GENRELAY_HEALTH_INTERVAL="0.5")
        run = await daemon_processes("run --workers 2", env, ready_line=READY)
        await keyspace_events(pubsub, {(first, "set"), (second, "set")})  # two workers, two names

        old_pid, _ = started_pid(run.lines, "worker-1")
        os.kill(old_pid, signal.SIGKILL)
        await run.wait_for_line("worker-1 was killed by SIGKILL; restarting it")
        # The killed worker can write no more: a health record for its name after this delete comes
        # from the new process (notifications arrive in order).
        await redis_client.delete(first)
        await keyspace_events(pubsub, {(first, "del")})
        await keyspace_events(pubsub, {(first, "set")})
        new_pid, _ = started_pid(run.lines, "worker-1")
        assert new_pid != old_pid
        assert "worker-2 started" not in "".join(run.lines[started_pid(run.lines, "worker-2")[1] + 1 :])
        assert await run.stop() == 0
    finally:
        await pubsub.aclose()
        await config_set(redis_client, redis_url, "notify-keyspace-events", "")


async def test_ctrl_c_lets_the_submission_in_flight_finish(
    tmp_path: Path, redis_url: str, redis_client: aioredis.Redis, emulator: Emulator, daemon_processes
) -> None:  # type: ignore[no-untyped-def]
    """The provider holds its answer to the create request; SIGINT to `genrelay run` arrives while
    the worker waits for it. The worker finishes the submission (the job gets its provider id) before
    it exits, well within its grace, and the provider saw one submission."""
    await emulator.fault(method="POST", path_prefix="/v2/text-to-video", hold_seconds=3, count=1)
    run = await daemon_processes("run", run_env(tmp_path, redis_url, emulator), ready_line=READY)
    client = Client(redis_client)
    job_id = await client.submit("ltx", "text-to-video", {"prompt": "[seconds=30] held", **T2V})
    a1 = API_KEYS["a1"]
    await until(lambda: _submitted(emulator, a1))  # the create request is at the provider
    code = await run.stop(signal.SIGINT, within_s=90)
    assert code == 0, run.text()
    record = await redis_client.hgetall(keys.job_key(job_id))
    assert record["state"] == "active" and record["provider_job_id"], record
    assert record["submit_tries"] == "1", record
    assert await _submitted(emulator, a1) == 1
    assert "SIGINT: stopping" in run.text()


async def _submitted(emulator: Emulator, key: str) -> int:
    stats = await emulator.stats()
    return int(stats["keys"][key]["submitted"])  # type: ignore[index]


def test_supervisor_gives_up_after_repeated_crashes(tmp_path: Path) -> None:
    """A child that exits at once each time (an unknown command) is restarted with backoff until it
    has crashed crash_limit times within the window; then the supervisor stops and says so."""
    said: list[str] = []
    crashing = Child("bad", ["daemon", "no-such-command"], child_env({}), tmp_path / "bad.log")
    steady = Child("steady", ["emulator", "--port", "0"], child_env({}), tmp_path / "steady.log")
    supervisor = Supervisor(
        [crashing, steady],
        stop_grace_s=10,
        crash_limit=3,
        crash_window_s=60,
        restart_base_s=0.05,
        say=said.append,
    )
    assert supervisor.run() is False
    restarts = [line.split(";")[0] for line in said if line.startswith("bad exited")]
    assert restarts == ["bad exited with code 2"] * 2
    assert said[-1].startswith("GIVING UP: bad exited with code 2: 3 crashes within 60 s")
    assert sum(line.startswith("bad started") for line in said) == 3
    assert sum(line.startswith("steady started") for line in said) == 1
    assert not steady.alive() and not crashing.alive()
