"""The ``accept_job`` arq task: a job an app enqueued through Redis becomes a genrelay job."""

from __future__ import annotations

from typing import Any

import structlog

from daemon.errors import InvalidRequest
from daemon.jobs import JobRequest
from workers.runtime import RUNTIME, WorkerRuntime

log = structlog.get_logger("genrelay.accept")


async def accept_job(ctx: dict[str, Any], job_id: str, body: Any) -> str:
    runtime: WorkerRuntime = ctx[RUNTIME]
    store = runtime.services.store
    try:
        created = await store.create(JobRequest.from_json(body), job_id=job_id)
    except InvalidRequest as exc:
        await store.reject(job_id, body, exc.message)
        return "rejected"
    return "queued" if created.created else "exists"
