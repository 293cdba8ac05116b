"""The arq worker: ``submit_job``, ``dispatch_waiting`` and ``sync_capacity`` tasks, plus a poller per
provider, the sweep and the capacity sync running beside them in the same process."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import structlog
from arq import func
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from daemon import keys
from daemon.deliveries import signing_secret
from daemon.metrics import count_delivery_outcomes, start_worker_metrics
from daemon.redis_connection import client_for, connect
from daemon.services import open_services
from daemon.settings import Settings
from daemon.task_guard import task_deserializer
from daemon.tasks import Task
from workers.accept import accept_job
from workers.account_probe import probe_forever
from workers.alerts import alerts_forever
from workers.archive import archive_forever
from workers.capacity import CAPACITY_TASK, capacity_forever, sync_capacity
from workers.deliver import DELIVERY_SENDER, DeliverySender, deliver_job
from workers.poll import poll_forever
from workers.provider_cancel import cancel_at_provider
from workers.runtime import RUNTIME, WorkerRuntime, provider_session
from workers.submit import dispatch_waiting, submit_job
from workers.supervisor import OutageTolerantWorker, retry_when_redis_unreachable
from workers.sweep import sweep_forever

log = structlog.get_logger("genrelay.worker")


def health_check_key(worker_name: str) -> str:
    """The health record of the worker named ``worker_name`` (``GENRELAY_WORKER_NAME``)."""
    return f"{keys.ARQ_QUEUE}:health-check:{worker_name}"


# Every task a worker runs; anything else in the queue is malformed.
TASKS = (
    Task.SUBMIT,
    Task.ACCEPT,
    Task.CANCEL_AT_PROVIDER,
    Task.DISPATCH_WAITING,
    CAPACITY_TASK,
    Task.DELIVER,
)


def job_serializer(value: Any) -> bytes:
    return orjson.dumps(value)


def job_deserializer(data: bytes) -> Any:
    return orjson.loads(data)


def arq_pool(redis_url: str) -> ArqRedis:
    """arq's Redis client built by our connection module (TLS, ACL, unix socket, Sentinel), not by arq's
    URL parsing: arq's own has no reply timeout (one command sent into a network partition would stall
    the worker's poll loop for good), does not percent-decode passwords and ignores TLS options."""
    pool = client_for(redis_url, ArqRedis, decode_responses=False)
    pool.job_serializer = job_serializer
    pool.job_deserializer = job_deserializer
    pool.default_queue_name = keys.ARQ_QUEUE
    return pool


def build_worker(settings: Settings, redis_url: str, *, handle_signals: bool = True) -> OutageTolerantWorker:
    """An arq worker for ``settings`` on ``redis_url`` that outlives Redis errors in its poll loop
    (see ``workers.supervisor``); ``main()`` starts it, ``run_supervised`` restarts it."""

    async def startup(ctx: dict[str, Any]) -> None:
        services = await open_services(settings, redis_url)
        connections = settings.poll_batch + settings.worker_concurrency
        runtime = WorkerRuntime(services, provider_session(connections))
        for provider in settings.providers():
            runtime.tasks.append(asyncio.create_task(poll_forever(runtime, provider)))
        runtime.tasks.append(asyncio.create_task(sweep_forever(runtime)))
        runtime.tasks.append(asyncio.create_task(capacity_forever(runtime)))
        runtime.tasks.append(asyncio.create_task(archive_forever(runtime)))
        runtime.tasks.append(asyncio.create_task(probe_forever(runtime)))
        runtime.tasks.append(asyncio.create_task(alerts_forever(runtime)))
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
            func(
                retry_when_redis_unreachable(submit_job),
                name=Task.SUBMIT,
                max_tries=settings.submit_max_tries + 5,
            ),
            func(retry_when_redis_unreachable(accept_job), name=Task.ACCEPT, max_tries=5),
            func(retry_when_redis_unreachable(cancel_at_provider), name=Task.CANCEL_AT_PROVIDER, max_tries=5),
            func(retry_when_redis_unreachable(dispatch_waiting), name=Task.DISPATCH_WAITING, max_tries=3),
            func(retry_when_redis_unreachable(sync_capacity), name=CAPACITY_TASK, max_tries=3),
            # Tries are counted in Redis (workers/deliver.py); the timeout lets ours fire first.
            func(
                retry_when_redis_unreachable(count_delivery_outcomes(deliver_job)),
                name=Task.DELIVER,
                max_tries=settings.delivery_max_tries + 5,
                timeout=settings.delivery_timeout + 5,
            ),
        ],
        queue_name=keys.ARQ_QUEUE,
        redis_pool=arq_pool(redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        job_serializer=job_serializer,
        # A payload it cannot run reaches accept_job as malformed (daemon/task_guard.py), never an
        # exception arq would only log.
        job_deserializer=task_deserializer(TASKS),
        keep_result=0,
        max_jobs=settings.worker_concurrency,
        poll_delay=settings.queue_poll_delay,
        poll_max_delay=settings.queue_poll_max_delay,
        job_timeout=settings.job_timeout,
        health_check_interval=settings.health_interval,
        health_check_key=health_check_key(settings.worker_name),
        handle_signals=handle_signals,
        # SIGTERM: take no new task, let running ones finish (a cut-off one is retried by arq).
        job_completion_wait=int(settings.shutdown_grace),
        log_results=False,
    )


# `genrelay worker --check` answers within this many seconds even when Redis is blackholed, so a
# liveness probe with a longer timeout sees exit 1, not its own timeout.
CHECK_TIMEOUT_S = 5.0


def check_health(redis_url: str, worker_name: str) -> int:
    """0 when the worker ``worker_name`` wrote its health record within the last interval (its main
    loop turned), 1 otherwise (also when Redis cannot be read), through the one connection module."""
    return asyncio.run(read_health(redis_url, worker_name))


async def read_health(redis_url: str, worker_name: str) -> int:
    key = health_check_key(worker_name)
    client = await connect(redis_url)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            record = await client.get(key)
    except (RedisError, OSError, TimeoutError) as exc:
        log.error("health check: Redis could not be read", error=str(exc) or type(exc).__name__)
        return 1
    finally:
        await client.aclose()
    if not record:
        log.error("health check failed: no recent health record", worker=worker_name, key=key)
        return 1
    log.info("health check passed", worker=worker_name, record=record)
    return 0
