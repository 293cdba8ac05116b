"""A TLS redis-server (a CA the test makes, a client certificate) whose only user is an ACL user with
the password ``p@ss:w/rd``: the web, the worker and ``genrelay worker --check`` all connect through
the one connection module (percent-decoded password, CA and client certificate from the settings)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, Emulator, process_env
from tests.harness.processes import ProcessGroup
from tests.harness.sentinel import HOST, free_port

PASSWORD = "p@ss:w/rd"
ENCODED = "p%40ss%3Aw%2Frd"
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}
REDIS_SERVER = "/usr/bin/redis-server"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 2}, job_seconds=0.1)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA."""
    files = {name: directory / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    files.update({name: directory / name for name in ("client.crt", "client.key")})
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=genrelay test CA",
            "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]))  # fmt: skip
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    for who in ("server", "client"):
        csr = directory / f"{who}.csr"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
                "-keyout", str(files[f"{who}.key"]), "-out", str(csr))  # fmt: skip
        openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca.crt"]),
                "-CAkey", str(files["ca.key"]), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
                "-out", str(files[f"{who}.crt"]))  # fmt: skip
    return files


def start_tls_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int, dict[str, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is missing: it makes the test's CA and certificates")
    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"{REDIS_SERVER} is missing (Debian's redis-server 7 has TLS; the embedded 6.2 has not)")
    directory.mkdir()
    files = make_certificates(directory)
    port = free_port()
    args = [
        REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", HOST, "--dir", str(directory),
        "--save", "", "--appendonly", "no",
        "--tls-cert-file", str(files["server.crt"]), "--tls-key-file", str(files["server.key"]),
        "--tls-ca-cert-file", str(files["ca.crt"]), "--tls-auth-clients", "yes",
        "--user", "default", "off",
        "--user", "genrelay", "on", f">{PASSWORD}", "~*", "&*", "+@all",
    ]  # fmt: skip
    with (directory / "redis.log").open("ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT), port, files


@pytest.fixture
async def tls_redis(tmp_path: Path) -> AsyncIterator[tuple[int, dict[str, Path]]]:
    process, port, files = start_tls_redis(tmp_path / "tls")
    try:
        await wait_for_tls_redis(port, files, process)
        yield port, files
    finally:
        process.kill()
        process.wait(timeout=10)


async def wait_for_tls_redis(port: int, files: dict[str, Path], process: subprocess.Popen[bytes]) -> None:
    client = aioredis.Redis(
        host=HOST, port=port, ssl=True, ssl_ca_certs=str(files["ca.crt"]),
        ssl_certfile=str(files["client.crt"]), ssl_keyfile=str(files["client.key"]),
        username="genrelay", password=PASSWORD, socket_timeout=2,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while True:
                if process.poll() is not None:
                    pytest.skip(f"{REDIS_SERVER} did not start with --tls-port (exit {process.returncode})")
                try:
                    if await client.ping():
                        return
                except (OSError, aioredis.RedisError):
                    await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def test_web_worker_and_check_over_tls_with_an_acl_user(
    tmp_path: Path, tls_redis: tuple[int, dict[str, Path]], emulator: Emulator, daemon_processes: ProcessGroup
) -> None:
    port, files = tls_redis
    env = process_env(
        tmp_path,
        f"rediss://genrelay:{ENCODED}@{HOST}:{port}/0",
        emulator.url,
        {"a1": 2},
        GENRELAY_REDIS_TLS_CA=str(files["ca.crt"]),
        GENRELAY_REDIS_TLS_CERT=str(files["client.crt"]),
        GENRELAY_REDIS_TLS_KEY=str(files["client.key"]),
        GENRELAY_WORKER_NAME="tls-worker",
        GENRELAY_HEALTH_INTERVAL="1",
    )
    web = await daemon_processes.web(env)
    worker = await daemon_processes.worker(env)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{web.address}/readyz") as resp:
            assert resp.status == 200, await resp.text()
        body = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "[ok] tls", **T2V}}
        async with http.post(f"{web.address}/v1/jobs", json=body) as resp:
            assert resp.status == 202, await resp.text()
            job_id = (await resp.json())["jobId"]
        async with asyncio.timeout(60):
            while True:
                async with http.get(f"{web.address}/v1/jobs/{job_id}") as resp:
                    state = (await resp.json())["status"]["type"]
                if state in ("completed", "failed", "canceled"):
                    break
                await asyncio.sleep(0.1)
    assert state == "completed"
    check = await daemon_processes("worker --check", env)
    assert await check.wait() == 0, check.text()
    stranger = await daemon_processes("worker --check", {**env, "GENRELAY_WORKER_NAME": "nobody"})
    assert await stranger.wait() == 1, stranger.text()
    assert PASSWORD not in web.text() + worker.text() + check.text()
    assert ENCODED not in web.text() + worker.text() + check.text()
