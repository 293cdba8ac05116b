"""``genrelay worker`` keeps running through Redis outages.

arq 0.28 leaves reconnecting to a supervisor: a connection error in its poll loop (reading the
queue, taking a job, the health record) ends ``Worker.main()`` and with it the process, and so does
Redis being unreachable at start (``create_pool`` gives up after 5 tries). Two layers fix that here:

* :class:`OutageTolerantWorker` catches Redis errors in the poll loop itself, says so in the log,
  waits with backoff until Redis answers and carries on: running tasks keep running, nothing is
  restarted. It takes tasks as :class:`~workers.task_claim.TaskClaimingWorker` does, which counts
  a task in ``max_jobs`` only once its claim succeeded, so a failed claim costs no place.
* :func:`run_supervised` runs such workers one after the other: when one still ends on a Redis error
  (at start, say), it is closed, Redis is waited for with backoff, and a fresh one starts. SIGTERM
  and SIGINT stop it gracefully: no new task, running ones get ``job_completion_wait``.

Inside tasks, :func:`retry_when_redis_unreachable` turns a Redis error into arq's ``Retry`` (arq
would fail the task and drop it), and :func:`until_redis_answers` waits out a blip at the steps of a
submission whose outcome lives only in this process. A task whose arq bookkeeping a Redis error cut
short is not lost either: its hold on the queue ends and the task runs again; our tasks are
idempotent (the job record's compare-and-set), so the provider sees one submission.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import structlog
from arq import Retry, Worker
from arq.typing import WorkerCoroutine
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from daemon.backoff import backoff_seconds
from daemon.redis_connection import connect
from workers.task_claim import TaskClaimingWorker

log = structlog.get_logger("genrelay.worker")

# Backoff between looks at an unreachable Redis: short enough that a restart (seconds) costs little,
# capped so an outage of minutes costs a log line every few seconds, not a busy loop.
RETRY_BASE_S = 0.25
RETRY_MAX_S = 5.0
# Failures that mean "Redis cannot be reached right now" (BusyLoadingError, a restarted Redis still
# loading its AOF, is a ConnectionError).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

T = TypeVar("T")


def retry_when_redis_unreachable(task: WorkerCoroutine) -> WorkerCoroutine:
    """An arq task that a Redis outage makes arq run again (``Retry`` with backoff) instead of
    failing it: arq fails a task on any other exception and drops it from the queue, which would
    leave its job holding a slot with nobody to submit or finish it. Our tasks are idempotent."""

    @functools.wraps(task)
    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await task(ctx, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            tries = int(ctx.get("job_try") or 1)
            delay = backoff_seconds(tries, RETRY_BASE_S, RETRY_MAX_S)
            log.warning(
                "Redis is unreachable; the task runs again",
                task=getattr(task, "__name__", "?"),
                error=repr(exc),
                tries=tries,
                retry_in_s=round(delay, 2),
            )
            raise Retry(defer=delay) from exc

    return cast(WorkerCoroutine, run)


async def until_redis_answers(call: Callable[[], Awaitable[T]], what: str, within: float) -> T:
    """``call()`` (idempotent) again and again until Redis answers, for up to ``within`` seconds, then
    the last error: for a step whose outcome exists only in this process (the provider's job id
    right after it accepted a job; a write-ahead claim that may have run), which a blip must not
    turn into a lost or an interrupted job. ``within`` stays under the arq task's timeout."""
    deadline = asyncio.get_running_loop().time() + within
    attempt = 0
    while True:
        try:
            return await call()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            attempt += 1
            delay = backoff_seconds(attempt, RETRY_BASE_S, RETRY_MAX_S)
            log.warning(
                "Redis is unreachable; holding the result and retrying",
                what=what,
                error=repr(exc),
                retry_in_s=round(delay, 2),
            )
            await asyncio.sleep(delay)


class OutageTolerantWorker(TaskClaimingWorker):
    """An arq ``Worker`` whose poll loop outlives Redis errors (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redis_failures = 0

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, *UNREACHABLE) as exc:
            self.redis_failures += 1
            delay = backoff_seconds(self.redis_failures, RETRY_BASE_S, RETRY_MAX_S)
            log.warning(
                "Redis is unreachable or refused a command; running tasks go on, retrying",
                error=repr(exc),
                retry_in_s=round(delay, 2),
                failures=self.redis_failures,
            )
            await asyncio.sleep(delay)
            return
        if self.redis_failures:
            log.info("Redis answers again; the worker takes jobs", after_failures=self.redis_failures)
            self.redis_failures = 0


async def wait_for_redis(redis_url: str, stopping: asyncio.Event) -> bool:
    """PING until Redis answers (True) or a stop is requested (False), logging each failed look."""
    attempt = 0
    client = await connect(redis_url)
    try:
        while not stopping.is_set():
            try:
                async with asyncio.timeout(RETRY_MAX_S):
                    await client.ping()
                return True
            except (RedisError, *UNREACHABLE) as exc:
                attempt += 1
                delay = backoff_seconds(attempt, RETRY_BASE_S, RETRY_MAX_S)
                log.warning(
                    "Redis is unreachable; the worker waits for it and retries",
                    error=repr(exc),
                    retry_in_s=round(delay, 2),
                    attempt=attempt,
                )
                try:
                    await asyncio.wait_for(stopping.wait(), delay)
                except TimeoutError:
                    pass
        return False
    finally:
        await client.aclose()


async def run_supervised(build: Callable[[], Worker], redis_url: str) -> None:
    """Run workers from ``build`` (built with ``handle_signals=False``) until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    current: list[Worker] = []

    def stop(signum: int) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("worker stopping", signal=signal.Signals(signum).name)
        if current:
            # arq's own graceful stop: no new task; running ones get job_completion_wait, then cancelled.
            current[0].handle_sig_wait_for_completion(signal.Signals(signum))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    restarts = 0
    try:
        while not stopping.is_set():
            worker = build()
            current[:] = [worker]
            worker.main_task = asyncio.create_task(worker.main())
            try:
                await worker.main_task
                return  # main() only returns in burst mode
            except asyncio.CancelledError:
                if not stopping.is_set():
                    raise
            except (RedisError, *UNREACHABLE) as exc:
                restarts += 1
                log.warning(
                    "the worker stopped on a Redis error; it restarts once Redis answers",
                    error=repr(exc),
                    restarts=restarts,
                )
            finally:
                current.clear()
                await close_quietly(worker)
            if not await wait_for_redis(redis_url, stopping):
                return
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def close_quietly(worker: Worker) -> None:
    """``Worker.close`` even when Redis is gone: its Redis calls may fail, our shutdown hook
    (pollers, sweep, HTTP session, Redis client) must still run, and the arq pool must close."""
    try:
        await worker.close()
        return
    except (RedisError, *UNREACHABLE, asyncio.CancelledError) as exc:
        log.warning("worker closed with Redis unreachable", error=repr(exc))
    if worker.on_shutdown is not None:
        try:
            await worker.on_shutdown(worker.ctx)
        except (RedisError, *UNREACHABLE) as exc:
            log.warning("worker shutdown hook failed", error=repr(exc))
    if worker._pool is not None:
        try:
            await worker._pool.close(close_connection_pool=True)
        except (RedisError, *UNREACHABLE):
            pass
        worker._pool = None
