"""Prometheus metrics: this process's counters, and the gauges whose truth lives in Redis.

* Counters and histograms of what *this process* did (provider requests, poll lateness, submit
  outcomes, callbacks, deliveries) live in :data:`METRICS`, in a registry of our own rather than
  prometheus_client's global one, so a test process can build any number of apps. Prometheus sums
  them over processes.
* Gauges of the shared state (jobs per state, queue depth, slots, cooldowns, disabled accounts) are
  read from Redis at scrape time, in one pipeline, by :class:`RedisStateCollector`: every web process
  reports the same truth, so aggregate them with ``max``, not ``sum``.

The web app serves both at ``GET /metrics``. A worker serves its own counters on
``GENRELAY_WORKER_METRICS_PORT`` (see :func:`start_worker_metrics`).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from arq import Retry
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from redis.exceptions import RedisError

from daemon import keys
from daemon.learned_capacity import effective_max_jobs, learned_now

if TYPE_CHECKING:
    from daemon.settings import Settings

log = structlog.get_logger("genrelay.metrics")

WORKER_METRICS_PORT_ENV = "GENRELAY_WORKER_METRICS_PORT"
# applied: the update moved the job; duplicate: a repeat that changed nothing; ignored: the job had
# moved past it (or its record is gone); rejected: refused (bad token, bad body).
CALLBACK_OUTCOMES = ("applied", "duplicate", "ignored", "rejected")
# retried: the attempt failed and runs again later; dead_letter: no try left, or the URL was refused.
DELIVERY_OUTCOMES = ("delivered", "retried", "dead_letter")
# provider: a provider answered 429; budget: our own request budget for the account was used up.
RATE_LIMIT_KINDS = ("provider", "budget")
# A scrape must answer even when Redis is blackholed (the client has no read timeout); Prometheus's
# default scrape timeout is 10 s, so 2 s leaves room for the rest of the answer.
REDIS_READ_TIMEOUT_S = 2.0
# Provider calls time out after 30 s (providers/base.py); most answer in tens of milliseconds.
PROVIDER_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A poll is due every 5 s by default; lateness past the interval means the poller cannot keep up.
POLL_LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The 0.0.4 text format: every Prometheus version reads it, and our names need nothing newer.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"

# A counter's `_created` series doubles what a scrape carries and no dashboard or alert reads it.
disable_created_metrics()  # type: ignore[no-untyped-call]


class ProcessMetrics:
    """The counters and histograms of one process, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.provider_requests = Counter(
            "genrelay_provider_requests",
            "Requests to provider APIs by answer status ('error': no answer, e.g. a timeout).",
            ["provider", "method", "status"],
            registry=self.registry,
        )
        self.provider_request_seconds = Histogram(
            "genrelay_provider_request_duration_seconds",
            "Time from sending a provider request to having read its answer.",
            ["provider", "method"],
            buckets=PROVIDER_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.poll_lateness_seconds = Histogram(
            "genrelay_poll_lateness_seconds",
            "How long after its due time a status read was started.",
            ["provider"],
            buckets=POLL_LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.submit_outcomes = Counter(
            "genrelay_submit_outcomes",
            "Runs of the submit_job task by what came of them (submitted, cooldown, retry, failed, ...).",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.callbacks = Counter(
            "genrelay_callbacks",
            "Provider webhook callbacks received, by outcome (applied, duplicate, rejected).",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "genrelay_deliveries",
            "Attempts to POST a notification to an app's replyUrl, by outcome "
            "(delivered, retried, dead_letter).",
            ["outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "genrelay_dead_letters",
            "Deliveries that became dead letters (genrelay deliveries lists them).",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "genrelay_rate_limited",
            "Provider requests refused for rate: by the provider's 429 or by our own request budget.",
            ["provider", "kind"],
            registry=self.registry,
        )
        self.lease_expiries = Counter(
            "genrelay_lease_expiries",
            "Jobs the sweep failed as timed out because their lease expired (no sign of life).",
            ["provider"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def declare(self, providers: Iterable[str]) -> None:
        """Create the series that should read 0 before their first event: ``rate()`` and alerts on
        ``increase()`` need a starting sample, and a missing series looks like a broken exporter."""
        for provider in providers:
            for outcome in CALLBACK_OUTCOMES:
                self.callbacks.labels(provider, outcome)
            for kind in RATE_LIMIT_KINDS:
                self.rate_limited.labels(provider, kind)
            self.lease_expiries.labels(provider)
        for outcome in DELIVERY_OUTCOMES:
            self.deliveries.labels(outcome)

    def observe_provider_request(self, provider: str, method: str, status: str, seconds: float) -> None:
        self.provider_requests.labels(provider, method, status).inc()
        self.provider_request_seconds.labels(provider, method).observe(seconds)
        if status == "429":
            self.rate_limited.labels(provider, "provider").inc()

    def count_callback(self, provider: str, outcome: str) -> None:
        """One callback; ``outcome`` is the store's (applied, duplicate, ...) or 'rejected'."""
        if outcome not in CALLBACK_OUTCOMES:
            outcome = "ignored"
        self.callbacks.labels(provider, outcome).inc()

    def count_delivery(self, outcome: str) -> None:
        if outcome in DELIVERY_OUTCOMES:
            self.deliveries.labels(outcome).inc()
        if outcome == "dead_letter":
            self.dead_letters.inc()

    def observe_poll_lateness(self, provider: str, lateness_ms: int) -> None:
        self.poll_lateness_seconds.labels(provider).observe(lateness_ms / 1000)


METRICS = ProcessMetrics()


class SubmitTask(Protocol):
    """The signature of ``workers.submit.submit_job``, with the ``__qualname__`` arq names tasks by."""

    __qualname__: str

    def __call__(self, ctx: dict[str, Any], job_id: str) -> Coroutine[Any, Any, str]: ...


def count_submit_outcomes(task: SubmitTask) -> SubmitTask:
    """Count each run of the submit task by the outcome it returned ('retry' when arq will run it
    again, 'error' when it raised)."""

    @functools.wraps(task)
    async def counted(ctx: dict[str, Any], job_id: str) -> str:
        outcome = "error"
        try:
            outcome = await task(ctx, job_id)
            return outcome
        except Retry:
            outcome = "retry"
            raise
        finally:
            METRICS.submit_outcomes.labels(keys.provider_of(job_id) or "unknown", outcome).inc()

    return counted


class DeliverTask(Protocol):
    """The signature of ``workers.deliver.deliver_job``."""

    __qualname__: str

    def __call__(self, ctx: dict[str, Any], job_id: str, seq: int) -> Coroutine[Any, Any, str]: ...


def count_delivery_outcomes(task: DeliverTask) -> DeliverTask:
    """Count each delivery attempt by how it went ('retried' when arq will run it again)."""

    @functools.wraps(task)
    async def counted(ctx: dict[str, Any], job_id: str, seq: int) -> str:
        try:
            outcome = await task(ctx, job_id, seq)
        except Retry:
            METRICS.count_delivery("retried")
            raise
        METRICS.count_delivery(outcome)
        return outcome

    return counted


# Expired leases looked at per scrape (normally none: every slot script drops them).
EXPIRED_LEASES_READ = 1000


class RedisStateCollector:
    """Gauges of the shared state, read from Redis in one pipeline by :meth:`read`.

    ``collect()`` yields what the last ``read()`` found; :func:`render_web_metrics` builds one
    collector per scrape and reads it just before rendering, so a scrape never mixes two reads.
    Slots and leases are counted as ``SlotAllocator.capacity`` counts them (local clock, leases
    whose expiry is now or later), so the dashboard and the metrics agree.
    """

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.accounts = {p: [a.name for a in settings.accounts_for(p)] for p in settings.providers()}
        self.recovery_ms = max(1, int(settings.capacity_recovery * 1000))
        self.families: list[Metric] = []

    async def read(self) -> None:
        redis_up = GaugeMetricFamily("genrelay_redis_up", "1 when Redis answered this scrape's read.")
        try:
            async with asyncio.timeout(REDIS_READ_TIMEOUT_S):
                state = await self._read_pipeline(int(time.time() * 1000))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("metrics: Redis did not answer", error=str(exc) or type(exc).__name__)
            redis_up.add_metric([], 0)
            self.families = [redis_up]
            return
        redis_up.add_metric([], 1)
        self.families = [redis_up, *self._families(state)]

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)

    async def _read_pipeline(self, now_ms: int) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for provider in self.accounts:
                pk = keys.provider_keys(provider)
                for state in keys.STATES:
                    pipe.zcard(pk.state(state))
                pipe.zcard(pk.waiting)
                pipe.zcard(pk.waiting_pinned)
                pipe.hgetall(pk.accounts)
                pipe.hkeys(pk.disabled)
                pipe.zrange(pk.cooldown, 0, -1, withscores=True)
                pipe.zrange(pk.room, 0, -1, withscores=True)
                pipe.hgetall(pk.foreign)
                pipe.hgetall(pk.learned)
                pipe.zrange(pk.learned_due, 0, -1, withscores=True)
                # Leases past their expiry that no script has dropped yet hold no slot.
                pipe.zrangebyscore(pk.leases, "-inf", f"({now_ms}", start=0, num=EXPIRED_LEASES_READ)
            pipe.zcard(keys.ARQ_QUEUE)
            results: list[Any] = await pipe.execute()
        per_provider = len(keys.STATES) + 10
        expired = {
            provider: results[n * per_provider + per_provider - 1] for n, provider in enumerate(self.accounts)
        }
        async with self.client.pipeline(transaction=False) as pipe:
            for provider, jobs in expired.items():
                pipe.hmget(keys.provider_keys(provider).lease_account, jobs) if jobs else pipe.echo("")
            owners = await pipe.execute()
        stale = {
            provider: collections.Counter(a for a in (found or []) if a)
            if isinstance(found, list)
            else collections.Counter()
            for provider, found in zip(expired, owners, strict=True)
        }
        return [*results, stale]

    def _families(self, results: list[Any]) -> list[Metric]:
        jobs = GaugeMetricFamily(
            "genrelay_jobs", "Jobs kept in Redis, by state.", labels=["provider", "state"]
        )
        queue = GaugeMetricFamily(
            "genrelay_queue_depth", "Jobs waiting for a free slot.", labels=["provider"]
        )
        per_account = ["provider", "account"]
        busy = GaugeMetricFamily("genrelay_slots_busy", "Slots held by a live lease.", labels=per_account)
        total = GaugeMetricFamily("genrelay_slots_max", "The account's maxJobs.", labels=per_account)
        help_text = "maxJobs less the slots concurrency 429s showed in use elsewhere (at least 1)."
        effective = GaugeMetricFamily("genrelay_slots_effective", help_text, labels=per_account)
        cooling = GaugeMetricFamily(
            "genrelay_account_cooling_down", "1 while a 429 cools the account down.", labels=per_account
        )
        disabled = GaugeMetricFamily(
            "genrelay_account_disabled",
            "1 when the account is disabled (auth, credits, operator).",
            labels=per_account,
        )
        stale: dict[str, collections.Counter[str]] = results[-1]
        rows = iter(results[:-1])
        for provider, accounts in self.accounts.items():
            for state in keys.STATES:
                jobs.add_metric([provider, state], next(rows))
            queue.add_metric([provider], next(rows) + next(rows))
            max_jobs, disabled_names, cooldowns = next(rows), set(next(rows)), next(rows)
            room, foreign = dict(next(rows)), next(rows)
            learned, learned_due, _ = next(rows), dict(next(rows)), next(rows)
            # Room (lua/lib.lua) is maxJobs - foreign - learned - leases - the disabled / cooling
            # offsets: the leases held come out of it without reading one lease.
            now_ms = time.time() * 1000
            cooling_names = {name for name, until in cooldowns if until > now_ms}
            cooling_entries = {name for name, _ in cooldowns}
            for account in accounts:
                labels = [provider, account]
                offsets = keys.ROOM_DISABLED_OFFSET * (account in disabled_names)
                offsets += keys.ROOM_COOLING_OFFSET * (account in cooling_entries)
                configured, taken = int(max_jobs.get(account, 0)), int(learned.get(account, 0))
                held = configured - int(foreign.get(account, 0)) - taken - offsets
                held -= room.get(account, 0)
                held -= stale[provider][account]
                busy.add_metric(labels, max(0, int(held)) if account in room else 0)
                total.add_metric(labels, configured)
                left = learned_now(taken, learned_due.get(account), int(now_ms), self.recovery_ms)
                effective.add_metric(labels, effective_max_jobs(configured, left))
                cooling.add_metric(labels, int(account in cooling_names))
                disabled.add_metric(labels, int(account in disabled_names))
        backlog = GaugeMetricFamily(
            "genrelay_arq_queue_depth", "Tasks on the arq queue (due or deferred), all providers together."
        )
        backlog.add_metric([], next(rows))
        return [jobs, queue, busy, total, effective, cooling, disabled, backlog]


async def render_web_metrics(client: aioredis.Redis, settings: Settings) -> bytes:
    """The web process's scrape: its own counters, then the gauges read from Redis right now."""
    from daemon.budget_view import RequestBudgetCollector  # it reads the providers' budget holders

    METRICS.declare(settings.providers())
    state, budgets = RedisStateCollector(client, settings), RequestBudgetCollector(client, settings)
    await asyncio.gather(state.read(), budgets.read())
    scrape = CollectorRegistry()
    for collector in (METRICS.registry, state, budgets):
        scrape.register(collector)
    return generate_latest(scrape)


def metrics_response(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": TEXT_FORMAT})


def start_worker_metrics(settings: Settings, stopping: asyncio.Event) -> list[asyncio.Task[None]]:
    """Start serving this worker's counters when a port is configured, until ``stopping`` is set;
    returns the serving task (none when off)."""
    port = settings.worker_metrics_port
    METRICS.declare(settings.providers())
    if port is None:
        return []
    return [asyncio.create_task(serve_worker_metrics(settings.host, port, stopping))]


async def serve_worker_metrics(host: str, port: int, stopping: asyncio.Event) -> None:
    """Serve ``GET /metrics`` with this process's counters until ``stopping`` is set.

    A port already taken (say ``genrelay run --workers 2`` with a fixed port) is logged and the
    worker goes on without a metrics server: its jobs matter more than its numbers.
    """
    app = web.Application()
    app.router.add_get("/metrics", _worker_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            log.error(
                "worker metrics not served: cannot listen; set a free port or 0 for any",
                variable=WORKER_METRICS_PORT_ENV,
                host=host,
                port=port,
                error=str(exc),
            )
            return
        url = f"http://{host}:{runner.addresses[0][1]}/metrics"
        log.info("worker metrics listening", url=url)
        await stopping.wait()
    finally:
        await runner.cleanup()


async def _worker_metrics(request: web.Request) -> web.Response:
    return metrics_response(generate_latest(METRICS.registry))
