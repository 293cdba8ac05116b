"""Prometheus metrics after real runs: the web app's ``/metrics`` against Redis's own view and the
emulator's request counts, the worker's own metrics port, and the collector when Redis is down."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from daemon import keys
from daemon.client import Client
from daemon.errors import ProviderError, SettingsError
from daemon.metrics import RedisStateCollector, render_web_metrics, serve_worker_metrics
from daemon.providers.base import request_json
from daemon.redis_connection import connect
from daemon.request_budget import FULL_SHARE, RequestBudget, RequestLimits
from daemon.services import Services
from daemon.settings import Settings
from daemon.web.app import create_app
from tests.conftest import API_KEYS, Emulator
from tests.harness import slots as slot_index
from tests.harness.metrics_text import Samples, parse, value

WebClient = TestClient[web.Request, web.Application]

WAIT_S = 30
T2V = {"model": "ltx-2-fast", "duration": 4, "resolution": "1920x1080"}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


async def scrape(client: WebClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await resp.text())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def web_metrics(
    redis_client: aioredis.Redis, redis_url: str, aiohttp_client: AiohttpClient
) -> Callable[[Settings], Any]:
    async def start(settings: Settings) -> WebClient:
        return await aiohttp_client(create_app(settings, redis_url))

    return start


async def finish(client: Client, job_ids: list[str]) -> list[dict[str, Any]]:
    async with asyncio.timeout(WAIT_S):
        return [await client.wait(job_id) for job_id in job_ids]


async def check_gauges_match_redis(samples: Samples, client: aioredis.Redis) -> None:
    pk = keys.provider_keys("ltx")
    for state in keys.STATES:
        expected = await client.zcard(pk.state(state))
        assert value(samples, "genrelay_jobs", provider="ltx", state=state) == expected, state
    assert value(samples, "genrelay_queue_depth", provider="ltx") == 0
    disabled = set(await client.hkeys(pk.disabled))
    assert len(disabled) == 1
    for account, max_jobs in {"a1": 2, "a2": 1}.items():
        labels = {"provider": "ltx", "account": account}
        assert value(samples, "genrelay_slots_busy", **labels) == 0
        assert value(samples, "genrelay_slots_max", **labels) == max_jobs
        assert value(samples, "genrelay_account_disabled", **labels) == int(account in disabled)
        assert value(samples, "genrelay_account_cooling_down", **labels) == 0
    assert value(samples, "genrelay_redis_up") == 1


def check_counters_match_the_emulator(before: Samples, after: Samples, seen: dict[str, Any]) -> None:
    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    submitted = sum(seen[API_KEYS[a]]["submitted"] for a in ("a1", "a2"))
    polls = sum(seen[API_KEYS[a]]["polls"] for a in ("a1", "a2"))
    assert submitted == 5
    assert delta("genrelay_provider_requests_total", method="POST", status="202") == submitted
    assert delta("genrelay_provider_requests_total", method="POST", status="401") == 1
    assert delta("genrelay_provider_requests_total", method="GET", status="200") == polls
    assert delta("genrelay_provider_requests_total") == submitted + 1 + polls
    assert delta("genrelay_provider_request_duration_seconds_count") == submitted + 1 + polls
    # Every status read was started by the poller, which noted how late it was.
    assert delta("genrelay_poll_lateness_seconds_count", provider="ltx") == polls
    assert delta("genrelay_submit_outcomes_total", provider="ltx", outcome="submitted") == 5
    for outcome in ("applied", "duplicate", "rejected"):  # declared before the receiver uses them
        assert ("genrelay_callbacks_total", frozenset({("provider", "ltx"), ("outcome", outcome)})) in after


async def test_metrics_after_a_run_match_redis_and_the_emulator(
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    open_daemon: Callable[[Settings], Any],
    start_worker: Callable[[Settings], Any],
    web_metrics: Callable[[Settings], Any],
    app_client: Client,
    redis_client: aioredis.Redis,
) -> None:
    """Counters move by exactly the requests the emulator saw; gauges equal Redis's own counts."""
    settings = make_settings(emulator.url, accounts={"a1": 2, "a2": 1})
    await open_daemon(settings)
    await start_worker(settings)
    web_client = await web_metrics(settings)
    before = await scrape(web_client)
    # The first submission is refused with 401: its account is disabled and the job moves on.
    await emulator.fault(method="POST", path_prefix="/v2/", status=401, error_type="authentication_error")
    prompts = [f"[ok] [seconds=0.2] {n}" for n in range(4)] + ["[fail] [seconds=0.2]"]
    ids = [await app_client.submit("ltx", "text-to-video", {"prompt": p, **T2V}) for p in prompts]
    jobs = await finish(app_client, ids)
    assert [job["status"]["type"] for job in jobs] == ["completed"] * 4 + ["failed"]
    after = await scrape(web_client)
    assert value(after, "genrelay_jobs", provider="ltx", state="completed") == 4
    await check_gauges_match_redis(after, redis_client)
    check_counters_match_the_emulator(before, after, (await emulator.stats())["keys"])


async def test_a_cooling_account_reads_1_until_its_cooldown_ends(
    make_settings: Callable[..., Settings],
    web_metrics: Callable[[Settings], Any],
    redis_client: aioredis.Redis,
) -> None:
    web_client = await web_metrics(make_settings(accounts={"a1": 2, "a2": 1}))
    now_ms = int(time.time() * 1000)
    await redis_client.zadd(keys.provider_keys("ltx").cooldown, {"a1": now_ms + 60_000, "a2": now_ms - 1})
    samples = await scrape(web_client)
    assert value(samples, "genrelay_account_cooling_down", provider="ltx", account="a1") == 1
    assert value(samples, "genrelay_account_cooling_down", provider="ltx", account="a2") == 0


async def test_slots_busy_counts_live_leases_only(
    make_settings: Callable[..., Settings],
    web_metrics: Callable[[Settings], Any],
    open_daemon: Callable[[Settings], Any],
    redis_client: aioredis.Redis,
) -> None:
    """A lease past its expiry no longer holds a slot (the scripts drop it on their next run)."""
    from daemon.jobs import JobRequest

    settings = make_settings(accounts={"a1": 3})
    web_client = await web_metrics(settings)
    services: Services = await open_daemon(settings)
    body = {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "x"}}
    jobs = [(await services.store.create(JobRequest.from_json(body))).job_id for _ in range(2)]
    await slot_index.expire_lease(redis_client, "ltx", jobs[1])
    samples = await scrape(web_client)
    assert value(samples, "genrelay_slots_busy", provider="ltx", account="a1") == 1
    assert value(samples, "genrelay_slots_max", provider="ltx", account="a1") == 3


async def test_an_unreachable_redis_reads_as_redis_up_0(make_settings: Callable[..., Settings]) -> None:
    dead = await connect(f"redis://127.0.0.1:{closed_port()}/0")
    try:
        collector = RedisStateCollector(dead, make_settings())
        await collector.read()
    finally:
        await dead.aclose()
    [family] = collector.collect()
    assert family.name == "genrelay_redis_up" and family.samples[0].value == 0


async def test_a_request_that_gets_no_answer_counts_as_error(
    make_settings: Callable[..., Settings], web_metrics: Callable[[Settings], Any]
) -> None:
    settings = make_settings(f"http://127.0.0.1:{closed_port()}")
    web_client = await web_metrics(settings)
    before = await scrape(web_client)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProviderError):
            await request_json(
                session,
                "GET",
                f"{settings.accounts[0].base_url}/v2/x",
                account=settings.accounts[0],
                classify=None,
            )
    after = await scrape(web_client)
    labels = {"provider": "ltx", "method": "GET", "status": "error"}
    assert total(after, "genrelay_provider_requests_total", **labels) == (
        total(before, "genrelay_provider_requests_total", **labels) + 1
    )


async def test_the_worker_serves_its_own_counters_on_its_port(
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    open_daemon: Callable[[Settings], Services],
    start_worker: Callable[[Settings], Any],
    app_client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = closed_port()
    settings = make_settings(emulator.url, GENRELAY_WORKER_METRICS_PORT=str(port))
    await open_daemon(settings)
    await start_worker(settings)
    # A finished job proves the worker has started, and with it its metrics server.
    job_id = await app_client.submit("ltx", "text-to-video", {"prompt": "[ok] [seconds=0.1]", **T2V})
    [job] = await finish(app_client, [job_id])
    assert job["status"]["type"] == "completed"
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        samples = parse(await resp.text())
    assert total(samples, "genrelay_provider_requests_total", method="POST", status="202") >= 1
    assert not any(name.startswith("genrelay_slots") for name, _ in samples)  # Redis gauges are the web's


async def test_a_taken_worker_metrics_port_is_logged_and_the_worker_goes_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        async with asyncio.timeout(5):
            await serve_worker_metrics("127.0.0.1", taken.getsockname()[1], asyncio.Event())  # returns


async def test_the_worker_metrics_server_ends_when_the_worker_stops() -> None:
    """It must not hold up the worker's graceful shutdown window."""
    stopping = asyncio.Event()
    stopping.set()
    async with asyncio.timeout(5):
        await serve_worker_metrics("127.0.0.1", 0, stopping)


@pytest.mark.parametrize(("raw", "port"), [("", None), ("  ", None), ("0", 0), ("9100", 9100)])
def test_the_worker_metrics_port_setting(raw: str, port: int | None) -> None:
    env = {"GENRELAY_WORKER_METRICS_PORT": raw}
    assert Settings.from_env(env, require_accounts=False).worker_metrics_port == port
    assert Settings.from_env({}, require_accounts=False).worker_metrics_port is None


@pytest.mark.parametrize("raw", ["x", "-1", "65536", "9100.0"])
def test_a_bad_worker_metrics_port_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"GENRELAY_WORKER_METRICS_PORT has value"):
        Settings.from_env({"GENRELAY_WORKER_METRICS_PORT": raw}, require_accounts=False)


async def until_moved(
    web_client: WebClient, before: Samples, name: str, by: float = 1.0, **labels: str
) -> Samples:
    """Scrape until ``name`` (summed over ``labels``) has grown by ``by`` since ``before``."""
    async with asyncio.timeout(WAIT_S):
        while True:
            after = await scrape(web_client)
            if total(after, name, **labels) - total(before, name, **labels) >= by:
                return after
            await asyncio.sleep(0.05)


async def test_each_event_moves_its_series(
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    open_daemon: Callable[[Settings], Any],
    start_worker: Callable[[Settings], Any],
    web_metrics: Callable[[Settings], Any],
    app_client: Client,
    aiohttp_server: Any,
) -> None:
    """Read before and after each event: the arq backlog, a submit, a provider's 429, a provider
    request's latency, a delivered notification, a dead letter."""
    settings = make_settings(
        emulator.url, accounts={"a1": 2}, GENRELAY_DELIVERY_ALLOW_PRIVATE="1", GENRELAY_DELIVERY_MAX_TRIES="1"
    )
    await open_daemon(settings)
    web_client = await web_metrics(settings)
    app = web.Application()

    async def accept(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app.router.add_post("/hook", accept)
    hook = await aiohttp_server(app)

    before = await scrape(web_client)
    first = await app_client.submit(
        "ltx",
        "text-to-video",
        {"prompt": "[ok] [seconds=0.1] one", **T2V},
        reply_url=str(hook.make_url("/hook")),
    )
    after = await scrape(web_client)  # no worker yet: the accept task waits on the arq queue
    assert value(after, "genrelay_arq_queue_depth") - value(before, "genrelay_arq_queue_depth") == 1

    await emulator.fault(method="POST", path_prefix="/v2/", status=429, count=1)
    await start_worker(settings)
    await finish(app_client, [first])
    after = await until_moved(web_client, before, "genrelay_deliveries_total", outcome="delivered")
    for name, labels in [
        ("genrelay_rate_limited_total", {"provider": "ltx", "kind": "provider"}),
        ("genrelay_submit_outcomes_total", {"provider": "ltx", "outcome": "submitted"}),
        ("genrelay_submit_outcomes_total", {"provider": "ltx", "outcome": "cooldown"}),
    ]:
        assert total(after, name, **labels) - total(before, name, **labels) == 1, (name, labels)
    latency = "genrelay_provider_request_duration_seconds_count"
    assert (
        total(after, latency, provider="ltx") - total(before, latency, provider="ltx") >= 3
    )  # 429, 202, poll
    assert total(after, "genrelay_dead_letters_total") == total(before, "genrelay_dead_letters_total")

    before = after
    second = await app_client.submit(
        "ltx",
        "text-to-video",
        {"prompt": "[ok] [seconds=0.1] two", **T2V},
        reply_url=f"http://127.0.0.1:{closed_port()}/x",
    )
    await finish(app_client, [second])
    after = await until_moved(web_client, before, "genrelay_dead_letters_total")
    assert (
        total(after, "genrelay_deliveries_total", outcome="dead_letter")
        - total(before, "genrelay_deliveries_total", outcome="dead_letter")
        == 1
    )


async def test_a_lease_expiry_moves_its_counter(
    make_settings: Callable[..., Settings],
    open_daemon: Callable[[Settings], Any],
    redis_client: aioredis.Redis,
) -> None:
    from daemon.jobs import JobRequest
    from daemon.metrics import METRICS
    from workers.runtime import WorkerRuntime, provider_session
    from workers.sweep import sweep_once

    settings = make_settings(accounts={"a1": 2})
    services: Services = await open_daemon(settings)
    request = JobRequest.from_json(
        {"provider": "ltx", "operation": "text-to-video", "params": {"prompt": "x"}}
    )
    job_id = (await services.store.create(request)).job_id
    assert await slot_index.lease_account(redis_client, "ltx", job_id) == "a1"
    await slot_index.expire_lease(redis_client, "ltx", job_id)  # its lease ran out long ago

    def expiries() -> float:
        return METRICS.registry.get_sample_value("genrelay_lease_expiries_total", {"provider": "ltx"}) or 0.0

    before = expiries()
    runtime = WorkerRuntime(services, provider_session(1))
    try:
        assert await sweep_once(runtime) == 1
    finally:
        await runtime.session.close()
    assert expiries() - before == 1


async def test_the_scrape_shows_each_budgeted_accounts_request_budget(
    make_settings: Callable[..., Settings], open_daemon: Any
) -> None:
    """``genrelay_request_budget_used`` / ``_limit`` per window, as the budget counted the requests
    (taken here through its own script); an LTX account has none."""
    vydra = {"max_jobs": 2, "requests_per_minute": 30, "requests_per_hour": 500}
    settings = make_settings(accounts={"a1": 1, "vydra/v1": vydra})
    services: Services = await open_daemon(settings)
    budget = RequestBudget(services.client, services.scripts)
    limits = RequestLimits.scaled({"minute": 30, "hour": 500}, 60.0, learnt=False)
    for _ in range(4):
        assert await budget.take("vydra", "v1", limits, FULL_SHARE) == 0
    samples = parse((await render_web_metrics(services.client, settings)).decode())
    for window, allowed in (("minute", 30), ("hour", 500)):
        labels = {"provider": "vydra", "account": "v1", "window": window}
        assert value(samples, "genrelay_request_budget_used", **labels) == 4
        assert value(samples, "genrelay_request_budget_limit", **labels) == allowed
    budgeted = {
        dict(labels)["account"] for name, labels in samples if name.startswith("genrelay_request_budget")
    }
    assert budgeted == {"v1"}
