"""How a worker takes and runs its tasks: one script call takes a batch with everything needed to
run them, and finishing one costs one round of two or three commands.

arq 0.28 takes each task it reads with a WATCH / EXISTS / ZSCORE / MULTI / PSETEX / EXEC round,
reads its payload and counts its try in a second transaction (GET / INCR / EXPIRE), and finishes
it in a third (DEL / ZREM / ZREM); a task stays on the queue with its due score while it runs, so
every worker's next look reads it again. With four workers that was most of the Redis commands a
job cost. :class:`TaskClaimingWorker` keeps arq's queue, payloads, poll loop, functions, signals
and health record, and replaces the rest:

* ``claim_tasks.lua`` takes the tasks of one read (atomic across workers) and returns their
  payloads and attempt numbers. A taken task's score moves past its hold (``in_progress_timeout``):
  it leaves everyone's reads while it runs and is due again when its worker died.
* A task that ends (done, failed, out of tries, payload gone) is removed: ``ZREM`` of the queue and
  ``DEL`` of its payload, plus its rerun count when it ran more than once.
* A task that raises arq's ``Retry`` is due again after its delay; one cut off by a shutdown is due
  again at once. Either way its next run counts as a rerun (``claim_tasks.lua``), so ``max_tries``
  holds; ``ctx["job_try"]`` is the attempt, as with arq.
* A task whose bookkeeping a Redis outage cut off is logged and runs again when its hold ends.

An empty read (or one whose tasks all went to other workers) doubles the wait before the next
one, from ``GENRELAY_QUEUE_POLL_DELAY`` up to ``GENRELAY_QUEUE_POLL_MAX_DELAY``; a read that takes
a task resets it.

A stop does not rest on arq's one ``cancel()`` of the main task: on Python 3.11, redis-py sends
each command inside ``asyncio.wait_for``, which drops a cancellation that lands as the send
completes, and the poll loop would go on for good. Once arq has asked the loop to end, its next
turn ends it.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from arq import Retry, Worker
from arq.utils import timestamp_ms
from arq.worker import Function
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from daemon import keys
from daemon.scripts import script_source
from daemon.tasks import task_from_id

log = structlog.get_logger("genrelay.worker")

# Added to the score of a task put back to run again: its next claim counts a rerun (claim_tasks.lua).
RERUN_MARK = 0.5


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """A task this worker took: its id, payload (None when it expired) and attempt (1: first run)."""

    task_id: str
    payload: bytes | None
    attempt: int


def claimed_tasks(reply: list[Any]) -> list[ClaimedTask]:
    """The flat reply of ``claim_tasks.lua`` as :class:`ClaimedTask` values."""
    out = []
    for k in range(0, len(reply), 3):
        task_id = reply[k].decode() if isinstance(reply[k], bytes) else str(reply[k])
        raw = reply[k + 1]
        payload = raw.encode() if isinstance(raw, str) else raw if isinstance(raw, bytes) else None
        out.append(ClaimedTask(task_id, payload, int(reply[k + 2])))
    return out


class TaskClaimingWorker(Worker):
    """An arq ``Worker`` that takes and runs tasks as the module docstring says."""

    def __init__(self, *args: Any, poll_max_delay: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_max_delay = max(poll_max_delay, self.poll_delay_s)
        self.empty_reads = 0
        self.stop_requested = False
        self._claim: AsyncScript | None = None

    def idle_wait(self) -> float:
        """Extra wait after this many empty reads in a row (arq's loop adds its poll_delay)."""
        if self.empty_reads == 0:
            return 0.0
        wait: float = self.poll_delay_s * 2 ** min(self.empty_reads, 16)
        return float(min(wait, self.poll_max_delay) - self.poll_delay_s)

    def handle_sig(self, signum: signal.Signals) -> None:
        self.stop_requested = True
        super().handle_sig(signum)

    async def _wait_for_tasks_to_complete(self, signum: signal.Signals) -> None:
        await super()._wait_for_tasks_to_complete(signum)
        self.stop_requested = True  # set with arq's cancel of the main task, after the grace

    async def _poll_iteration(self) -> None:
        if self.stop_requested:
            raise asyncio.CancelledError  # the cancel arq sent was lost (module docstring)
        await super()._poll_iteration()
        extra = self.idle_wait()
        if extra > 0:
            await asyncio.sleep(extra)

    @property
    def hold_ms(self) -> int:
        return int(self.in_progress_timeout_s * 1000)

    async def claim(self, task_ids: list[str]) -> list[ClaimedTask]:
        """Take those of ``task_ids`` that are still due (``claim_tasks.lua``)."""
        if self._claim is None:
            self._claim = self.pool.register_script(script_source("claim_tasks"))
        reply = await self._claim(
            keys=[self.queue_name, keys.TASK_RERUNS],
            args=[keys.ARQ_JOB_PREFIX, self.hold_ms, timestamp_ms(), *task_ids],
        )
        return claimed_tasks(reply)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        room = self.max_jobs - self.job_counter
        candidates = [job_id.decode() for job_id in job_ids[: max(0, room)]]
        if not candidates:
            # A full worker did not really look; only an empty read of the queue slows the looks.
            self.empty_reads = self.empty_reads + 1 if not job_ids else 0
            return
        taken = await self.claim(candidates)
        # A read whose tasks all went to other workers counts as empty: they keep up without us.
        self.empty_reads = 0 if taken else self.empty_reads + 1
        for claimed in taken:
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self._run_claimed(claimed))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[claimed.task_id] = task

    async def _run_claimed(self, claimed: ClaimedTask) -> None:
        try:
            await self.run_claimed(claimed)
        except (RedisError, OSError) as exc:
            # Redis went away while the task was being finished: its hold runs out and it runs again.
            # Not an error of the poll loop, which would re-raise it later.
            log.warning(
                "Redis cut off a task's bookkeeping; it runs again", task=claimed.task_id, error=repr(exc)
            )

    async def run_claimed(self, claimed: ClaimedTask) -> None:
        """Run one taken task and record how it ended (see the module docstring)."""
        task_id = claimed.task_id
        if claimed.payload is not None:
            task = self.read_payload(claimed.payload)
        elif (task := task_from_id(task_id, timestamp_ms())) is None:
            log.warning("task payload expired; the task is dropped", task=task_id)
            self.jobs_failed += 1
            return await asyncio.shield(self.remove_task(claimed))
        name = task.get("f") if task is not None else None
        function = self.functions.get(name) if isinstance(name, str) else None
        if task is None or not isinstance(function, Function):
            log.error("task names no function of this worker; dropped", task=task_id, function=name)
            self.jobs_failed += 1
            return await asyncio.shield(self.remove_task(claimed))
        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if claimed.attempt > max_tries:
            log.error("task ran out of tries; dropped", task=task_id, tries=max_tries)
            self.jobs_failed += 1
            return await asyncio.shield(self.remove_task(claimed))
        enqueued_ms = int(task.get("et") or 0)
        ctx = {
            **self.ctx,
            "job_id": task_id,
            "job_try": claimed.attempt,
            "enqueue_time": datetime.fromtimestamp(enqueued_ms / 1000, UTC),
        }
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        started = self.loop.time()
        run = self.loop.create_task(function.coroutine(ctx, *task.get("a", []), **task.get("k", {})))
        self.job_tasks[task_id] = run
        try:
            await asyncio.wait_for(run, timeout_s)
        except Retry as exc:
            self.jobs_retried += 1
            delay_ms = int(exc.defer_score or 0)
            log.debug("task runs again", task=task_id, retry_in_ms=delay_ms, attempt=claimed.attempt)
            await asyncio.shield(self.run_again(claimed, delay_ms))
        except asyncio.CancelledError:
            # A shutdown cut it off: due again at once, for this or another worker.
            self.jobs_retried += 1
            log.info("task cut off by a shutdown; it runs again", task=task_id)
            await asyncio.shield(self.run_again(claimed, 0))
        except Exception as exc:
            self.jobs_failed += 1
            log.error("task failed", task=task_id, attempt=claimed.attempt, error=repr(exc), exc_info=exc)
            await asyncio.shield(self.remove_task(claimed))
        else:
            self.jobs_complete += 1
            await asyncio.shield(self.remove_task(claimed))
            log.info(
                "task done",
                task=task_id,
                attempt=claimed.attempt,
                seconds=round(self.loop.time() - started, 3),
            )
        finally:
            self.job_tasks.pop(task_id, None)

    def read_payload(self, payload: bytes) -> dict[str, Any] | None:
        """The payload as {f, a, k, t, et} through the worker's deserializer (JSON by default)."""
        try:
            task = (self.job_deserializer or orjson.loads)(payload)
        except (ValueError, TypeError):
            return None
        return task if isinstance(task, dict) else None

    async def remove_task(self, claimed: ClaimedTask) -> None:
        """The task ended: off the queue, its payload (when it has one) and rerun count gone (one
        round, no transaction: a payload left by a cut-off round expires, a queue entry without one
        is dropped when taken, or runs again when its id names it: our tasks are idempotent)."""
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.zrem(self.queue_name, claimed.task_id)
            if claimed.payload is not None:
                pipe.delete(keys.ARQ_JOB_PREFIX + claimed.task_id)
            if claimed.attempt > 1:
                pipe.hdel(keys.TASK_RERUNS, claimed.task_id)
            await pipe.execute()

    async def run_again(self, claimed: ClaimedTask, delay_ms: int) -> None:
        """Due again in ``delay_ms``, marked so that run counts as a rerun (still on the queue only)."""
        due = timestamp_ms() + max(0, delay_ms) + RERUN_MARK
        await self.pool.zadd(self.queue_name, {claimed.task_id: due}, xx=True)
