"""The arq worker: ``submit_job``, ``dispatch_waiting`` and ``sync_capacity`` tasks, plus a poller per
provider, the sweep and the capacity sync running beside them in the same process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import structlog
from arq import Worker, func
from arq.connections import RedisSettings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from daemon import keys
from daemon.deliveries import signing_secret
from daemon.metrics import start_worker_metrics
from daemon.services import open_services
from daemon.settings import Settings
from workers.accept import accept_job
from workers.cancel import cancel_at_provider
from workers.capacity import CAPACITY_TASK, capacity_forever, sync_capacity
from workers.deliver import DELIVERY_SENDER, DeliverySender, deliver_job
from workers.maintenance import sweep_forever
from workers.poll import poll_forever
from workers.runtime import RUNTIME, WorkerRuntime, provider_session
from workers.submit import dispatch_waiting, submit_job

log = structlog.get_logger("genrelay.worker")


def health_check_key(worker_name: str) -> str:
    """The health record of the worker named ``worker_name`` (``GENRELAY_WORKER_NAME``)."""
    return f"{keys.ARQ_QUEUE}:health-check:{worker_name}"


# A worker outlives Redis being away (a restart, a failover) for this long, then exits so that its
# supervisor restarts it.
REDIS_OUTAGE_TOLERANCE_S = 60.0
REDIS_RETRY_DELAY_S = 0.5


class OutageTolerantWorker(Worker):
    """arq's worker lets the first Redis connection error out of its polling loop and exits; this one
    waits and tries again, so a Redis restart does not take every worker down with it."""

    unreachable_since: float | None = None

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            now = time.monotonic()
            if self.unreachable_since is None:
                self.unreachable_since = now
                log.warning("Redis unreachable; the worker keeps trying", error=str(exc))
            elif now - self.unreachable_since > REDIS_OUTAGE_TOLERANCE_S:
                raise
            await asyncio.sleep(REDIS_RETRY_DELAY_S)
            return
        if self.unreachable_since is not None:
            log.warning("Redis reachable again", away_s=round(time.monotonic() - self.unreachable_since, 1))
            self.unreachable_since = None


def job_serializer(value: Any) -> bytes:
    return orjson.dumps(value)


def job_deserializer(data: bytes) -> Any:
    return orjson.loads(data)


def build_worker(settings: Settings, redis_url: str, *, handle_signals: bool = True) -> OutageTolerantWorker:
    """An arq worker for ``settings`` on ``redis_url``; ``run()`` or ``main()`` starts it."""

    async def startup(ctx: dict[str, Any]) -> None:
        services = await open_services(settings, redis_url)
        connections = settings.poll_batch + settings.worker_concurrency
        runtime = WorkerRuntime(services, provider_session(connections))
        for provider in settings.providers():
            runtime.tasks.append(asyncio.create_task(poll_forever(runtime, provider)))
        runtime.tasks.append(asyncio.create_task(sweep_forever(runtime)))
        runtime.tasks.append(asyncio.create_task(capacity_forever(runtime)))
        runtime.tasks.extend(start_worker_metrics(settings, runtime.stopping))
        ctx[RUNTIME] = runtime
        ctx[DELIVERY_SENDER] = DeliverySender.open(settings, signing_secret(settings, services.secret))
        log.info(
            "worker started", providers=list(settings.providers()), concurrency=settings.worker_concurrency
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        runtime: WorkerRuntime | None = ctx.pop(RUNTIME, None)
        if runtime is not None:
            # Pollers finish their in-flight status reads and record them; claims are not left behind.
            await runtime.close(grace=min(settings.shutdown_grace, 10.0))
        sender: DeliverySender | None = ctx.pop(DELIVERY_SENDER, None)
        if sender is not None:
            await sender.close()
        log.info("worker stopped")

    return OutageTolerantWorker(
        functions=[
            # Tries are counted in the job record (submit_tries), which outlives arq's own count.
            func(submit_job, name="submit_job", max_tries=settings.submit_max_tries + 5),
            func(accept_job, name="accept_job", max_tries=5),
            func(cancel_at_provider, name="cancel_at_provider", max_tries=5),
            func(dispatch_waiting, name="dispatch_waiting", max_tries=3),
            func(sync_capacity, name=CAPACITY_TASK, max_tries=3),
            # Tries are counted in Redis (workers/deliver.py); the timeout lets ours fire first.
            func(
                deliver_job,
                name="deliver_job",
                max_tries=settings.delivery_max_tries + 5,
                timeout=settings.delivery_timeout + 5,
            ),
        ],
        queue_name=keys.ARQ_QUEUE,
        redis_settings=RedisSettings.from_dsn(redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        keep_result=0,
        max_jobs=settings.worker_concurrency,
        poll_delay=settings.queue_poll_delay,
        job_timeout=settings.job_timeout,
        health_check_interval=settings.health_interval,
        health_check_key=health_check_key(settings.worker_name),
        handle_signals=handle_signals,
        # SIGTERM: take no new task, let running ones finish (a cut-off one is retried by arq).
        job_completion_wait=int(settings.shutdown_grace),
        log_results=False,
    )


def check_health(redis_url: str, worker_name: str) -> int:
    """0 when the worker ``worker_name`` wrote its health record within the last interval (its main
    loop turned), 1 otherwise."""
    from arq.worker import async_check_health

    settings = RedisSettings.from_dsn(redis_url)
    key = health_check_key(worker_name)
    result: int = asyncio.run(async_check_health(settings, key, keys.ARQ_QUEUE))
    return result
