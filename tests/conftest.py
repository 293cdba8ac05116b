"""Shared fixtures: a real Redis (embedded 6.2 unless GENRELAY_REDIS_URL is set), flushed for every
test, and the provider emulator on a loopback port."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon.accounts_file import USEAPI_PROVIDERS
from daemon.embedded_redis import EmbeddedRedis, config_command
from daemon.redis_connection import connect
from daemon.services import Services, open_services
from daemon.settings import Settings
from emulator.app import create_app as create_emulator
from emulator.config import EmulatorConfig
from tests.alert_receiver import AlertReceiver
from tests.harness.invariants import TEST_SECRET
from tests.harness.processes import ProcessGroup

USEAPI_TOKEN = "user:12345-useapi-test-token"
API_KEYS = {"a1": "key-a1-0123456789", "a2": "key-a2-0123456789", "a3": "key-a3-0123456789"}
# vydra accounts by name: ``vydra/v1`` in an accounts map reads its key from VYDRA_KEY_V1.
VYDRA_KEYS = {"v1": "vydra_live_user_1001_testkeyalpha", "v2": "vydra_live_user_1002_testkeybravo"}
# An accounts-map entry: max_jobs, or a table of account keys (``max_jobs`` and optional ones such
# as ``requests_per_minute``).
AccountSpec = int | dict[str, object]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("GENRELAY_REDIS_URL")
    if configured:
        yield configured
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = await connect(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


async def config_set(client: aioredis.Redis, redis_url: str, name: str, value: str) -> None:
    """``CONFIG SET`` on the test Redis: the embedded server knows the command under its random name
    (kept in its data dir, beside the socket); an external server under its own."""
    command = "CONFIG"
    if redis_url.startswith("unix://"):
        command = config_command(Path(urlsplit(redis_url).path).parent) or command
    await client.execute_command(command, "SET", name, value)


class Emulator:
    """The emulator on a real loopback port, and its control routes."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def control(self, method: str, path: str, body: object = None) -> dict[str, object]:
        async with self.session.request(method, f"{self.url}/_emulator/{path}", json=body) as resp:
            assert resp.status < 300, await resp.text()
            data: dict[str, object] = await resp.json()
            return data

    async def stats(self) -> dict[str, object]:
        return await self.control("GET", "stats")

    async def fault(self, **fault: object) -> None:
        await self.control("POST", "faults", fault)

    async def configure(self, **knobs: object) -> None:
        await self.control("POST", "config", knobs)


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Override in a test module to change the emulator's knobs."""
    return EmulatorConfig(keys={API_KEYS["a1"]: 2, API_KEYS["a2"]: 2, API_KEYS["a3"]: 5}, job_seconds=0.2)


@pytest.fixture
async def emulator(emulator_config: EmulatorConfig) -> AsyncIterator[Emulator]:
    server = TestServer(create_emulator(emulator_config), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        try:
            yield Emulator(server, session)
        finally:
            await server.close()


def write_accounts(path: Path, base_url: str, accounts: Mapping[str, AccountSpec]) -> Path:
    """One ``[[account]]`` per entry; a name ``ltxstudio/EMAIL`` makes a useapi LTX Studio account
    (all useapi accounts, ``kling/EMAIL``, ``minimax/ID`` ... too, share the one useapi token, as
    one subscription does), ``vydra/NAME`` a vydra one
    (key ``VYDRA_KEY_<NAME>``), a bare name an ltx one. A table value adds optional account keys."""
    tables = []
    for entry, spec in accounts.items():
        provider, _, name = entry.rpartition("/")
        provider = provider or "ltx"
        options = dict(spec) if isinstance(spec, dict) else {"max_jobs": spec}
        key_env = {"vydra": f"VYDRA_KEY_{name.upper()}"}.get(provider, f"LTX_KEY_{name.upper()}")
        if provider in USEAPI_PROVIDERS:
            key_env = "USEAPI_TOKEN"
        lines = "".join(f"{key} = {value!r}\n" for key, value in options.items())
        tables.append(
            f'[[account]]\nprovider = "{provider}"\nname = "{name}"\n{lines}'
            f'api_key_env = "{key_env}"\nbase_url = "{base_url}"\n'
        )
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, redis_url: str) -> SettingsFactory:
    """Settings for a test: ltx accounts pointing at ``base_url``, short timings, extra env on top."""

    def build(
        base_url: str = "http://127.0.0.1:9", accounts: Mapping[str, AccountSpec] | None = None, **env: str
    ) -> Settings:
        return Settings.from_env(process_env(tmp_path, redis_url, base_url, accounts, **env))

    return build


def process_env(
    tmp_path: Path,
    redis_url: str,
    base_url: str,
    accounts: Mapping[str, AccountSpec] | None = None,
    **env: str,
) -> dict[str, str]:
    """The environment a test process runs with (also handed to subprocesses)."""
    accounts = accounts if accounts is not None else {"a1": 2}
    path = write_accounts(tmp_path / "accounts.toml", base_url, accounts)
    values = {
        "GENRELAY_ACCOUNTS": str(path),
        "GENRELAY_REDIS_URL": redis_url,
        "GENRELAY_DATA_DIR": str(tmp_path / "var"),
        "GENRELAY_POLL_INTERVAL": "0.05",
        "GENRELAY_RETRY_BASE": "0.05",
        "GENRELAY_RETRY_MAX": "0.2",
        "GENRELAY_QUEUE_POLL_DELAY": "0.02",
        "GENRELAY_LOG_FORMAT": "json",
        # Redis keeps no secret: with a Redis other than the embedded server of GENRELAY_DATA_DIR, every
        # process needs the same GENRELAY_SECRET.
        "GENRELAY_SECRET": TEST_SECRET,
        **{f"LTX_KEY_{name.upper()}": key for name, key in API_KEYS.items()},
        "USEAPI_TOKEN": USEAPI_TOKEN,
        **{f"VYDRA_KEY_{name.upper()}": key for name, key in VYDRA_KEYS.items()},
    }
    values.update(env)
    return values


@pytest.fixture
async def open_daemon(redis_client: aioredis.Redis, redis_url: str) -> AsyncIterator[Callable[..., object]]:
    """Open the shared services for some settings; closed at the end of the test."""
    opened: list[Services] = []

    async def open_(settings: Settings) -> Services:
        services = await open_services(settings, redis_url)
        opened.append(services)
        return services

    try:
        yield open_
    finally:
        for services in opened:
            await services.close()


@pytest.fixture
async def start_worker(redis_client: aioredis.Redis, redis_url: str) -> AsyncIterator[Callable[..., object]]:
    """Run arq workers in this event loop (the test's); all are closed at the end of the test."""
    from workers.worker import build_worker

    running: list[tuple[object, asyncio.Task[None]]] = []

    async def start(settings: Settings) -> object:
        worker = build_worker(settings, redis_url, handle_signals=False)
        task = asyncio.create_task(worker.main())
        running.append((worker, task))
        return worker

    try:
        yield start
    finally:
        for worker, task in running:
            try:
                await worker.close()  # type: ignore[attr-defined]
            except asyncio.CancelledError:
                # arq's close() re-raises the cancellation of a task it cut off while that task was
                # still starting; the worker is closed all the same. Escaping a finalizer, this
                # BaseException would break the teardown of every later test.
                pass
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def app_client(redis_client: aioredis.Redis) -> AsyncIterator[object]:
    from daemon.client import Client

    client = Client(redis_client)
    yield client


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Start ``python -m daemon <command>`` as a real process; every one is stopped at the end."""
    from daemon.processes import Child, child_env

    children: list[Child] = []

    def start(command: str, env: dict[str, str]) -> Child:
        name = f"{command}-{len(children) + 1}"
        child = Child(name, ["daemon", command], child_env(env), tmp_path / f"{name}.log").start()
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.stop(grace=5)


@pytest.fixture
async def daemon_processes(tmp_path: Path) -> AsyncIterator[ProcessGroup]:
    """Start ``genrelay`` processes (``await daemon_processes(command, env, ready_line)``); whatever
    is still running is killed at the end of the test, and each one's output is in ``tmp_path`` as
    ``<command>-<n>.log``."""
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        await group.close()


@pytest.fixture
async def alert_receiver() -> AsyncIterator[AlertReceiver]:
    """The operator's alert endpoint on 127.0.0.1 (``tests/alert_receiver.py``)."""
    app = web.Application()
    server = TestServer(app, host="127.0.0.1")
    receiver = AlertReceiver(server)
    app.router.add_post("/alerts", receiver.handle)
    await server.start_server()
    try:
        yield receiver
    finally:
        await server.close()
