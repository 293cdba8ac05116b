"""How a worker takes arq tasks: one script call for a batch, and fewer looks at an idle queue.

arq 0.28 takes each task it reads with a WATCH / EXISTS / ZSCORE / MULTI / PSETEX / EXEC round, and
a task stays on the queue with its due score while it runs, so every worker's next look reads it
again and spends a WATCH / EXISTS / ZSCORE / UNWATCH round to find it taken. With four workers that
was most of the Redis commands a job cost. :class:`TaskClaimingWorker` takes the tasks of one read
with ``claim_tasks.lua`` (one call, atomic across workers), which also moves a taken task's score
to the moment its in-progress key expires: it leaves everyone's reads while it runs and comes back,
as with arq, when its worker died; a task cut off by a shutdown or retried without delay is put
back to due at once, as arq does; one whose arq bookkeeping a Redis outage cut off is logged and
runs again when its hold ends (it is not left for the poll loop to re-raise). An empty read
doubles the wait before the next one, from ``GENRELAY_QUEUE_POLL_DELAY`` up to
``GENRELAY_QUEUE_POLL_MAX_DELAY``; a read that finds a task resets it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from arq import Worker
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from daemon.scripts import script_source

log = structlog.get_logger("genrelay.worker")


class TaskClaimingWorker(Worker):
    """An arq ``Worker`` that takes its tasks with ``claim_tasks.lua``, see the module docstring."""

    def __init__(self, *args: Any, poll_max_delay: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_max_delay = max(poll_max_delay, self.poll_delay_s)
        self.empty_reads = 0
        self._claim: AsyncScript | None = None
        # The queue score each running task was given when it was taken.
        self.held_scores: dict[str, int] = {}

    def idle_wait(self) -> float:
        """Extra wait after this many empty reads in a row (arq's loop adds its poll_delay)."""
        if self.empty_reads == 0:
            return 0.0
        wait: float = self.poll_delay_s * 2 ** min(self.empty_reads, 16)
        return float(min(wait, self.poll_max_delay) - self.poll_delay_s)

    async def _poll_iteration(self) -> None:
        await super()._poll_iteration()
        extra = self.idle_wait()
        if extra > 0:
            await asyncio.sleep(extra)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        room = self.max_jobs - self.job_counter
        candidates = [job_id.decode() for job_id in job_ids[: max(0, room)]]
        if not candidates:
            # A full worker did not really look; only an empty read of the queue slows the looks.
            self.empty_reads = self.empty_reads + 1 if not job_ids else 0
            return
        self.empty_reads = 0
        if self._claim is None:
            self._claim = self.pool.register_script(script_source("claim_tasks"))
        hold_ms = int(self.in_progress_timeout_s * 1000)
        taken = await self._claim(
            keys=[self.queue_name], args=[in_progress_key_prefix, hold_ms, timestamp_ms(), *candidates]
        )
        for k in range(0, len(taken), 2):
            job_id = taken[k].decode() if isinstance(taken[k], bytes) else str(taken[k])
            score = int(taken[k + 1])
            self.held_scores[job_id] = score
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self._run_claimed(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _run_claimed(self, job_id: str, score: int) -> None:
        try:
            await self.run_job(job_id, score)
        except (RedisError, OSError) as exc:
            # Redis went away during arq's own reads or writes around the task: its hold runs out
            # and it runs again. Not an error of the poll loop, which would re-raise it later.
            self.held_scores.pop(job_id, None)
            log.warning("Redis cut off a task's bookkeeping; it runs again", task=job_id, error=repr(exc))

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        held = self.held_scores.pop(job_id, None)
        if not finish and not incr_score and held is not None:
            # To run again at once (cut off by a shutdown, or a Retry without delay): arq leaves
            # the score alone, which is the later one the claim gave it; move it back to now.
            incr_score = timestamp_ms() - held
        await super().finish_job(
            job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress
        )

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        self.held_scores.pop(job_id, None)
        await super().finish_failed_job(job_id, result_data)
