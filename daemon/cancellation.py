"""Cancelling a job: it ends as ``canceled`` at once (its slot goes to the next job, the app is
told), and a worker asks the provider to stop it where the provider can."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from daemon.client import arq_payload, enqueue
from daemon.errors import Conflict
from daemon.jobs import State, Update
from daemon.services import Services
from daemon.tasks import Task

CANCEL_AT_PROVIDER = Task.CANCEL_AT_PROVIDER


@dataclass(frozen=True, slots=True)
class Canceled:
    job: dict[str, Any]
    at_provider: str  # requested | not submitted


async def cancel_job(services: Services, job_id: str) -> Canceled:
    """Cancel a job that has not ended; ``NotFound`` when unknown, ``Conflict`` when it has ended."""
    job = await services.store.require(job_id)
    update = Update(State.CANCELED, message="canceled on request")
    outcome = await services.store.apply(job_id, update, source="cancel")
    if outcome != "applied":
        current = await services.store.require(job_id)
        raise Conflict(f"job {job_id} has already ended ({current.state.value}): nothing to cancel")
    # A job still being submitted gets its provider id later: the submit task cancels it then.
    at_provider = "not submitted"
    if job.provider_job_id:
        now_ms = int(time.time() * 1000)
        payload = arq_payload(CANCEL_AT_PROVIDER, [job_id], now_ms)
        await enqueue(services.client, f"cancel:{job_id}", payload, now_ms)
        at_provider = "requested"
    ended = await services.store.require(job_id)
    return Canceled(ended.to_api(), at_provider)
