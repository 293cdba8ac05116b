"""The trust boundary of the arq queue: which tasks an app may put there, and how genrelay's own
tasks tell the work it scheduled from work somebody else wrote into Redis.

Apps enqueue jobs through Redis with ``accept_job`` under the arq id ``accept:<job id>`` (README,
"Enqueue from any language"); that is the only entry. genrelay's internal tasks are scheduled by its Lua
scripts and its own code under arq ids that name the task and its arguments (``submit:<job>:<ms>``,
``deliver:<job>:<seq>`` (``...:archived`` once the archive releases a parked delivery),
``cancel:<job>``, ``dispatch:<provider>:<s>``, ``capacity:<provider>:<ds>``), and each task checks,
before it does anything, that its arq id is the one genrelay gives such work and that the job is in the
state that work needs (the scripts check again, atomically). A payload written under ``accept:...`` that
names an internal task, or an internal task with arguments genrelay never scheduled, is refused: logged
and counted in the hash ``genrelay:tasks:refused`` (task -> count).

A payload the worker cannot read at all (not JSON, not arq's shape, an unknown task) is handed to
``accept_job`` as malformed: when its arq id names a job (``accept:<job id>``) that job ends ``failed``
with the reason; otherwise it is logged and counted.

What this does not do: a client that may run any command on genrelay's Redis can rewrite job records
directly. Give apps a Redis user limited to the enqueue (README, "Security").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog

from daemon import keys
from daemon.input_limits import json_problem
from daemon.tasks import Task

__all__ = ["REFUSED_KEY", "arq_id", "refuse", "task_deserializer"]

log = structlog.get_logger("genrelay.tasks")

REFUSED_KEY = f"{keys.PREFIX}:tasks:refused"
ACCEPT_TASK = Task.ACCEPT


def arq_id(ctx: dict[str, Any]) -> str:
    """The arq id of the running task."""
    value = ctx.get("job_id")
    return value if isinstance(value, str) else ""


async def refuse(client: aioredis.Redis, task: str, ctx: dict[str, Any], reason: str) -> str:
    """Log and count a task that genrelay did not schedule; returns ``"refused"``."""
    await client.hincrby(REFUSED_KEY, task, 1)
    log.error("task refused", task=task, arq_id=arq_id(ctx)[:120], reason=reason)
    return "refused"


def task_deserializer(known_tasks: Collection[str]) -> Callable[[bytes], Any]:
    """arq's job deserializer for the worker: a payload it cannot run becomes ``accept_job`` with the
    keyword ``malformed`` (the reason), instead of an exception arq would only log."""
    known = frozenset(known_tasks)

    def deserialize(data: bytes) -> Any:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return _malformed(f"the payload is not JSON: {exc}")
        if not isinstance(payload, dict):
            return _malformed("the payload is not a JSON object")
        function, args, kwargs = payload.get("f"), payload.get("a"), payload.get("k", {})
        enqueued = payload.get("et")
        if function not in known or not isinstance(args, list) or not isinstance(kwargs, dict):
            return _malformed("the payload must be {t, f: a genrelay task, a: [...], k: {...}, et}")
        if kwargs:
            return _malformed("genrelay's tasks take no keyword arguments")
        if not isinstance(enqueued, int) or isinstance(enqueued, bool):
            return _malformed("'et' (enqueued at, ms) must be an integer")
        problem = json_problem(args)
        if problem is not None:
            return _malformed(f"the request: {problem}")
        tries = payload.get("t")
        return {
            "f": function,
            "a": args,
            "k": {},
            "t": tries if isinstance(tries, int) else None,
            "et": enqueued,
        }

    return deserialize


def _malformed(reason: str) -> dict[str, Any]:
    return {"f": ACCEPT_TASK, "a": [], "k": {"malformed": reason}, "t": None, "et": int(time.time() * 1000)}
