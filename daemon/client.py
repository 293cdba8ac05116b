"""The Python client for apps: enqueue through Redis, then wait for the result.

``submit`` writes one arq job (``accept_job``) onto genrelay's queue; a worker validates it and
stores the job. The job id is chosen here, so the app has it at once. ``wait`` follows the
provider's events stream (``XREAD BLOCK``) instead of polling the job record.

The Redis format, for apps in other languages, is in the README ("Enqueue from any language").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from daemon import keys
from daemon.jobs import DEFAULT_PRIORITY, REQUEST_NAMESPACE, TERMINAL, Job, JobRequest, State
from daemon.redis_connection import connect
from daemon.tasks import Task

# arq drops a queued job whose key expired; a worker takes it within milliseconds when one runs.
ACCEPT_EXPIRY_MS = 7 * 86_400_000
WAIT_BLOCK_MS = 5_000


def job_id_for(provider: str, request_id: str | None = None) -> str:
    """``{provider}-{32 hex}``: from the app's request id when given (so a retried submit is the
    same job), random otherwise."""
    token = uuid.uuid5(REQUEST_NAMESPACE, f"{provider}:{request_id}") if request_id else uuid.uuid4()
    return f"{provider}-{token.hex}"


def arq_payload(function: str, args: list[Any], now_ms: int) -> bytes:
    """One arq job as genrelay's workers read it (orjson instead of arq's default pickle)."""
    return orjson.dumps({"t": 1, "f": function, "a": args, "k": {}, "et": now_ms})


def accept_payload(job_id: str, request: dict[str, Any], now_ms: int) -> bytes:
    """The arq job that asks a worker to accept ``request`` as ``job_id``."""
    return arq_payload(Task.ACCEPT, [job_id, request], now_ms)


async def enqueue(redis: aioredis.Redis, arq_id: str, payload: bytes, now_ms: int) -> None:
    """Put one job on genrelay's arq queue; a second enqueue of the same id changes nothing."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.ARQ_JOB_PREFIX + arq_id, payload, px=ACCEPT_EXPIRY_MS, nx=True)
        pipe.zadd(keys.ARQ_QUEUE, {arq_id: now_ms}, nx=True)
        await pipe.execute()


class Client:
    """Talks to genrelay through its Redis; no HTTP needed."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    @classmethod
    async def connect(cls, url: str) -> Client:
        return cls(await connect(url))

    async def close(self) -> None:
        await self.redis.aclose()

    async def submit(
        self,
        provider: str,
        operation: str,
        params: dict[str, Any],
        *,
        account: str | None = None,
        reply_url: str | None = None,
        reply_ref: str | None = None,
        priority: int = DEFAULT_PRIORITY,
        request_id: str | None = None,
        notify_progress: bool = False,
    ) -> str:
        """Enqueue one generation; returns its job id at once. Raises ``InvalidRequest`` for a
        malformed request; an unknown provider, operation or account ends the job as failed."""
        body: dict[str, Any] = {"provider": provider, "operation": operation, "params": params}
        optional = {
            "account": account,
            "replyUrl": reply_url,
            "replyRef": reply_ref,
            "requestId": request_id,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if priority != DEFAULT_PRIORITY:
            body["priority"] = priority
        if notify_progress:
            body["notifyProgress"] = True
        JobRequest.from_json(body)  # types and bounds, before anything is written
        job_id = job_id_for(provider, request_id)
        now_ms = int(time.time() * 1000)
        arq_id = f"accept:{job_id}"
        await enqueue(self.redis, arq_id, accept_payload(job_id, body, now_ms), now_ms)
        return job_id

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The job in the ``GET /v1/jobs/{id}`` shape, or None when unknown (or not accepted yet)."""
        if keys.provider_of(job_id) is None:
            return None
        fields = await self.redis.hgetall(keys.job_key(job_id))
        return Job(fields).to_api() if fields.get("state") else None

    async def wait(
        self, job_id: str, on_update: Callable[[dict[str, Any] | None], None] | None = None
    ) -> dict[str, Any]:
        """Block until the job is terminal and return it (bound it with ``asyncio.timeout``).
        ``on_update`` gets the record (None while no worker has accepted the job yet) each time it is
        read: first, then after every event about the job."""
        provider = keys.provider_of(job_id)
        if provider is None:
            raise ValueError(f"{job_id!r} is not a genrelay job id")
        stream = keys.events_key(provider)
        # Take the stream position before reading the record, so no event can fall in between.
        newest = await self.redis.xrevrange(stream, count=1)
        last_id = newest[0][0] if newest else "0-0"
        while True:
            job = await self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job is not None and State(job["status"]["type"]) in TERMINAL:
                return job
            last_id = await self._next_event(stream, job_id, last_id)

    async def _next_event(self, stream: str, job_id: str, last_id: str) -> str:
        """Block until an event about ``job_id`` arrives; returns the position after it."""
        while True:
            reply = await self.redis.xread({stream: last_id}, block=WAIT_BLOCK_MS, count=1000)
            for _, entries in reply:
                for entry_id, fields in entries:
                    last_id = entry_id
                    if fields.get("job") == job_id:
                        return last_id
