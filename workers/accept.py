"""The ``accept_job`` arq task: a job an app enqueued through Redis becomes a genrelay job.

The only task apps may enqueue (see ``daemon/task_guard.py``): under the arq id ``accept:<job id>``,
with the arguments ``[job id, request]``. A payload the worker could not read arrives here as
``malformed``; like an invalid request, it ends as a ``failed`` job with the reason when its arq id
names the job, and is logged and counted otherwise.
"""

from __future__ import annotations

from typing import Any

import structlog

from daemon import keys
from daemon.errors import InvalidRequest
from daemon.input_limits import check_json
from daemon.jobs import JobRequest
from daemon.task_guard import arq_id, refuse
from daemon.tasks import Task
from workers.runtime import RUNTIME, WorkerRuntime

log = structlog.get_logger("genrelay.accept")

PREFIX = "accept:"


async def accept_job(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> str:
    runtime: WorkerRuntime = ctx[RUNTIME]
    store = runtime.services.store
    queued_as = arq_id(ctx)
    recovered = queued_as.removeprefix(PREFIX) if queued_as.startswith(PREFIX) else None
    if recovered is not None and keys.provider_of(recovered) is None:
        recovered = None
    problem: str | None = kwargs.pop("malformed", None)
    if problem is None and (kwargs or len(args) != 2 or not isinstance(args[0], str)):
        problem = "accept_job takes exactly [job id, request]"
    if problem is None and args[0] != recovered:
        problem = f"the job id must be the one of the queue entry, '{PREFIX}<job id>'"
    if problem is not None:
        if recovered is None:
            return await refuse(runtime.services.client, Task.ACCEPT, ctx, problem)
        await store.reject(recovered, None, problem)
        return "rejected"
    job_id, body = args
    try:
        check_json(body, "the job request")
        created = await store.create(JobRequest.from_json(body), job_id=job_id)
    except InvalidRequest as exc:
        await store.reject(job_id, body, exc.message)
        return "rejected"
    return "queued" if created.created else "exists"
