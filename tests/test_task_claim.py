"""Workers take and run tasks with claim_tasks.lua (workers/task_claim.py): each task once across
processes, a running task out of everyone's reads, a dead worker's task due again when its hold
ends and counted as a rerun, Retry and max_tries as with arq, and fewer looks at an idle queue."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from arq import Retry, func
from arq.utils import timestamp_ms

from daemon import keys
from daemon.scripts import script_source
from daemon.settings import Settings
from daemon.tasks import task_from_id
from workers.task_claim import ClaimedTask, TaskClaimingWorker, claimed_tasks

QUEUE = keys.ARQ_QUEUE
HOLD_MS = 60_000
NOW_MS = 1_750_000_000_000

# One worker process: reads the due tasks and claims them until the queue has none due for it.
CLAIMER = """
import asyncio, json, sys
import redis.asyncio as aioredis
from daemon import keys
from daemon.scripts import script_source

async def main(url, now):
    client = aioredis.Redis.from_url(url)
    claim = client.register_script(script_source("claim_tasks"))
    taken = []
    while True:
        due = await client.zrangebyscore(keys.ARQ_QUEUE, "-inf", now, start=0, num=7)
        if not due:
            break
        held = [keys.ARQ_QUEUE, keys.TASK_RERUNS]
        got = await claim(keys=held, args=[keys.ARQ_JOB_PREFIX, 60000, now, *due])
        taken += [got[k].decode() for k in range(0, len(got), 3)]
    await client.aclose()
    print(json.dumps(taken))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def claim(client: aioredis.Redis, now_ms: int, *task_ids: str) -> list[ClaimedTask]:
    script = client.register_script(script_source("claim_tasks"))
    reply = await script(
        keys=[QUEUE, keys.TASK_RERUNS], args=[keys.ARQ_JOB_PREFIX, HOLD_MS, now_ms, *task_ids]
    )
    return claimed_tasks(reply)


async def test_four_worker_processes_take_each_task_exactly_once(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    tasks = {f"submit:job-{n}:1": NOW_MS - n for n in range(300)}
    await redis_client.zadd(QUEUE, tasks)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLAIMER, redis_url, str(NOW_MS), stdout=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    taken = Counter(task for out, _ in outputs for task in json.loads(out))
    assert set(taken) == set(tasks)
    assert max(taken.values()) == 1
    # Taken tasks are held: out of a read of what is due now, and not counted as reruns.
    assert await redis_client.zcount(QUEUE, "-inf", NOW_MS) == 0
    assert await redis_client.hlen(keys.TASK_RERUNS) == 0


async def test_a_claim_returns_the_payload_and_the_first_attempt(redis_client: aioredis.Redis) -> None:
    queued = {"accept:a": NOW_MS - 5, "accept:gone": NOW_MS - 4, "deliver:b:2": NOW_MS - 3}
    await redis_client.zadd(QUEUE, queued)
    await redis_client.set(keys.ARQ_JOB_PREFIX + "accept:a", b'{"f":"accept_job"}')
    # A payload under a task the slot scripts schedule is not read: its id says what to run.
    await redis_client.set(keys.ARQ_JOB_PREFIX + "deliver:b:2", b'{"f":"not_read"}')
    got = await claim(redis_client, NOW_MS, "accept:a", "accept:gone", "deliver:b:2")
    assert got == [
        ClaimedTask("accept:a", b'{"f":"accept_job"}', 1),
        ClaimedTask("accept:gone", None, 1),
        ClaimedTask("deliver:b:2", None, 1),
    ]


def test_the_ids_of_scheduled_tasks_say_what_to_run() -> None:
    assert task_from_id("submit:ltx-0a1b:1750000000123", 7) == {
        "t": None,
        "f": "submit_job",
        "a": ["ltx-0a1b"],
        "k": {},
        "et": 1750000000123,
    }
    deliver = {"t": None, "f": "deliver_job", "a": ["ltx-0a1b", 4], "k": {}, "et": 7}
    assert task_from_id("deliver:ltx-0a1b:4", 7) == deliver
    assert task_from_id("deliver:ltx-0a1b:4:archived", 7) == deliver  # released by the archive
    for other in ("accept:ltx-0a1b", "submit:ltx-0a1b", "submit:a:b:1", "deliver:a:4:later", "deliver:a:x"):
        assert task_from_id(other, 7) is None


async def test_a_taken_task_comes_back_when_its_hold_ends_as_a_rerun(redis_client: aioredis.Redis) -> None:
    await redis_client.zadd(QUEUE, {"submit:a:1": NOW_MS - 5})
    assert [c.attempt for c in await claim(redis_client, NOW_MS, "submit:a:1")] == [1]
    assert await redis_client.zscore(QUEUE, "submit:a:1") == NOW_MS + HOLD_MS + 0.5
    # Held: another worker's read of it (a stale one) takes nothing until the hold is over.
    assert await claim(redis_client, NOW_MS + HOLD_MS, "submit:a:1") == []
    # Its worker died: once the hold is over the task is taken again, as its second attempt.
    later = NOW_MS + HOLD_MS + 1
    assert [c.attempt for c in await claim(redis_client, later, "submit:a:1")] == [2]
    assert [c.attempt for c in await claim(redis_client, later + HOLD_MS + 1, "submit:a:1")] == [3]
    assert await redis_client.hget(keys.TASK_RERUNS, "submit:a:1") == "2"


async def test_finished_deferred_and_unknown_tasks_are_not_taken(redis_client: aioredis.Redis) -> None:
    await redis_client.zadd(QUEUE, {"submit:later:1": NOW_MS + 1, "submit:done:1": NOW_MS - 1})
    await redis_client.zrem(QUEUE, "submit:done:1")  # its worker finished it
    assert await claim(redis_client, NOW_MS, "submit:later:1", "submit:done:1", "submit:never:1") == []
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
        # A read whose task another worker took counts as empty too; one that takes a task resets it.
        await worker.start_jobs([b"submit:elsewhere:1"])
        assert worker.empty_reads == 13
        await redis_client.zadd(QUEUE, {"accept:ours": timestamp_ms() - 1})  # no payload: dropped
        await worker.start_jobs([b"accept:ours"])
        assert worker.empty_reads == 0
    finally:
        await worker.pool.aclose()


def worker_running(redis_url: str, coroutine: Any, max_tries: int) -> TaskClaimingWorker:
    from workers.worker import arq_pool

    return TaskClaimingWorker(
        functions=[func(coroutine, name="probe", max_tries=max_tries)],
        queue_name=QUEUE,
        redis_pool=arq_pool(redis_url),
        poll_delay=0.01,
        poll_max_delay=0.02,
        keep_result=0,
        handle_signals=False,
    )


async def enqueue(client: aioredis.Redis, task_id: str, *args: Any) -> None:
    now = timestamp_ms()
    payload = orjson.dumps({"t": None, "f": "probe", "a": list(args), "k": {}, "et": now})
    await client.set(keys.ARQ_JOB_PREFIX + task_id, payload, px=60_000)
    await client.zadd(QUEUE, {task_id: now})


async def until_gone(client: aioredis.Redis, task_id: str) -> None:
    """Wait (bounded) until the worker removed ``task_id``: off the queue, payload and reruns gone."""
    for _ in range(500):
        if (
            not await client.exists(keys.ARQ_JOB_PREFIX + task_id)
            and await client.zscore(QUEUE, task_id) is None
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{task_id} was never removed")


async def test_a_task_that_retries_runs_again_until_max_tries(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    attempts: list[int] = []

    async def probe(ctx: dict[str, Any], name: str) -> None:
        attempts.append(ctx["job_try"])
        assert ctx["job_id"] == "probe:retry" and name == "retry"
        raise Retry(defer=0.01)

    worker = worker_running(redis_url, probe, max_tries=3)
    main = asyncio.create_task(worker.main())
    try:
        await enqueue(redis_client, "probe:retry", "retry")
        await until_gone(redis_client, "probe:retry")
        assert attempts == [1, 2, 3]
        assert worker.jobs_retried == 3 and worker.jobs_failed == 1
        assert await redis_client.hlen(keys.TASK_RERUNS) == 0
    finally:
        main.cancel()
        await worker.close()


async def test_a_task_that_ends_leaves_nothing_and_a_failing_one_is_dropped(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    ran: list[str] = []

    async def probe(ctx: dict[str, Any], outcome: str) -> str:
        ran.append(outcome)
        if outcome == "boom":
            raise ValueError("boom")
        return outcome

    worker = worker_running(redis_url, probe, max_tries=3)
    main = asyncio.create_task(worker.main())
    try:
        await enqueue(redis_client, "probe:ok", "ok")
        await enqueue(redis_client, "probe:boom", "boom")
        await until_gone(redis_client, "probe:ok")
        await until_gone(redis_client, "probe:boom")
        assert sorted(ran) == ["boom", "ok"]
        assert worker.jobs_complete == 1 and worker.jobs_failed == 1
    finally:
        main.cancel()
        await worker.close()


async def test_a_task_cut_off_by_a_shutdown_is_due_again_at_once(
    make_settings: Callable[..., Settings], redis_client: aioredis.Redis, redis_url: str
) -> None:
    from workers.worker import build_worker

    worker = build_worker(make_settings(), redis_url, handle_signals=False)
    try:
        started = timestamp_ms()
        await redis_client.zadd(QUEUE, {"deliver:a:1": started - 5})
        [taken] = await claim(redis_client, started, "deliver:a:1")
        await worker.run_again(taken, 0)
        score = await redis_client.zscore(QUEUE, "deliver:a:1")
        assert score is not None and started <= score <= timestamp_ms() + 1
        [again] = await claim(redis_client, timestamp_ms() + 1, "deliver:a:1")
        assert again.attempt == 2
        await worker.remove_task(again)
        assert await redis_client.zscore(QUEUE, "deliver:a:1") is None
        assert await redis_client.hlen(keys.TASK_RERUNS) == 0
    finally:
        await worker.pool.aclose()


async def test_a_stop_whose_cancel_was_lost_still_ends_the_poll_loop(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    """On Python 3.11 a cancel of the main task can be dropped inside redis-py's ``wait_for``; the
    loop must end at its next turn all the same. Here the cancel is never sent (no main_task)."""

    ran = asyncio.Event()

    async def probe(ctx: dict[str, Any]) -> None:
        ran.set()

    worker = worker_running(redis_url, probe, max_tries=1)
    main = asyncio.create_task(worker.main())
    try:
        await enqueue(redis_client, "probe:turning")
        async with asyncio.timeout(10):
            await ran.wait()  # the loop is turning
        await until_gone(redis_client, "probe:turning")
        worker.main_task = None
        await worker._wait_for_tasks_to_complete(signal.SIGTERM)
        done, _ = await asyncio.wait({main}, timeout=10)  # does not cancel main itself
        assert main in done, "the poll loop went on after the stop"
        assert main.cancelled()
    finally:
        main.cancel()
        await worker.close()
