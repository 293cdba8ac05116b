"""The arq tasks genrelay runs, by the names they have in the queue: the one home of those names.

Python code names a task through :class:`Task`. The tasks the scripts schedule (``lib.lua``'s
``enqueue_submit`` and ``notify_app``, ``archive_finish.lua``) have no payload key: their id says
what to run, as :func:`task_from_id` reads it (``submit:<job>:<ms>``, ``deliver:<job>:<seq>``,
``deliver:<job>:<seq>:archived``), which saves a write when they are scheduled, a read when they
are taken and a delete when they end.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

__all__ = ["Task", "task_from_id"]


class Task(StrEnum):
    """A task of the arq queue (the ``f`` of its payload)."""

    ACCEPT = "accept_job"
    SUBMIT = "submit_job"
    DELIVER = "deliver_job"
    CANCEL_AT_PROVIDER = "cancel_at_provider"
    DISPATCH_WAITING = "dispatch_waiting"
    SYNC_CAPACITY = "sync_capacity"


# The ids of the tasks the slot scripts schedule (claim_tasks.lua reads no payload for these).
_SUBMIT_ID = re.compile(r"submit:([^:]+):(\d+)")
_DELIVER_ID = re.compile(r"deliver:([^:]+):(\d+)(?::archived)?")


def task_from_id(task_id: str, now_ms: int) -> dict[str, Any] | None:
    """The task (arq's {f, a, k, t, et}) that an id of the slot scripts names, or None for any other
    id (a task with its own payload). ``et`` is the id's time, else ``now_ms``."""
    if submit := _SUBMIT_ID.fullmatch(task_id):
        return {"t": None, "f": Task.SUBMIT.value, "a": [submit[1]], "k": {}, "et": int(submit[2])}
    if deliver := _DELIVER_ID.fullmatch(task_id):
        job_id, seq = deliver[1], int(deliver[2])
        return {"t": None, "f": Task.DELIVER.value, "a": [job_id, seq], "k": {}, "et": now_ms}
    return None
