"""Workers take arq tasks with claim_tasks.lua (workers/task_claim.py): each task once across
processes, a running task out of everyone's reads, a dead worker's task due again when its
in-progress key expires, and fewer looks at an idle queue."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Callable

import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix

from daemon import keys
from daemon.scripts import script_source
from daemon.settings import Settings

QUEUE = keys.ARQ_QUEUE
HOLD_MS = 60_000
NOW_MS = 1_750_000_000_000

# One worker process: reads the due tasks and claims them until the queue has none due for it.
CLAIMER = """
import asyncio, json, sys
import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix
from daemon.scripts import script_source

async def main(url, queue, now):
    client = aioredis.Redis.from_url(url)
    claim = client.register_script(script_source("claim_tasks"))
    taken = []
    while True:
        due = await client.zrangebyscore(queue, "-inf", now, start=0, num=7)
        if not due:
            break
        got = await claim(keys=[queue], args=[in_progress_key_prefix, 60000, now, *due])
        taken += [got[k].decode() for k in range(0, len(got), 2)]
    await client.aclose()
    print(json.dumps(taken))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def claim(client: aioredis.Redis, now_ms: int, *task_ids: str) -> list[tuple[str, int]]:
    script = client.register_script(script_source("claim_tasks"))
    got = await script(keys=[QUEUE], args=[in_progress_key_prefix, HOLD_MS, now_ms, *task_ids])
    return [(str(got[k]), int(got[k + 1])) for k in range(0, len(got), 2)]


async def test_four_worker_processes_take_each_task_exactly_once(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    tasks = {f"submit:job-{n}:1": NOW_MS - n for n in range(300)}
    await redis_client.zadd(QUEUE, tasks)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLAIMER, redis_url, QUEUE, str(NOW_MS), stdout=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    taken = Counter(task for out, _ in outputs for task in json.loads(out))
    assert set(taken) == set(tasks)
    assert max(taken.values()) == 1
    # Taken tasks are held (in-progress key) and out of a read of what is due now.
    assert await redis_client.zcount(QUEUE, "-inf", NOW_MS) == 0
    assert await redis_client.exists(*(in_progress_key_prefix + t for t in tasks)) == len(tasks)


async def test_a_taken_task_comes_back_when_its_hold_expires(redis_client: aioredis.Redis) -> None:
    await redis_client.zadd(QUEUE, {"submit:a:1": NOW_MS - 5})
    assert await claim(redis_client, NOW_MS, "submit:a:1") == [("submit:a:1", NOW_MS + HOLD_MS)]
    held_ms = await redis_client.pttl(in_progress_key_prefix + "submit:a:1")
    assert 0 < held_ms <= HOLD_MS
    assert await redis_client.zscore(QUEUE, "submit:a:1") == NOW_MS + HOLD_MS
    # Held: another worker's read of it (a stale one) takes nothing, even once it is due.
    assert await claim(redis_client, NOW_MS + HOLD_MS, "submit:a:1") == []
    # Its worker died: the in-progress key expired; the task is due at once and taken again.
    await redis_client.delete(in_progress_key_prefix + "submit:a:1")
    later = NOW_MS + HOLD_MS
    assert await claim(redis_client, later, "submit:a:1") == [("submit:a:1", later + HOLD_MS)]


async def test_finished_deferred_and_unknown_tasks_are_not_taken(redis_client: aioredis.Redis) -> None:
    await redis_client.zadd(QUEUE, {"submit:later:1": NOW_MS + 1, "submit:done:1": NOW_MS - 1})
    await redis_client.zrem(QUEUE, "submit:done:1")  # arq's finish removes it
    assert await claim(redis_client, NOW_MS, "submit:later:1", "submit:done:1", "submit:never:1") == []
    assert await redis_client.exists(in_progress_key_prefix + "submit:later:1") == 0
    assert await redis_client.zscore(QUEUE, "submit:later:1") == NOW_MS + 1


async def test_empty_reads_double_the_wait_up_to_the_max(
    make_settings: Callable[..., Settings], redis_client: aioredis.Redis, redis_url: str
) -> None:
    from workers.worker import build_worker

    settings = make_settings(GENRELAY_QUEUE_POLL_DELAY="0.01", GENRELAY_QUEUE_POLL_MAX_DELAY="0.05")
    worker = build_worker(settings, redis_url, handle_signals=False)
    try:
        waits = []
        for reads in (0, 1, 2, 3, 10):
            worker.empty_reads = reads
            waits.append(round(worker.idle_wait(), 6))
        # arq's loop waits 0.01 s itself; the extra brings it to 0.02, 0.04, then the 0.05 cap.
        assert waits == [0.0, 0.01, 0.03, 0.04, 0.04]
        await worker.start_jobs([])
        await worker.start_jobs([])
        assert worker.empty_reads == 12
        # A read that found a task (taken by someone else here) resets the wait.
        await worker.start_jobs([b"submit:elsewhere:1"])
        assert worker.empty_reads == 0
    finally:
        await worker.pool.aclose()


async def test_a_task_cut_off_by_a_shutdown_is_due_again_at_once(
    make_settings: Callable[..., Settings], redis_client: aioredis.Redis, redis_url: str
) -> None:
    from arq.utils import timestamp_ms

    from workers.worker import build_worker

    worker = build_worker(make_settings(), redis_url, handle_signals=False)
    try:
        started = timestamp_ms()
        await redis_client.zadd(QUEUE, {"deliver:a:1": started - 5})
        [(task, held)] = await claim(redis_client, started, "deliver:a:1")
        assert held > started
        worker.held_scores[task] = held
        # What arq does with a task a shutdown cancelled: not finished, no new score of its own.
        await worker.finish_job(task, False, None, None, False, None, None)
        score = await redis_client.zscore(QUEUE, task)
        assert score is not None and started <= score <= timestamp_ms()
        assert await redis_client.exists(in_progress_key_prefix + task) == 0
        assert worker.held_scores == {}
    finally:
        await worker.pool.aclose()
